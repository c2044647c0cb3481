"""A symbol's ledger (``history.jsonl``) and its slots document (``slots.json``).

slots.json is the authoritative state and is replaced atomically. A decision
writes slots.json first, then appends its ledger lines. A crash between the
two leaves the new state with the ledger behind it; slots.json therefore
carries the lines of the decision that produced it (``decision``), and every
writer, like start-up recovery, first re-appends the ones whose ``seq`` is above
the last seq in the ledger (``sync``). Seq grows by one per line, decisions and
notes alike, so "missing" is one comparison with the last line. A torn last
line (a crash mid-append) has no newline: readers skip it and the next append
drops it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from deploy.errors import RegistryCorrupt
from deploy.events import RegistryEvent
from deploy.registry.storage import RegistryStorage
from deploy.versions import validate_version

SLOTS_FILE: Final = "slots.json"
HISTORY_FILE: Final = "history.jsonl"


@dataclass(frozen=True, slots=True)
class Slots:
    """Which version holds each slot of one symbol; ``retired`` is oldest first."""

    champion: str | None
    shadow: str | None
    retired: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SlotsState:
    """The content of slots.json: the slots plus what makes the ledger repairable."""

    slots: Slots
    seq: int = 0
    decision: tuple[RegistryEvent, ...] = ()


def read_state(storage: RegistryStorage, symbol: str) -> SlotsState:
    """slots.json of ``symbol``; the empty state when there is none. RegistryCorrupt."""
    key = f"{symbol}/{SLOTS_FILE}"
    data = storage.get(key)
    if data is None:
        return SlotsState(Slots(None, None))
    try:
        doc = json.loads(data)
        champion, shadow = doc.get("champion"), doc.get("shadow")
        slots = Slots(
            None if champion is None else validate_version(champion),
            None if shadow is None else validate_version(shadow),
            tuple(validate_version(v) for v in doc.get("retired", [])),
        )
        seq = doc.get("seq", 0)
        if not isinstance(seq, int) or seq < 0:
            raise ValueError(f"seq {seq!r} is not a non-negative integer")
        decision = tuple(RegistryEvent.from_dict(line) for line in doc.get("decision", []))
        if any(line.seq is None for line in decision):
            raise ValueError("decision lines must carry an integer seq")
    except (AttributeError, TypeError, ValueError) as exc:
        raise RegistryCorrupt(_where(storage, key), f"bad slots document: {exc}") from exc
    return SlotsState(slots, seq, decision)


def write_state(storage: RegistryStorage, symbol: str, state: SlotsState) -> None:
    doc = {
        "champion": state.slots.champion,
        "shadow": state.slots.shadow,
        "retired": list(state.slots.retired),
        "seq": state.seq,
        "decision": [line.to_dict() for line in state.decision],
    }
    storage.put(f"{symbol}/{SLOTS_FILE}", json.dumps(doc, indent=2).encode() + b"\n")


def read_history(storage: RegistryStorage, symbol: str) -> list[RegistryEvent]:
    """Every complete ledger line, oldest first. RegistryCorrupt for a line that does not parse."""
    key = f"{symbol}/{HISTORY_FILE}"
    data = storage.get(key) or b""
    lines = data.split(b"\n")[:-1]  # the part after the last newline is torn or empty
    return [_parse(storage, key, n, line) for n, line in enumerate(lines, 1)]


def append_history(storage: RegistryStorage, symbol: str, lines: tuple[RegistryEvent, ...]) -> None:
    data = b"".join(
        json.dumps(line.to_dict(), separators=(",", ":"), allow_nan=False).encode() + b"\n"
        for line in lines
    )
    storage.append(f"{symbol}/{HISTORY_FILE}", data)


def sync(storage: RegistryStorage, symbol: str, state: SlotsState) -> tuple[int, list[str]]:
    """Re-append the decision lines the ledger lacks; return the last seq in use and notes.

    The caller holds the symbol's lock.
    """
    key = f"{symbol}/{HISTORY_FILE}"
    data = storage.get(key) or b""
    torn = len(data) - (data.rfind(b"\n") + 1)
    notes = []
    if torn:
        storage.append(key, b"")  # drops the torn tail
        notes.append(f"{_where(storage, key)}: dropped a torn last line ({torn} bytes)")
    last = last_seq(storage, symbol)
    missing = tuple(line for line in state.decision if (line.seq or 0) > last)
    if missing:
        append_history(storage, symbol, missing)
        last = missing[-1].seq or last
        notes.append(
            f"{_where(storage, f'{symbol}/{HISTORY_FILE}')}: re-appended seq "
            f"{missing[0].seq}..{last} from {SLOTS_FILE}"
        )
    return max(last, state.seq), notes


def last_seq(storage: RegistryStorage, symbol: str) -> int:
    """Seq of the ledger's last complete line (0 for an empty ledger); parses that line only."""
    key = f"{symbol}/{HISTORY_FILE}"
    data = storage.get(key) or b""
    end = data.rfind(b"\n")
    if end < 0:
        return 0
    start = data.rfind(b"\n", 0, end) + 1
    seq = _parse(storage, key, data.count(b"\n", 0, start) + 1, data[start:end]).seq
    if seq is None:
        raise RegistryCorrupt(_where(storage, key), "last line has no seq")
    return seq


def _parse(storage: RegistryStorage, key: str, n: int, line: bytes) -> RegistryEvent:
    try:
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return RegistryEvent.from_dict(doc)
    except ValueError as exc:
        raise RegistryCorrupt(_where(storage, key), f"line {n}: {exc}") from exc


def _where(storage: RegistryStorage, key: str) -> str:
    return f"{storage.url.rstrip('/')}/{key}"
