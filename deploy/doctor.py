"""``ctd doctor``: say what is wrong with a quarantined symbol's registry state, and repair it.

Each problem ``deploy.quarantine.check_symbol`` can raise maps to one repair:

- slots.json unreadable: rebuild the slots by replaying the ledger (every slot decision
  is a ledger line); with no readable ledger either, set the file aside and start empty
  (the symbol trains a new champion);
- the trial checkpoint in slots.json invalid: drop it (the trial restarts);
- a ledger line that does not parse: keep the lines that do, the whole file set aside;
- the champion's version unreadable (metadata, model, hash): roll back to the newest
  retired version that reads whole, or, with none, clear the champion so it retrains;
- the shadow's version unreadable: reject the shadow.

Repairs that change a slot go through the registry with a ledger line by actor
``doctor``; files set aside keep their bytes as ``<name>.corrupt-<time>``. A repair
can reveal the next problem, so ``repair_symbol`` runs until the symbol reads whole.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Final, Literal

from deploy.errors import RegistryCorrupt
from deploy.events import RegistryEvent, utc_now
from deploy.quarantine import STATE_ERRORS, check_symbol, reason_of
from deploy.registry import Registry
from deploy.registry.ledger import HISTORY_FILE, SLOTS_FILE, Slots, SlotsState, write_state

Repair = Literal[
    "rebuild_slots", "reset_slots", "drop_trial", "clean_ledger", "roll_back", "clear_champion",
    "reject_shadow",
]  # fmt: skip
ACTOR: Final = "doctor"
MAX_ROUNDS: Final = 6


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem of a symbol and the repair that fixes it."""

    symbol: str
    reason: str  # deploy.quarantine.REASONS
    problem: str
    repair: Repair
    explain: str  # what the repair will do, for the operator


_SIMPLE: Final[dict[str, tuple[Repair, str]]] = {
    "trial": ("drop_trial", "drop the trial checkpoint (the running trial starts over)"),
    "ledger": ("clean_ledger", f"keep the {HISTORY_FILE} lines that parse, set the file aside"),
}


def diagnose(registry: Registry, symbol: str) -> Finding | None:
    """The symbol's first problem with its repair; None when it reads whole."""
    try:
        check_symbol(registry, symbol)
        return None
    except STATE_ERRORS as exc:
        reason, problem = reason_of(exc), str(exc)
    repair, explain = _SIMPLE.get(reason) or _slot_repair(registry, symbol, reason, problem)
    return Finding(symbol, reason, problem, repair, explain)


def _slot_repair(registry: Registry, symbol: str, reason: str, problem: str) -> tuple[Repair, str]:
    if reason == "slots":
        if _ledger_reads(registry, symbol):
            return "rebuild_slots", f"rebuild {SLOTS_FILE} by replaying the ledger"
        return "reset_slots", f"set {SLOTS_FILE} aside and start with no champion (it retrains)"
    slots = registry.slots(symbol)
    if slots.champion is None or slots.champion not in problem:
        return "reject_shadow", "reject the unreadable shadow"
    target = _loadable_retired(registry, symbol, slots)
    if target is None:
        return "clear_champion", "clear the champion: no older version reads (`ctd retrain`)"
    return "roll_back", f"roll back to {target}, the newest retired version that reads whole"


def apply(registry: Registry, finding: Finding) -> str:
    """Carry out ``finding``'s repair; returns one line saying what was done."""
    symbol, why = finding.symbol, f"doctor: {finding.problem}"
    if finding.repair == "rebuild_slots":
        slots, seq = replay(registry.history(symbol))
        _replace_slots(registry, symbol, SlotsState(slots, seq))
        return f"rebuilt {SLOTS_FILE} from {seq} ledger lines: champion {slots.champion}"
    if finding.repair == "reset_slots":
        _set_aside(registry, symbol, SLOTS_FILE)
        return f"set {SLOTS_FILE} aside; {symbol} starts with no champion"
    if finding.repair == "drop_trial":
        _drop_trial(registry, symbol)
        return "dropped the trial checkpoint"
    if finding.repair == "clean_ledger":
        kept = _clean_ledger(registry, symbol)
        return f"kept {kept} ledger lines that parse; the old file is set aside"
    if finding.repair == "reject_shadow":
        registry.reject(symbol, evidence={}, actor=ACTOR, reason=why)
        return "rejected the shadow"
    slots = registry.slots(symbol)
    target = _loadable_retired(registry, symbol, slots) if finding.repair == "roll_back" else None
    retired = slots.retired[: slots.retired.index(target)] if target is not None else ()
    shadow = None if slots.shadow == target else slots.shadow
    event = RegistryEvent("rolled_back", symbol, slots.champion, target, {}, utc_now(), ACTOR, why)
    registry.set_slots(symbol, Slots(target, shadow, retired), event)
    return f"champion {slots.champion} -> {target}"


def repair_symbol(registry: Registry, symbol: str) -> list[tuple[Finding, str]]:
    """Diagnose and repair until the symbol reads whole; each finding with what was done.
    RuntimeError if it still does not after ``MAX_ROUNDS`` repairs."""
    done: list[tuple[Finding, str]] = []
    for _ in range(MAX_ROUNDS):
        finding = diagnose(registry, symbol)
        if finding is None:
            return done
        done.append((finding, apply(registry, finding)))
    raise RuntimeError(f"{symbol}: still unreadable after {MAX_ROUNDS} repairs: {done[-1][0]}")


def replay(history: list[RegistryEvent]) -> tuple[Slots, int]:
    """The slots the ledger's decisions lead to (``deploy.registry.decisions`` backwards),
    and the last seq."""
    champion: str | None = None
    shadow: str | None = None
    retired: list[str] = []
    for e in history:
        if e.event == "champion_bootstrapped":
            champion = e.to_version
        elif e.event == "shadow_placed":
            shadow = e.to_version
        elif e.event in ("shadow_superseded", "rejected"):
            shadow = None
        elif e.event == "promoted":
            retired = [v for v in retired if v != e.to_version]
            retired += [champion] if champion is not None else []
            champion, shadow = e.to_version, None
        elif e.event == "rolled_back":
            if e.to_version in retired:
                retired = retired[: retired.index(e.to_version)]
            shadow = None if shadow == e.to_version else shadow
            champion = e.to_version
    seq = max((e.seq or 0 for e in history), default=0)
    return Slots(champion, shadow, tuple(retired)), seq


def _loadable_retired(registry: Registry, symbol: str, slots: Slots) -> str | None:
    for version in reversed(slots.retired):
        try:
            registry.model_path(symbol, version)
            return version
        except STATE_ERRORS:
            continue
    return None


def _ledger_reads(registry: Registry, symbol: str) -> bool:
    try:
        registry.history(symbol)
        return True
    except RegistryCorrupt:
        return False


def _drop_trial(registry: Registry, symbol: str) -> None:
    key = f"{symbol}/{SLOTS_FILE}"
    stored = registry.storage.get(key)
    assert stored is not None  # diagnosed from this very file
    doc = json.loads(stored.data)
    doc.pop("trial", None)
    _set_aside(registry, symbol, SLOTS_FILE)
    registry.storage.put(key, json.dumps(doc, indent=2).encode() + b"\n")


def _replace_slots(registry: Registry, symbol: str, state: SlotsState) -> None:
    stored = registry.storage.get(f"{symbol}/{SLOTS_FILE}")
    if stored is not None:
        _set_aside(registry, symbol, SLOTS_FILE)
    write_state(registry.storage, symbol, state, None)


def _clean_ledger(registry: Registry, symbol: str) -> int:
    key = f"{symbol}/{HISTORY_FILE}"
    stored = registry.storage.get(key)
    data = stored.data if stored is not None else b""
    kept = []
    for line in data.split(b"\n")[:-1]:
        try:
            RegistryEvent.from_dict(json.loads(line))
        except (ValueError, TypeError, KeyError):
            continue
        kept.append(line)
    _set_aside(registry, symbol, HISTORY_FILE)
    registry.storage.put(key, b"".join(line + b"\n" for line in kept))
    return len(kept)


def _set_aside(registry: Registry, symbol: str, name: str) -> None:
    key = f"{symbol}/{name}"
    stored = registry.storage.get(key)
    if stored is not None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        registry.storage.put(f"{key}.corrupt-{stamp}", stored.data)
        registry.storage.delete(key)
