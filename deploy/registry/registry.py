# Over 400 lines: the one Registry API (versions, evidence, decisions, recovery) over one CAS.
"""The model registry: versions, champion/shadow slots, and the audit ledger of every symbol.

Layout (DESIGN.md), under the storage root::

    <SYMBOL>/<VERSION>/model.onnx
    <SYMBOL>/<VERSION>/metadata.json   the run's ModelMetadata with its "version"
    <SYMBOL>/<VERSION>/predictions.csv      evidence (trainers.evidence): the evaluation CSV
    <SYMBOL>/<VERSION>/candidates/<T>.onnx  evidence: the candidates the run did not choose
    <SYMBOL>/slots.json                {"champion", "shadow", "retired", "seq", "decision"}
    <SYMBOL>/history.jsonl             one RegistryEvent per line, with its "seq"

A version is complete when model.onnx and metadata.json exist; metadata.json is
written last (create-only, after the evidence too), so an interrupted copy is
incomplete, invisible to readers, and removed by ``recover`` (on private storage;
on shared storage it may be another machine's write in flight, so it is left
alone). Evidence is kept for the ``keep_evidence`` newest complete versions of a
symbol; adding a version (and ``recover``) deletes the older ones' evidence, never
their model.onnx or metadata.json. A version's metadata records the
SHA-256 of model.onnx, checked whenever the model is read. Slot decisions, the
ledger and the claims that fence a fleet's writers follow ``deploy.registry.ledger``.

What each decision does to the slots is ``deploy.registry.decisions``.

Symbols are checked with ``trainers.data.validate_symbol`` and version ids with
``VERSION_PATTERN`` before any key is built, so nothing is written outside the root.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from deploy.errors import (
    ArtifactError,
    DuplicateCommandError,
    DuplicateVersionError,
    RegistryBusy,
    RegistryCorrupt,
    UnknownVersionError,
)
from deploy.events import RECORD_ONLY_KINDS, RegistryEvent
from deploy.registry import decisions
from deploy.registry.evidence import (
    DEFAULT_KEEP_EVIDENCE,
    EVIDENCE_ENTRIES,
    EVIDENCE_FILE,
    evidence_to_prune,
    staged_evidence,
)
from deploy.registry.ledger import (
    Claim,
    Slots,
    SlotsState,
    append_missing,
    fence,
    read_history,
    read_state,
    sync,
    write_state,
)
from deploy.registry.local import LocalStorage
from deploy.registry.storage import Conflict, RegistryStorage
from deploy.versions import VERSION_PATTERN, new_version_id, validate_version
from trainers.data import SYMBOL_PATTERN, validate_symbol
from trainers.errors import MetadataError
from trainers.metadata import ModelMetadata

MODEL_FILE: Final = "model.onnx"
METADATA_FILE: Final = "metadata.json"

_log = logging.getLogger(__name__)

CAS_ATTEMPTS: Final = 50

Decide = Callable[[Slots], tuple[Slots, list[RegistryEvent]]]
Change = Callable[[SlotsState], tuple[SlotsState, tuple[RegistryEvent, ...]]]
Claims = Callable[[str], Claim | None]


class Registry:
    """Versions, slots and ledger of every symbol in one storage.

    Reads take no lock (objects are replaced whole). Every change is a
    compare-and-swap of the symbol's slots.json, retried when another writer
    got there first, so daemons on several machines and an operator's CLI can
    act at the same time. ``claims(symbol)`` gives the claim a daemon's writes
    carry (None: unfenced, as an operator's); a write whose claim is older than
    the one on record raises FencedError and changes nothing.

    ``keep_evidence``: how many of a symbol's newest versions keep their run's evidence
    (predictions.csv, the losers' ONNX files); 0 keeps none. ValueError if negative.
    """

    def __init__(
        self,
        storage: RegistryStorage | Path,
        *,
        claims: Claims | None = None,
        keep_evidence: int = DEFAULT_KEEP_EVIDENCE,
    ) -> None:
        if keep_evidence < 0:
            raise ValueError(f"keep_evidence must be >= 0, got {keep_evidence}")
        self.storage: RegistryStorage = (
            LocalStorage(storage) if isinstance(storage, Path) else storage
        )
        self._claims = claims
        self.keep_evidence = keep_evidence

    def unfenced(self) -> Registry:
        """The same registry for an operator's actions: writes carry no claim."""
        return Registry(self.storage, keep_evidence=self.keep_evidence)

    @property
    def url(self) -> str:
        return self.storage.url

    # -- versions ------------------------------------------------------------------------

    def add_version(self, symbol: str, staging_dir: Path, *, version: str | None = None) -> str:
        """Copy ``staging_dir``'s model.onnx and metadata.json in as a new version; return its id.

        With ``keep_evidence``, its evidence (``EVIDENCE_FILE`` names: predictions.csv,
        candidates/*.onnx) too, before metadata.json; then the evidence of versions older
        than the ``keep_evidence`` newest is deleted (best effort: the version is in by then,
        and the next add or ``recover`` deletes what this one could not).

        Raises ArtifactError if either file is missing or metadata.json is not a
        model's metadata, DuplicateVersionError if ``version`` already exists.
        """
        validate_symbol(symbol)
        version = new_version_id() if version is None else validate_version(version)
        model_src, metadata_src = Path(staging_dir) / MODEL_FILE, Path(staging_dir) / METADATA_FILE
        for src in (model_src, metadata_src):
            if not src.is_file():
                raise ArtifactError(src, "missing; a version needs model.onnx and metadata.json")
        try:
            metadata = ModelMetadata.from_json(metadata_src.read_bytes(), metadata_src)
        except MetadataError as exc:
            raise ArtifactError(metadata_src, exc.problem) from exc
        model = model_src.read_bytes()
        digest = hashlib.sha256(model).hexdigest()
        if metadata.onnx is not None and metadata.onnx.sha256 not in (None, digest):
            raise ArtifactError(model_src, "does not match the sha256 in metadata.json")
        if metadata.onnx is not None:
            metadata = metadata.model_copy(
                update={"onnx": metadata.onnx.model_copy(update={"sha256": digest})}
            )
        document = metadata.model_copy(update={"version": version}).to_json()
        evidence = staged_evidence(Path(staging_dir)) if self.keep_evidence else []
        prefix = f"{symbol}/{version}"
        names = self.storage.children(prefix)
        if MODEL_FILE in names and METADATA_FILE in names:
            raise DuplicateVersionError(symbol, version)
        for stale in sorted(EVIDENCE_ENTRIES & set(names)):
            self.storage.delete(f"{prefix}/{stale}")  # a dead attempt's: not this run's evidence
        self.storage.put(f"{prefix}/{MODEL_FILE}", model)  # replaces a dead attempt's
        for name, src in evidence:
            self.storage.put(f"{prefix}/{name}", src.read_bytes())
        try:  # last, create-only: the version is complete once, by one writer
            self.storage.put_if(f"{prefix}/{METADATA_FILE}", document, None)
        except Conflict:
            raise DuplicateVersionError(symbol, version) from None
        self._prune_quietly(symbol)
        return version

    def prune_evidence(self, symbol: str) -> list[str]:
        """Delete the evidence of every complete version but the ``keep_evidence`` newest (one
        listing of the symbol, deletes only where there is evidence); one note per version.
        Incomplete versions are left alone (a copy in flight; ``recover`` removes dead ones)."""
        validate_symbol(symbol)
        keys = self.storage.keys(symbol)
        notes = []
        for version, held in evidence_to_prune(
            keys, self.keep_evidence, (MODEL_FILE, METADATA_FILE)
        ).items():
            for name in held:
                self.storage.delete(f"{symbol}/{version}/{name}")
            notes.append(
                f"{self.url}/{symbol}/{version}: removed evidence ({', '.join(held)}), "
                f"kept for the {self.keep_evidence} newest versions"
            )
        return notes

    def evidence_files(self, symbol: str, version: str) -> list[str]:
        """The version's evidence, as names relative to it (``predictions.csv``,
        ``candidates/<name>.onnx``, see ``trainers.evidence``), sorted; [] when its run left
        none or retention removed it. UnknownVersionError."""
        prefix = self._require_version(symbol, version)
        return [n for n in self.storage.keys(prefix) if EVIDENCE_FILE.fullmatch(n)]

    def evidence_path(self, symbol: str, version: str, name: str) -> Path:
        """A local file holding the evidence file ``name`` (one of ``evidence_files``).

        ValueError for a name no evidence file has; UnknownVersionError; FileNotFoundError
        when the version has no such file (its run left none, or retention removed it).
        """
        if not EVIDENCE_FILE.fullmatch(name):
            raise ValueError(f"{name!r} is not an evidence file name ({EVIDENCE_FILE.pattern})")
        if name not in self.evidence_files(symbol, version):  # also a cached copy's
            raise FileNotFoundError(f"{symbol}/{version}: no evidence file {name!r}")
        return self.storage.local_file(f"{symbol}/{version}/{name}")

    def versions(self, symbol: str) -> list[str]:
        """Complete versions, oldest first."""
        validate_symbol(symbol)
        return [
            v
            for v in self.storage.children(symbol)
            if VERSION_PATTERN.fullmatch(v) and self._complete(symbol, v)
        ]

    def metadata(self, symbol: str, version: str) -> ModelMetadata:
        """The version's metadata. UnknownVersionError; RegistryCorrupt if it does not parse."""
        key = self._require_version(symbol, version) + f"/{METADATA_FILE}"
        stored = self.storage.get(key)
        if stored is None:
            raise UnknownVersionError(symbol, version)
        try:
            return ModelMetadata.from_json(stored.data, f"{self.url.rstrip('/')}/{key}")
        except MetadataError as exc:
            raise RegistryCorrupt(exc.source, exc.problem) from exc

    def model_path(self, symbol: str, version: str) -> Path:
        """A local file holding the version's model.onnx. UnknownVersionError; RegistryCorrupt
        if its bytes are not the ones the metadata's sha256 names."""
        key = self._require_version(symbol, version) + f"/{MODEL_FILE}"
        try:
            path = self.storage.local_file(key)
        except FileNotFoundError:
            raise UnknownVersionError(symbol, version) from None
        onnx = self.metadata(symbol, version).onnx
        if onnx is not None and onnx.sha256 not in (None, _sha256(path)):
            raise RegistryCorrupt(
                f"{self.url.rstrip('/')}/{key}", "sha256 differs from metadata.json"
            )
        return path

    def symbols(self) -> list[str]:
        """Every symbol the registry holds anything for, sorted."""
        return [s for s in self.storage.children("") if SYMBOL_PATTERN.fullmatch(s)]

    def unplaced(self, symbol: str) -> list[str]:
        """Complete versions newer than every version a slot or a ledger line names, oldest
        first: versions a run added but never placed (``add_version`` and ``place`` are two
        writes, and the process may die between them). RegistryCorrupt if the slots or the
        ledger do not read."""
        state = self.state(symbol)
        named = {state.slots.champion, state.slots.shadow, *state.slots.retired}
        for line in self.history(symbol):
            named.update((line.from_version, line.to_version))
        newest = max((v for v in named if v is not None), default="")
        return [v for v in self.versions(symbol) if v > newest]  # version ids sort by time

    # -- decisions -----------------------------------------------------------------------

    def place(
        self,
        symbol: str,
        version: str,
        *,
        actor: str = "daemon",
        reason: str = "",
        superseded_evidence: Mapping[str, Any] | None = None,
    ) -> list[RegistryEvent]:
        """Make ``version`` the champion if there is none, else the shadow (see
        ``decisions.place``). Raises UnknownVersionError, AlreadyInSlotError."""
        validate_version(version)

        def decide(slots: Slots) -> tuple[Slots, list[RegistryEvent]]:
            self._require_version(symbol, version)
            return decisions.place(
                slots, symbol, version, actor, reason, superseded_evidence=superseded_evidence
            )

        return self._decide(symbol, decide)

    def promote(
        self,
        symbol: str,
        *,
        evidence: Mapping[str, Any],
        actor: str = "daemon",
        reason: str = "",
        command_id: str | None = None,
        forced: bool = False,
    ) -> RegistryEvent:
        """Shadow becomes champion; the old champion is appended to ``retired``. NoShadowError.

        ``command_id``: the operator command's id, recorded in the line; DuplicateCommandError
        if the ledger already has it (here and in reject / rollback). ``forced``: recorded.
        """

        def decide(slots: Slots) -> tuple[Slots, list[RegistryEvent]]:
            after, events = decisions.promote(slots, symbol, evidence, actor, reason)
            return after, [replace(e, forced=forced) for e in events]

        return self._decide(symbol, decide, command_id)[0]

    def reject(
        self,
        symbol: str,
        *,
        evidence: Mapping[str, Any],
        actor: str = "daemon",
        reason: str = "",
        command_id: str | None = None,
    ) -> RegistryEvent:
        """Empty the shadow slot; the champion stays. NoShadowError, DuplicateCommandError."""
        return self._decide(
            symbol,
            lambda slots: decisions.reject(slots, symbol, evidence, actor, reason),
            command_id,
        )[0]

    def rollback(
        self,
        symbol: str,
        *,
        actor: str = "operator",
        reason: str = "",
        command_id: str | None = None,
    ) -> RegistryEvent:
        """Restore the newest retired champion (see ``decisions.rollback``).

        Raises NoChampionError, NothingToRollBackError, DuplicateCommandError, and
        UnknownVersionError if the retired version was removed.
        """

        def decide(slots: Slots) -> tuple[Slots, list[RegistryEvent]]:
            after, events = decisions.rollback(slots, symbol, actor, reason)
            self._require_version(symbol, after.champion or "")
            return after, events

        return self._decide(symbol, decide, command_id)[0]

    def set_slots(self, symbol: str, slots: Slots, event: RegistryEvent) -> RegistryEvent:
        """A repair (``ctd doctor``): the slots set outright, with the ledger line saying why."""
        return self._decide(symbol, lambda _: (slots, [event]))[0]

    def record(self, event: RegistryEvent) -> RegistryEvent:
        """Append a note that changes no slot (``training_failed``, ``candidate_rejected``);
        return it with its seq."""
        if event.event not in RECORD_ONLY_KINDS:
            raise ValueError(
                f"record() takes only {sorted(RECORD_ONLY_KINDS)}, got {event.event!r}; "
                "slot changes go through place/promote/reject/rollback"
            )
        symbol = validate_symbol(event.symbol)

        def change(state: SlotsState) -> tuple[SlotsState, tuple[RegistryEvent, ...]]:
            line = _with_seq(event, state.seq + 1)
            return replace(state, seq=line.seq or 0, decision=(line,)), (line,)

        return self._update(symbol, change)[0]

    def claim(self, symbol: str, claim: Claim) -> SlotsState:
        """Record ``claim`` as the symbol's owner (a daemon taking it over); return the state
        after it, with the previous owner's trial checkpoint. FencedError if a newer claim is
        on record. Writes no ledger line and creates no registry entry for a new symbol."""
        validate_symbol(symbol)
        claimed: list[SlotsState] = []

        def change(state: SlotsState) -> tuple[SlotsState, tuple[RegistryEvent, ...]]:
            after = replace(state, decision=(), owner=claim)
            claimed[:] = [after]
            return after, ()

        state, tag = read_state(self.storage, symbol)
        if tag is None:  # no slots.json: nothing placed, nothing to fence yet
            return replace(state, owner=claim)
        self._update(symbol, change, claim)
        return claimed[-1]

    def save_trial(self, symbol: str, trial: Mapping[str, Any] | None) -> None:
        """Checkpoint the running shadow trial in slots.json (see ``deploy.handoff``), fenced
        by this registry's claim like every daemon write."""
        validate_symbol(symbol)

        def change(state: SlotsState) -> tuple[SlotsState, tuple[RegistryEvent, ...]]:
            return replace(state, decision=(), trial=trial), ()

        self._update(symbol, change)

    def mark_announced(self, symbol: str, seq: int) -> None:
        """Record that the symbol's decisions up to ``seq`` were announced (never moves back)."""
        validate_symbol(symbol)

        def change(state: SlotsState) -> tuple[SlotsState, tuple[RegistryEvent, ...]]:
            return replace(state, decision=(), announced=max(seq, state.announced or 0)), ()

        announced = self.state(symbol).announced
        if announced is None or announced < seq:
            self._update(symbol, change)

    def state(self, symbol: str) -> SlotsState:
        """The symbol's whole slots document: slots, seq, owner, trial checkpoint."""
        return read_state(self.storage, validate_symbol(symbol))[0]

    # -- reading ---------------------------------------------------------------------------

    def slots(self, symbol: str) -> Slots:
        """The current slots; ``Slots(None, None)`` for an unknown symbol."""
        return self.state(symbol).slots

    def history(self, symbol: str) -> list[RegistryEvent]:
        """Every ledger line, oldest first, each with its seq; a torn last line is skipped.

        Raises RegistryCorrupt for a complete line that is not a valid event.
        """
        return read_history(self.storage, validate_symbol(symbol))

    def recover(self, symbols: list[str] | None = None) -> list[str]:
        """Start-up repair; returns one line per thing cleaned, for the log.

        Removes leftovers of interrupted writes and (on private storage) incomplete
        versions no slot names, and re-appends the ledger lines of a decision cut off
        by a crash. A symbol whose slots or ledger do not read is left as it is, for
        ``deploy.quarantine`` to report (one corrupt symbol never stops the others).
        ``symbols``: only these (a fleet daemon recovers what it takes over); default
        every symbol.
        """
        cleaned: list[str] = []
        for symbol in self.symbols() if symbols is None else symbols:
            cleaned.extend(self.storage.sweep(symbol))
            try:
                state, _ = read_state(self.storage, symbol)
                slotted = {state.slots.champion, state.slots.shadow}
                for name in self.storage.children(symbol):
                    if (
                        not self.storage.shared
                        and VERSION_PATTERN.fullmatch(name)
                        and name not in slotted
                        and not self._complete(symbol, name)
                    ):
                        self.storage.delete(f"{symbol}/{name}")
                        cleaned.append(f"{self.url}/{symbol}/{name}: removed incomplete version")
                cleaned.extend(sync(self.storage, symbol, state)[1])
                cleaned.extend(self._prune_quietly(symbol))
            except RegistryCorrupt:
                continue
        return cleaned

    # -- internals -----------------------------------------------------------------------

    def _prune_quietly(self, symbol: str) -> list[str]:
        """``prune_evidence``, a storage failure logged instead of raised: retention never
        fails an add or a start-up, and the next add or start-up deletes what it left."""
        try:
            return self.prune_evidence(symbol)
        except OSError as exc:
            _log.warning("%s/%s: evidence retention failed: %s", self.url, symbol, exc)
            return [f"{self.url}/{symbol}: evidence retention failed, retried later: {exc}"]

    def _complete(self, symbol: str, version: str) -> bool:
        names = self.storage.children(f"{symbol}/{version}")
        return MODEL_FILE in names and METADATA_FILE in names

    def _require_version(self, symbol: str, version: str) -> str:
        """The version's key prefix. UnknownVersionError unless it is complete."""
        validate_symbol(symbol)
        validate_version(version)
        if not self._complete(symbol, version):
            raise UnknownVersionError(symbol, version)
        return f"{symbol}/{version}"

    def _decide(
        self, symbol: str, decide: Decide, command_id: str | None = None
    ) -> list[RegistryEvent]:
        """One slot decision: its lines get the next seqs; a trial checkpoint of another pair
        is dropped with the pair. With a ``command_id``, the lines carry it, and a ledger
        that has it already raises DuplicateCommandError: the look-up runs inside the
        compare-and-swap, after the ledger caught up with slots.json, so of two deliveries
        of one command exactly one is applied, whenever the first was cut off."""
        validate_symbol(symbol)
        if not self.storage.children(symbol):
            # Every decision raises on a symbol with no versions; don't leave an empty entry.
            decide(Slots(None, None))

        def change(state: SlotsState) -> tuple[SlotsState, tuple[RegistryEvent, ...]]:
            if command_id is not None:
                _check_new_command(read_history(self.storage, symbol), symbol, command_id)
            slots, events = decide(state.slots)
            events = [replace(e, command_id=command_id) for e in events]
            lines = tuple(_with_seq(e, state.seq + i) for i, e in enumerate(events, 1))
            same_pair = (slots.champion, slots.shadow) == (
                state.slots.champion,
                state.slots.shadow,
            )
            trial = state.trial if same_pair else None
            after = replace(state, slots=slots, seq=state.seq + len(lines), decision=lines)
            return replace(after, trial=trial), lines

        return list(self._update(symbol, change))

    def _update(
        self, symbol: str, change: Change, claim: Claim | None = None
    ) -> tuple[RegistryEvent, ...]:
        """Compare-and-swap slots.json: read, fence, bring the ledger up to date, ``change``,
        write if nobody wrote in between (else again), then append the new lines."""
        claim = claim if claim is not None else self._claims(symbol) if self._claims else None
        for attempt in range(CAS_ATTEMPTS):
            state, tag = read_state(self.storage, symbol)
            owner = fence(symbol, claim, state.owner)
            # With no decision lines pending, the ledger ends at ``seq`` (a slots.json
            # written before seqs were kept, seq 0, still reads the ledger's end).
            pending = state.decision or not state.seq
            seq = sync(self.storage, symbol, state)[0] if pending else state.seq
            after, lines = change(replace(state, seq=seq))
            announced = state.announced_through if after.announced is None else after.announced
            try:
                after = replace(after, owner=owner, announced=announced)
                write_state(self.storage, symbol, after, tag)
            except Conflict:
                time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
                continue
            if lines:
                append_missing(self.storage, symbol, lines)
            return lines
        raise RegistryBusy(symbol, CAS_ATTEMPTS)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _with_seq(event: RegistryEvent, seq: int) -> RegistryEvent:
    return replace(event, seq=seq)


def _check_new_command(history: list[RegistryEvent], symbol: str, command_id: str) -> None:
    """DuplicateCommandError if a ledger line already carries ``command_id``."""
    for line in reversed(history):  # a re-delivery follows its first delivery closely
        if line.command_id == command_id:
            raise DuplicateCommandError(symbol, command_id, line.seq)
