"""The model registry: versions, champion/shadow slots, and the audit ledger of every symbol.

Layout (DESIGN.md), under the storage root::

    <SYMBOL>/<VERSION>/model.onnx
    <SYMBOL>/<VERSION>/metadata.json   the run's ModelMetadata with its "version"
    <SYMBOL>/slots.json                {"champion", "shadow", "retired", "seq", "decision"}
    <SYMBOL>/history.jsonl             one RegistryEvent per line, with its "seq"

A version is complete when both files exist; metadata.json is written last,
so an interrupted copy is incomplete, invisible to readers, and removed by
``recover``. Slot decisions and the ledger follow ``deploy.registry.ledger``.

Rollback puts the newest retired version back as champion and removes it from
``retired``; the champion backed out is dropped, not retired, so a second
rollback goes one further back instead of undoing the first. The shadow stays.

Symbols are checked with ``trainers.data.validate_symbol`` and version ids with
``VERSION_PATTERN`` before any key is built, so nothing is written outside the root.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from deploy.errors import (
    AlreadyInSlotError,
    ArtifactError,
    DuplicateVersionError,
    NoChampionError,
    NoShadowError,
    NothingToRollBackError,
    RegistryCorrupt,
    UnknownVersionError,
)
from deploy.events import RECORD_ONLY_KINDS, RegistryEvent, utc_now
from deploy.registry.ledger import (
    SLOTS_FILE,
    Slots,
    SlotsState,
    append_history,
    read_history,
    read_state,
    sync,
    write_state,
)
from deploy.registry.local import LocalStorage
from deploy.registry.storage import RegistryStorage
from deploy.versions import VERSION_PATTERN, new_version_id, validate_version
from trainers.data import SYMBOL_PATTERN, validate_symbol
from trainers.errors import MetadataError
from trainers.metadata import ModelMetadata

MODEL_FILE: Final = "model.onnx"
METADATA_FILE: Final = "metadata.json"

Decide = Callable[[Slots], tuple[Slots, list[RegistryEvent]]]


class Registry:
    """Versions, slots and ledger of every symbol in one storage.

    Reads take no lock (slots.json is replaced atomically, torn ledger tails
    are skipped); every read-modify-write holds the symbol's storage lock, so
    the daemon and an operator's CLI can act at the same time.
    """

    def __init__(self, storage: RegistryStorage | Path) -> None:
        self.storage: RegistryStorage = (
            LocalStorage(storage) if isinstance(storage, Path) else storage
        )

    @property
    def url(self) -> str:
        return self.storage.url

    # -- versions ------------------------------------------------------------------------

    def add_version(self, symbol: str, staging_dir: Path, *, version: str | None = None) -> str:
        """Copy ``staging_dir``'s model.onnx and metadata.json in as a new version; return its id.

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
        document = metadata.model_copy(update={"version": version}).to_json()
        model = model_src.read_bytes()
        with self.storage.lock(symbol):
            if self._complete(symbol, version):
                raise DuplicateVersionError(symbol, version)
            self.storage.delete(f"{symbol}/{version}")  # a dead attempt at this very id
            self.storage.put(f"{symbol}/{version}/{MODEL_FILE}", model)
            self.storage.put(f"{symbol}/{version}/{METADATA_FILE}", document)  # last: complete
        return version

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
        data = self.storage.get(key)
        if data is None:
            raise UnknownVersionError(symbol, version)
        try:
            return ModelMetadata.from_json(data, f"{self.url.rstrip('/')}/{key}")
        except MetadataError as exc:
            raise RegistryCorrupt(exc.source, exc.problem) from exc

    def model_path(self, symbol: str, version: str) -> Path:
        """A local file holding the version's model.onnx. UnknownVersionError."""
        key = self._require_version(symbol, version) + f"/{MODEL_FILE}"
        try:
            return self.storage.local_file(key)
        except FileNotFoundError:
            raise UnknownVersionError(symbol, version) from None

    def symbols(self) -> list[str]:
        """Every symbol the registry holds anything for, sorted."""
        return [s for s in self.storage.children("") if SYMBOL_PATTERN.fullmatch(s)]

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
        """Make ``version`` the champion if there is none, else the shadow.

        Returns the events in order: ``champion_bootstrapped``; or
        ``shadow_superseded`` (when a shadow is replaced, carrying
        ``superseded_evidence``: its trial's partial evidence) then ``shadow_placed``.
        Raises UnknownVersionError, AlreadyInSlotError.
        """
        validate_version(version)

        def decide(slots: Slots) -> tuple[Slots, list[RegistryEvent]]:
            self._require_version(symbol, version)
            for slot, holder in (("champion", slots.champion), ("shadow", slots.shadow)):
                if holder == version:
                    raise AlreadyInSlotError(symbol, version, slot)
            ts = utc_now()
            if slots.champion is None:
                event = RegistryEvent(
                    "champion_bootstrapped", symbol, None, version, {}, ts, actor, reason
                )
                return Slots(version, None, slots.retired), [event]
            events = []
            if slots.shadow is not None:
                evidence = dict(superseded_evidence or {})
                events.append(
                    RegistryEvent(
                        "shadow_superseded",
                        symbol,
                        slots.shadow,
                        version,
                        evidence,
                        ts,
                        actor,
                        reason,
                    )
                )
            events.append(
                RegistryEvent(
                    "shadow_placed", symbol, slots.champion, version, {}, ts, actor, reason
                )
            )
            return Slots(slots.champion, version, slots.retired), events

        return self._decide(symbol, decide)

    def promote(
        self, symbol: str, *, evidence: Mapping[str, Any], actor: str = "daemon", reason: str = ""
    ) -> RegistryEvent:
        """Shadow becomes champion; the old champion is appended to ``retired``. NoShadowError."""

        def decide(slots: Slots) -> tuple[Slots, list[RegistryEvent]]:
            if slots.shadow is None:
                raise NoShadowError(symbol, "promote")
            retired = tuple(v for v in slots.retired if v != slots.shadow)
            if slots.champion is not None:
                retired += (slots.champion,)
            event = RegistryEvent(
                "promoted", symbol, slots.champion, slots.shadow, evidence, utc_now(), actor, reason
            )
            return Slots(slots.shadow, None, retired), [event]

        return self._decide(symbol, decide)[0]

    def reject(
        self, symbol: str, *, evidence: Mapping[str, Any], actor: str = "daemon", reason: str = ""
    ) -> RegistryEvent:
        """Empty the shadow slot; the champion stays. NoShadowError."""

        def decide(slots: Slots) -> tuple[Slots, list[RegistryEvent]]:
            if slots.shadow is None:
                raise NoShadowError(symbol, "reject")
            event = RegistryEvent(
                "rejected", symbol, slots.champion, slots.shadow, evidence, utc_now(), actor, reason
            )
            return Slots(slots.champion, None, slots.retired), [event]

        return self._decide(symbol, decide)[0]

    def rollback(self, symbol: str, *, actor: str = "operator", reason: str = "") -> RegistryEvent:
        """Restore the newest retired champion (see the module docstring).

        Raises NoChampionError, NothingToRollBackError, and UnknownVersionError if
        the retired version was removed.
        """

        def decide(slots: Slots) -> tuple[Slots, list[RegistryEvent]]:
            if slots.champion is None:
                raise NoChampionError(symbol, "roll back")
            if not slots.retired:
                raise NothingToRollBackError(symbol, slots.champion)
            restored = slots.retired[-1]
            self._require_version(symbol, restored)
            shadow = None if slots.shadow == restored else slots.shadow
            event = RegistryEvent(
                "rolled_back", symbol, slots.champion, restored, {}, utc_now(), actor, reason
            )
            return Slots(restored, shadow, slots.retired[:-1]), [event]

        return self._decide(symbol, decide)[0]

    def record(self, event: RegistryEvent) -> RegistryEvent:
        """Append a note that changes no slot (``training_failed``, ``candidate_rejected``);
        return it with its seq."""
        if event.event not in RECORD_ONLY_KINDS:
            raise ValueError(
                f"record() takes only {sorted(RECORD_ONLY_KINDS)}, got {event.event!r}; "
                "slot changes go through place/promote/reject/rollback"
            )
        symbol = validate_symbol(event.symbol)
        with self.storage.lock(symbol):
            seq, _ = sync(self.storage, symbol, read_state(self.storage, symbol))
            line = _with_seq(event, seq + 1)
            append_history(self.storage, symbol, (line,))
        return line

    # -- reading ---------------------------------------------------------------------------

    def slots(self, symbol: str) -> Slots:
        """The current slots; ``Slots(None, None)`` for an unknown symbol."""
        return read_state(self.storage, validate_symbol(symbol)).slots

    def history(self, symbol: str) -> list[RegistryEvent]:
        """Every ledger line, oldest first, each with its seq; a torn last line is skipped.

        Raises RegistryCorrupt for a complete line that is not a valid event.
        """
        return read_history(self.storage, validate_symbol(symbol))

    def recover(self) -> list[str]:
        """Start-up repair; returns one line per thing cleaned, for the log.

        Removes leftovers of interrupted writes and incomplete versions,
        re-appends the ledger lines of a decision cut off by a crash, and raises
        RegistryCorrupt (naming slots.json) if the champion or shadow is not a
        complete version.
        """
        cleaned: list[str] = []
        for symbol in self.symbols():
            with self.storage.lock(symbol):
                cleaned.extend(self.storage.sweep(symbol))
                for name in self.storage.children(symbol):
                    if VERSION_PATTERN.fullmatch(name) and not self._complete(symbol, name):
                        self.storage.delete(f"{symbol}/{name}")
                        cleaned.append(f"{self.url}/{symbol}/{name}: removed incomplete version")
                state = read_state(self.storage, symbol)
                for slot, version in (
                    ("champion", state.slots.champion),
                    ("shadow", state.slots.shadow),
                ):
                    if version is not None and not self._complete(symbol, version):
                        raise RegistryCorrupt(
                            f"{self.url}/{symbol}/{SLOTS_FILE}",
                            f"{slot} {version} has no complete version",
                        )
                _, notes = sync(self.storage, symbol, state)
                cleaned.extend(notes)
        return cleaned

    # -- internals -----------------------------------------------------------------------

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

    def _decide(self, symbol: str, decide: Decide) -> list[RegistryEvent]:
        """Run one decision under the lock: repair the ledger, write slots.json, append lines."""
        validate_symbol(symbol)
        if not self.storage.children(symbol):
            # Every decision raises on a symbol with no versions; don't leave an empty entry.
            decide(Slots(None, None))
        with self.storage.lock(symbol):
            state = read_state(self.storage, symbol)
            seq, _ = sync(self.storage, symbol, state)
            slots, events = decide(state.slots)
            lines = tuple(_with_seq(e, seq + i) for i, e in enumerate(events, 1))
            write_state(self.storage, symbol, SlotsState(slots, seq + len(lines), lines))
            append_history(self.storage, symbol, lines)
        return list(lines)


def _with_seq(event: RegistryEvent, seq: int) -> RegistryEvent:
    return replace(event, seq=seq)
