"""A symbol's control document (``slots.json``) and its ledger (``history.jsonl``).

slots.json is the authoritative state: the slots, the last ledger seq, the
ledger lines of the write that produced it (``decision``), the claim of the
daemon acting for the symbol (``owner``), that daemon's last checkpoint of
the running shadow trial (``trial``), and the seq up to which decisions were
announced (``announced``), so whichever daemon owns the symbol next announces
what the previous one recorded but did not announce. Every change is one compare-and-swap of
slots.json (``RegistryStorage.put_if``) followed by appending its lines to the
ledger, itself a compare-and-swap that adds only lines above the ledger's last
seq. A crash (or a writer on another machine dying) between the two leaves the
ledger behind slots.json; the next writer, like start-up recovery, re-appends
the missing lines from ``decision`` first (``sync``). Seq grows by one per
line, so a gap or a fork is impossible: line n is only ever written right
after line n - 1, and only once.

Ledgers written by earlier releases may end in a torn line (a crash mid-append):
readers skip it and the next append drops it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from deploy.errors import FencedError, RegistryCorrupt
from deploy.events import RegistryEvent
from deploy.registry.storage import Conflict, RegistryStorage
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
class Claim:
    """Who acts for a symbol: a daemon (``owner``) as of a Kafka group generation (``epoch``).

    A write carrying a claim goes through only if no newer claim is on record: a
    higher epoch, or the same epoch held by another owner. A write without a
    claim (an operator's) is never fenced and leaves the record as it is.
    """

    owner: str
    epoch: int

    def __str__(self) -> str:
        return f"{self.owner}@{self.epoch}"

    def may_replace(self, recorded: Claim | None) -> bool:
        if recorded is None or self.epoch > recorded.epoch:
            return True
        return self.epoch == recorded.epoch and self.owner == recorded.owner


@dataclass(frozen=True, slots=True)
class SlotsState:
    """The content of slots.json. ``trial`` is opaque here (``deploy.handoff`` reads it)."""

    slots: Slots
    seq: int = 0
    decision: tuple[RegistryEvent, ...] = ()
    owner: Claim | None = None
    trial: Mapping[str, Any] | None = None
    announced: int | None = None
    """Ledger seq up to which decisions were announced; None: never recorded (a registry of an
    earlier release, or a symbol whose first writer died before announcing)."""

    @property
    def announced_through(self) -> int:
        """``announced``, or without it everything before the last write's lines: those are
        the ones whose writer may have died before announcing them."""
        if self.announced is not None:
            return self.announced
        return self.seq - len(self.decision)


def fence(symbol: str, claim: Claim | None, recorded: Claim | None) -> Claim | None:
    """The owner to record after a write by ``claim``; FencedError if a newer claim holds."""
    if claim is None:
        return recorded
    if not claim.may_replace(recorded):
        raise FencedError(symbol, str(claim), str(recorded))
    return claim


def read_state(storage: RegistryStorage, symbol: str) -> tuple[SlotsState, str | None]:
    """slots.json of ``symbol`` and its tag; the empty state (tag None) when there is none."""
    key = f"{symbol}/{SLOTS_FILE}"
    stored = storage.get(key)
    if stored is None:
        return SlotsState(Slots(None, None)), None
    try:
        doc = json.loads(stored.data)
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
        trial = doc.get("trial")
        if trial is not None and not isinstance(trial, dict):
            raise ValueError(f"trial must be an object, got {trial!r}")
        announced = doc.get("announced")
        if announced is not None and (not isinstance(announced, int) or announced < 0):
            raise ValueError(f"announced {announced!r} is not a non-negative integer")
        state = SlotsState(slots, seq, decision, _claim(doc.get("owner")), trial, announced)
    except (AttributeError, TypeError, ValueError) as exc:
        raise RegistryCorrupt(_where(storage, key), f"bad slots document: {exc}") from exc
    return state, stored.tag


def write_state(storage: RegistryStorage, symbol: str, state: SlotsState, tag: str | None) -> None:
    """Replace slots.json if it is still the one ``tag`` names. Conflict otherwise."""
    doc: dict[str, Any] = {
        "champion": state.slots.champion,
        "shadow": state.slots.shadow,
        "retired": list(state.slots.retired),
        "seq": state.seq,
        "decision": [line.to_dict() for line in state.decision],
    }
    if state.owner is not None:
        doc["owner"] = {"owner": state.owner.owner, "epoch": state.owner.epoch}
    if state.trial is not None:
        doc["trial"] = dict(state.trial)
    if state.announced is not None:
        doc["announced"] = state.announced
    data = json.dumps(doc, indent=2, allow_nan=False).encode() + b"\n"
    storage.put_if(f"{symbol}/{SLOTS_FILE}", data, tag)


def read_history(storage: RegistryStorage, symbol: str) -> list[RegistryEvent]:
    """Every complete ledger line, oldest first. RegistryCorrupt for a line that does not parse."""
    key = f"{symbol}/{HISTORY_FILE}"
    stored = storage.get(key)
    lines = (stored.data if stored else b"").split(b"\n")[:-1]  # after the last newline: torn
    return [_parse(storage, key, n, line) for n, line in enumerate(lines, 1)]


def append_missing(
    storage: RegistryStorage, symbol: str, lines: tuple[RegistryEvent, ...]
) -> tuple[int, tuple[RegistryEvent, ...], list[str]]:
    """Append the ``lines`` whose seq is above the ledger's last.

    Returns the ledger's last seq after the call, the lines appended, and notes (a
    torn tail dropped). Idempotent and safe against concurrent writers: each
    attempt is a compare-and-swap of the whole ledger, retried on Conflict.
    RegistryCorrupt if the lines would leave a gap after the ledger's last seq.
    """
    key = f"{symbol}/{HISTORY_FILE}"
    while True:
        stored = storage.get(key)
        data = stored.data if stored else b""
        complete = data[: data.rfind(b"\n") + 1]
        torn = len(data) - len(complete)
        last = _last_seq(storage, key, complete)
        missing = tuple(line for line in lines if (line.seq or 0) > last)
        if not missing and not torn:
            return last, (), []
        if missing and missing[0].seq != last + 1:
            raise RegistryCorrupt(
                _where(storage, key),
                f"ledger ends at seq {last} but the next line to append is seq {missing[0].seq}",
            )
        tag = stored.tag if stored else None
        try:
            storage.put_if(key, complete + b"".join(_encode(line) for line in missing), tag)
        except Conflict:
            continue
        notes = [f"{_where(storage, key)}: dropped a torn last line ({torn} bytes)"] if torn else []
        return (missing[-1].seq or last) if missing else last, missing, notes


def sync(storage: RegistryStorage, symbol: str, state: SlotsState) -> tuple[int, list[str]]:
    """Re-append the decision lines the ledger lacks; return the last seq in use and notes."""
    last, appended, notes = append_missing(storage, symbol, state.decision)
    if appended:
        notes.append(
            f"{_where(storage, f'{symbol}/{HISTORY_FILE}')}: re-appended seq "
            f"{appended[0].seq}..{appended[-1].seq} from {SLOTS_FILE}"
        )
    return max(last, state.seq), notes


def last_seq(storage: RegistryStorage, symbol: str) -> int:
    """Seq of the ledger's last complete line (0 for an empty ledger); parses that line only."""
    key = f"{symbol}/{HISTORY_FILE}"
    stored = storage.get(key)
    return _last_seq(storage, key, stored.data if stored else b"")


def _last_seq(storage: RegistryStorage, key: str, data: bytes) -> int:
    end = data.rfind(b"\n")
    if end < 0:
        return 0
    start = data.rfind(b"\n", 0, end) + 1
    seq = _parse(storage, key, data.count(b"\n", 0, start) + 1, data[start:end]).seq
    if seq is None:
        raise RegistryCorrupt(_where(storage, key), "last line has no seq")
    return seq


def _encode(line: RegistryEvent) -> bytes:
    return json.dumps(line.to_dict(), separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _claim(doc: object) -> Claim | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValueError(f"owner must be an object, got {doc!r}")
    owner, epoch = doc.get("owner"), doc.get("epoch")
    if not isinstance(owner, str) or not owner:
        raise ValueError(f"owner.owner must be a non-empty string, got {owner!r}")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise ValueError(f"owner.epoch must be an integer, got {epoch!r}")
    return Claim(owner, epoch)


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
