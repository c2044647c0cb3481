"""What each slot decision does to a symbol's slots, and the ledger lines it writes.

Pure functions of the slots before the decision; ``deploy.registry.Registry``
runs them inside its compare-and-swap (so they may run more than once) and
checks that the versions they name exist.

Rollback puts the newest retired version back as champion and removes it from
``retired``; the champion backed out is dropped, not retired, so a second
rollback goes one further back instead of undoing the first. The shadow stays
(unless it is the version restored).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deploy.errors import AlreadyInSlotError, NoChampionError, NoShadowError, NothingToRollBackError
from deploy.events import RegistryEvent, utc_now
from deploy.registry.ledger import Slots

Decision = tuple[Slots, list[RegistryEvent]]


def place(
    slots: Slots,
    symbol: str,
    version: str,
    actor: str,
    reason: str,
    *,
    superseded_evidence: Mapping[str, Any] | None,
) -> Decision:
    """``version`` becomes the champion if there is none (``champion_bootstrapped``), else
    the shadow (``shadow_superseded`` with the replaced shadow's partial evidence when there
    was one, then ``shadow_placed``). AlreadyInSlotError."""
    for slot, holder in (("champion", slots.champion), ("shadow", slots.shadow)):
        if holder == version:
            raise AlreadyInSlotError(symbol, version, slot)
    ts = utc_now()
    if slots.champion is None:
        event = RegistryEvent("champion_bootstrapped", symbol, None, version, {}, ts, actor, reason)
        return Slots(version, None, slots.retired), [event]
    events = []
    if slots.shadow is not None:
        evidence = dict(superseded_evidence or {})
        events.append(
            RegistryEvent(
                "shadow_superseded", symbol, slots.shadow, version, evidence, ts, actor, reason
            )
        )
    events.append(
        RegistryEvent("shadow_placed", symbol, slots.champion, version, {}, ts, actor, reason)
    )
    return Slots(slots.champion, version, slots.retired), events


def promote(
    slots: Slots, symbol: str, evidence: Mapping[str, Any], actor: str, reason: str
) -> Decision:
    """The shadow becomes champion; the old champion is appended to ``retired``."""
    if slots.shadow is None:
        raise NoShadowError(symbol, "promote")
    retired = tuple(v for v in slots.retired if v != slots.shadow)
    if slots.champion is not None:
        retired += (slots.champion,)
    event = RegistryEvent(
        "promoted", symbol, slots.champion, slots.shadow, evidence, utc_now(), actor, reason
    )
    return Slots(slots.shadow, None, retired), [event]


def reject(
    slots: Slots, symbol: str, evidence: Mapping[str, Any], actor: str, reason: str
) -> Decision:
    """The shadow slot is emptied; the champion stays."""
    if slots.shadow is None:
        raise NoShadowError(symbol, "reject")
    event = RegistryEvent(
        "rejected", symbol, slots.champion, slots.shadow, evidence, utc_now(), actor, reason
    )
    return Slots(slots.champion, None, slots.retired), [event]


def rollback(slots: Slots, symbol: str, actor: str, reason: str) -> Decision:
    """The newest retired version becomes champion again. NoChampionError,
    NothingToRollBackError."""
    if slots.champion is None:
        raise NoChampionError(symbol, "roll back")
    if not slots.retired:
        raise NothingToRollBackError(symbol, slots.champion)
    restored = slots.retired[-1]
    shadow = None if slots.shadow == restored else slots.shadow
    event = RegistryEvent(
        "rolled_back", symbol, slots.champion, restored, {}, utc_now(), actor, reason
    )
    return Slots(restored, shadow, slots.retired[:-1]), [event]
