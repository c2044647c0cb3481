"""The filesystem model registry: versions, champion/shadow slots, audit history.

Layout (DESIGN.md)::

    <root>/<SYMBOL>/<VERSION>/model.onnx
    <root>/<SYMBOL>/<VERSION>/metadata.json   the pipeline's metadata plus "version"
    <root>/<SYMBOL>/slots.json      {"champion", "shadow", "retired", "seq", "decision"}
    <root>/<SYMBOL>/history.jsonl   one RegistryEvent.to_dict() per line, plus "seq"
    <root>/<SYMBOL>/.lock           flock target: one writer per symbol at a time

Crash safety. A version directory appears by one rename of a fully written,
fsynced staging directory, so it is absent or complete. slots.json is the
authoritative state and is replaced atomically (temp file, fsync, rename, fsync
the directory). A decision writes slots.json first, then appends its history
lines (fsynced). A crash between the two leaves the new state with the history
behind it; slots.json therefore carries the lines of the decision that produced
it ("decision"), and every writer, like ``recover()``, first re-appends the ones
whose "seq" is above the last seq in history. Seq grows by one per history line
(decisions and ``record()`` notes alike), so "missing" is one comparison with the
last line. A torn last line (crash mid-append) has no newline: readers skip it and
the next writer truncates it.

Rollback puts the newest retired version back as champion and removes it from
``retired``; the champion backed out is dropped, not retired, so a second
rollback goes one further back instead of undoing the first. The shadow stays.

Symbols are checked with ``trainers.data.validate_symbol`` and version ids with
``VERSION_PATTERN`` before any path is built, so nothing is written outside root.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from deploy.errors import (
    AlreadyInSlotError,
    ArtifactError,
    DuplicateVersionError,
    InvalidVersionIdError,
    NoChampionError,
    NoShadowError,
    NothingToRollBackError,
    RegistryCorrupt,
    UnknownVersionError,
)
from deploy.events import RECORD_ONLY_KINDS, RegistryEvent, utc_now
from trainers.data import SYMBOL_PATTERN, validate_symbol

VERSION_PATTERN: Final = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{4}")
"""UTC ``YYYYMMDDTHHMMSS`` + microseconds + ``Z-`` + 4 hex digits; sorts by time."""
MODEL_FILE: Final = "model.onnx"
METADATA_FILE: Final = "metadata.json"
SLOTS_FILE: Final = "slots.json"
HISTORY_FILE: Final = "history.jsonl"
LOCK_FILE: Final = ".lock"
_STAGING_PREFIX: Final = ".staging-"
_SLOTS_TMP_GLOB: Final = ".slots.json.*.tmp"


def _no_crash(point: str) -> None:
    """Production value of the crash seam: named points do nothing."""


_crash_point: Callable[[str], None] = _no_crash
"""Test seam, called at "after_model_copy", "after_copy", "after_rename",
"after_slots_tmp_write", "after_slots_replace" and "after_history_append";
crash tests set it to ``os._exit`` at one point in a child process."""


@dataclass(frozen=True, slots=True)
class Slots:
    """Which version holds each slot of one symbol; ``retired`` is oldest first."""

    champion: str | None
    shadow: str | None
    retired: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _State:
    """The content of slots.json: the slots plus what makes the history repairable."""

    slots: Slots
    seq: int = 0
    decision: tuple[dict[str, Any], ...] = ()


class _MicrosClock:
    """UTC microseconds that strictly increase within the process, even if the clock stalls."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(time.time_ns() // 1000, self._last + 1)
            return self._last


_clock = _MicrosClock()


def validate_version(version: object) -> str:
    """Return ``version`` unchanged if it is a registry version id, else raise."""
    if not isinstance(version, str) or VERSION_PATTERN.fullmatch(version) is None:
        raise InvalidVersionIdError(version, VERSION_PATTERN.pattern)
    return version


class Registry:
    """Versions, slots and history of every symbol under ``root``.

    Reads take no lock (slots.json is replaced atomically, torn history tails are
    skipped); every read-modify-write holds an exclusive flock on the symbol's
    ``.lock``, so the daemon and an operator's CLI can act at the same time.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def new_version_id(self) -> str:
        """A fresh version id, e.g. ``20250101T000000123456Z-a1b2``."""
        secs, micros = divmod(_clock(), 1_000_000)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs))
        return f"{stamp}{micros:06d}Z-{secrets.token_hex(2)}"

    def add_version(self, symbol: str, staging_dir: Path, *, version: str | None = None) -> str:
        """Copy ``staging_dir``'s model.onnx and metadata.json in as a new version; return its id.

        Raises ArtifactError if either file is missing or metadata.json is not a
        JSON object, DuplicateVersionError if ``version`` already exists.
        """
        symdir = self._symbol_dir(symbol)
        version = self.new_version_id() if version is None else validate_version(version)
        model_src, metadata_src = Path(staging_dir) / MODEL_FILE, Path(staging_dir) / METADATA_FILE
        for src in (model_src, metadata_src):
            if not src.is_file():
                raise ArtifactError(src, "missing; a version needs model.onnx and metadata.json")
        try:
            metadata = json.loads(metadata_src.read_bytes())
        except ValueError as exc:
            raise ArtifactError(metadata_src, f"not JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise ArtifactError(metadata_src, "not a JSON object")
        metadata["version"] = version
        with self._lock(symdir):
            final, staging = symdir / version, symdir / f"{_STAGING_PREFIX}{version}"
            if final.exists():
                raise DuplicateVersionError(symbol, version)
            shutil.rmtree(staging, ignore_errors=True)  # a dead attempt at this very id
            staging.mkdir()
            try:
                _copy_durably(model_src, staging / MODEL_FILE)
                _crash_point("after_model_copy")
                _write_durably(staging / METADATA_FILE, json.dumps(metadata, indent=2).encode())
                _fsync_dir(staging)
                _crash_point("after_copy")
                staging.rename(final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _crash_point("after_rename")
            _fsync_dir(symdir)
        return version

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
                events.append(
                    RegistryEvent(
                        "shadow_superseded",
                        symbol,
                        slots.shadow,
                        version,
                        dict(superseded_evidence or {}),
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
        self,
        symbol: str,
        *,
        evidence: Mapping[str, Any],
        actor: str = "daemon",
        reason: str = "",
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
        self,
        symbol: str,
        *,
        evidence: Mapping[str, Any],
        actor: str = "daemon",
        reason: str = "",
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
        the retired version's directory was removed.
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

    def record(self, event: RegistryEvent) -> None:
        """Append a note that changes no slot (``training_failed``, ``candidate_rejected``)."""
        if event.event not in RECORD_ONLY_KINDS:
            raise ValueError(
                f"record() takes only {sorted(RECORD_ONLY_KINDS)}, got {event.event!r}; "
                "slot changes go through place/promote/reject/rollback"
            )
        symdir = self._symbol_dir(event.symbol)
        with self._lock(symdir):
            seq, _ = _sync_history(symdir, _read_state(symdir / SLOTS_FILE))
            _append_history(symdir, [{**event.to_dict(), "seq": seq + 1}])

    def slots(self, symbol: str) -> Slots:
        """The current slots; ``Slots(None, None)`` for an unknown symbol."""
        return _read_state(self._symbol_dir(symbol) / SLOTS_FILE).slots

    def history(self, symbol: str) -> list[dict[str, Any]]:
        """Every history line, oldest first; a torn last line (no newline) is skipped.

        Raises RegistryCorrupt for a complete line that is not a JSON object.
        """
        path = self._symbol_dir(symbol) / HISTORY_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")[:-1]  # the part after the last newline is torn or empty
        return [_parse_history_line(path, f"line {n}", line) for n, line in enumerate(lines, 1)]

    def metadata(self, symbol: str, version: str) -> dict[str, Any]:
        """The version's metadata.json. UnknownVersionError."""
        path = self.model_path(symbol, version).with_name(METADATA_FILE)
        try:
            doc = json.loads(path.read_bytes())
        except ValueError as exc:
            raise RegistryCorrupt(path, f"not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise RegistryCorrupt(path, "not a JSON object")
        return doc

    def model_path(self, symbol: str, version: str) -> Path:
        """Path of the version's model.onnx. UnknownVersionError."""
        return self._require_version(symbol, version) / MODEL_FILE

    def versions(self, symbol: str) -> list[str]:
        """Complete versions, oldest first."""
        symdir = self._symbol_dir(symbol)
        if not symdir.is_dir():
            return []
        return sorted(
            p.name
            for p in symdir.iterdir()
            if VERSION_PATTERN.fullmatch(p.name) is not None and _is_complete(p)
        )

    def symbols(self) -> list[str]:
        """Every symbol that has a directory under root, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if SYMBOL_PATTERN.fullmatch(p.name) is not None and p.is_dir()
        )

    def recover(self) -> list[str]:
        """Start-up repair; returns one line per thing cleaned, for the log.

        Removes unfinished version copies and slots temp files, truncates a torn
        history tail, re-appends the history lines of a decision cut off by a crash,
        and raises RegistryCorrupt (naming slots.json) if the champion or shadow has
        no complete version directory.
        """
        cleaned: list[str] = []
        for symbol in self.symbols():
            symdir = self.root / symbol
            with self._lock(symdir):
                for staging in sorted(symdir.glob(f"{_STAGING_PREFIX}*")):
                    shutil.rmtree(staging)
                    cleaned.append(f"{staging}: removed unfinished version copy")
                for tmp in sorted(symdir.glob(_SLOTS_TMP_GLOB)):
                    tmp.unlink()
                    cleaned.append(f"{tmp}: removed unfinished slots write")
                state = _read_state(symdir / SLOTS_FILE)
                for slot, version in (
                    ("champion", state.slots.champion),
                    ("shadow", state.slots.shadow),
                ):
                    if version is not None and not _is_complete(symdir / version):
                        raise RegistryCorrupt(
                            symdir / SLOTS_FILE,
                            f"{slot} {version} has no complete version directory",
                        )
                _, notes = _sync_history(symdir, state)
                cleaned.extend(notes)
        return cleaned

    def _symbol_dir(self, symbol: str) -> Path:
        return self.root / validate_symbol(symbol)

    def _require_version(self, symbol: str, version: str) -> Path:
        path = self._symbol_dir(symbol) / validate_version(version)
        if not _is_complete(path):
            raise UnknownVersionError(symbol, version)
        return path

    def _decide(
        self, symbol: str, decide: Callable[[Slots], tuple[Slots, list[RegistryEvent]]]
    ) -> list[RegistryEvent]:
        """Run one decision under the lock: repair history, write slots.json, append history."""
        symdir = self._symbol_dir(symbol)
        if not symdir.is_dir():
            # Every decision raises on a symbol with no versions; don't leave an empty dir.
            decide(Slots(None, None))
        with self._lock(symdir):
            state = _read_state(symdir / SLOTS_FILE)
            seq, _ = _sync_history(symdir, state)
            slots, events = decide(state.slots)
            lines = tuple({**e.to_dict(), "seq": seq + i} for i, e in enumerate(events, 1))
            _write_state(symdir, _State(slots, seq + len(events), lines))
            _append_history(symdir, lines)
        return events

    @contextmanager
    def _lock(self, symdir: Path) -> Iterator[None]:
        if not symdir.is_dir():
            symdir.mkdir(parents=True, exist_ok=True)
            _fsync_dir(symdir.parent)
        fd = os.open(symdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def _is_complete(version_dir: Path) -> bool:
    return (version_dir / MODEL_FILE).is_file() and (version_dir / METADATA_FILE).is_file()


# --- slots.json -----------------------------------------------------------------------


def _read_state(path: Path) -> _State:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return _State(Slots(None, None))
    except ValueError as exc:
        raise RegistryCorrupt(path, f"not JSON: {exc}") from exc
    try:
        champion, shadow = doc.get("champion"), doc.get("shadow")
        slots = Slots(
            None if champion is None else validate_version(champion),
            None if shadow is None else validate_version(shadow),
            tuple(validate_version(v) for v in doc.get("retired", [])),
        )
        seq = doc.get("seq", 0)
        decision = tuple(doc.get("decision", []))
        if not isinstance(seq, int) or seq < 0:
            raise ValueError(f"seq {seq!r} is not a non-negative integer")
        if not all(
            isinstance(line, dict) and isinstance(line.get("seq"), int) for line in decision
        ):
            raise ValueError("decision lines must be objects with an integer seq")
    except (AttributeError, TypeError, ValueError) as exc:
        raise RegistryCorrupt(path, f"bad slots document: {exc}") from exc
    return _State(slots, seq, decision)


def _write_state(symdir: Path, state: _State) -> None:
    doc = {
        "champion": state.slots.champion,
        "shadow": state.slots.shadow,
        "retired": list(state.slots.retired),
        "seq": state.seq,
        "decision": list(state.decision),
    }
    tmp = symdir / f".slots.json.{secrets.token_hex(4)}.tmp"
    try:
        _write_durably(tmp, json.dumps(doc, indent=2).encode() + b"\n")
        _crash_point("after_slots_tmp_write")
        tmp.replace(symdir / SLOTS_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _crash_point("after_slots_replace")
    _fsync_dir(symdir)


# --- history.jsonl --------------------------------------------------------------------


def _parse_history_line(path: Path, where: str, line: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise RegistryCorrupt(path, f"{where} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RegistryCorrupt(path, f"{where} is not a JSON object")
    return doc


def _sync_history(symdir: Path, state: _State) -> tuple[int, list[str]]:
    """Truncate a torn tail and re-append the decision lines history lacks.

    Returns the last seq in use (history or slots.json) and notes for the log. The
    caller holds the lock.
    """
    path = symdir / HISTORY_FILE
    last, torn = _history_tail(path)
    notes = [f"{path}: truncated a torn last line ({torn} bytes)"] if torn else []
    missing = [line for line in state.decision if line["seq"] > last]
    if missing:
        _append_history(symdir, missing)
        last = missing[-1]["seq"]
        notes.append(f"{path}: re-appended seq {missing[0]['seq']}..{last} from slots.json")
    return max(last, state.seq), notes


def _history_tail(path: Path) -> tuple[int, int]:
    """(seq of the last complete line or 0, bytes of torn tail truncated)."""
    try:
        f = path.open("r+b")
    except FileNotFoundError:
        return 0, 0
    with f:
        size = f.seek(0, os.SEEK_END)
        buf, start = _read_last_lines(f, size)
        cut = buf.rfind(b"\n") + 1  # 0 if there is no complete line
        torn = len(buf) - cut
        if torn:
            f.truncate(start + cut)
            f.flush()
            os.fsync(f.fileno())
        complete = buf[:cut].splitlines()
        if not complete:
            return 0, torn
        seq = _parse_history_line(path, "last line", complete[-1]).get("seq")
        if not isinstance(seq, int):
            raise RegistryCorrupt(path, f"last line has no integer seq: {complete[-1][:200]!r}")
        return seq, torn


def _read_last_lines(f: BinaryIO, size: int) -> tuple[bytes, int]:
    """The file's end holding at least its last complete line, and where it starts."""
    start, buf = size, b""
    while start > 0 and buf.count(b"\n") < 2:
        step = min(start, 1 << 16)
        start -= step
        f.seek(start)
        buf = f.read(step) + buf
    if start > 0:  # drop the partial line before the second-to-last newline
        skip = buf.find(b"\n") + 1
        buf, start = buf[skip:], start + skip
    return buf, start


def _append_history(symdir: Path, lines: Sequence[dict[str, Any]]) -> None:
    path = symdir / HISTORY_FILE
    created = not path.exists()
    data = b"".join(
        json.dumps(line, separators=(",", ":"), allow_nan=False).encode() + b"\n" for line in lines
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(symdir)
    _crash_point("after_history_append")


# --- durable file primitives ----------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_durably(src: Path, dst: Path) -> None:
    with src.open("rb") as reader, dst.open("xb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
        writer.flush()
        os.fsync(writer.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
