"""One row of status per symbol, read from the local store and the registry.

Shared by ``ctd status`` (works whether or not a daemon is running), the demo's
live table and the read API's ``/v1/symbols``, so all show the same thing.
Against a shared registry (``CTD_REGISTRY_URL=s3://...``) it lists every symbol
of the fleet, with the daemon that owns it (its claim) and the evidence of its
running trial as last checkpointed; ``bars`` counts this machine's store only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daemon.store.bars import BarStore
from deploy.handoff import TrialCheckpoint
from deploy.quarantine import STATE_ERRORS, check_symbol, reason_of
from deploy.registry import Registry


@dataclass(frozen=True, slots=True)
class SymbolStatus:
    symbol: str
    bars: int
    versions: int
    champion: str | None
    shadow: str | None
    champion_trainer: str | None
    champion_test_accuracy: float | None
    baseline_test_accuracy: float | None
    last_event: str | None
    last_event_ts: str | None
    failures: int
    owner: str | None = None
    """The daemon acting for the symbol (member@generation), from its last claim."""
    trial_bars: int | None = None
    """Paired bars of the running shadow trial as last checkpointed by its owner."""
    quarantined: str | None = None
    """Why the symbol's registry state cannot be read (``deploy.quarantine``): its reason
    and the error; the daemon skips it until ``ctd doctor`` repairs it."""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def symbol_status(symbol: str, bars: int, registry: Registry) -> SymbolStatus:
    state = registry.state(symbol)
    slots = state.slots
    meta = None if slots.champion is None else registry.metadata(symbol, slots.champion)
    history = registry.history(symbol)
    last = history[-1] if history else None
    return SymbolStatus(
        symbol=symbol,
        bars=bars,
        versions=len(registry.versions(symbol)),
        champion=slots.champion,
        shadow=slots.shadow,
        champion_trainer=None if meta is None else meta.trainer,
        champion_test_accuracy=None if meta is None else meta.test_accuracy,
        baseline_test_accuracy=None if meta is None else meta.baseline_test_accuracy,
        last_event=None if last is None else last.event,
        last_event_ts=None if last is None else last.ts,
        failures=sum(1 for e in history if e.event == "training_failed"),
        owner=None if state.owner is None else str(state.owner),
        trial_bars=_trial_bars(state.trial),
    )


def _trial_bars(trial: Mapping[str, Any] | None) -> int | None:
    """n of the checkpointed trial, if the checkpoint says (see ``deploy.handoff``)."""
    try:
        test = TrialCheckpoint.from_dict(trial).state.test if trial else None
        return None if test is None else int(test["n"])
    except (ValueError, KeyError, TypeError):
        return None


def all_status(
    store: BarStore | None, registry: Registry, only: str | None = None
) -> list[SymbolStatus]:
    counts = store.counts() if store is not None else {}
    symbols = sorted(set(counts) | set(registry.symbols()))
    if only is not None:
        symbols = [s for s in symbols if s == only]
    return [_status_or_quarantined(s, counts.get(s, 0), registry) for s in symbols]


def _status_or_quarantined(symbol: str, bars: int, registry: Registry) -> SymbolStatus:
    """The symbol's row; for one whose state does not read whole, a row saying why."""
    try:
        check_symbol(registry, symbol)
        return symbol_status(symbol, bars, registry)
    except STATE_ERRORS as exc:
        why = f"{reason_of(exc)}: {exc}"
        return SymbolStatus(symbol, bars, 0, *(None,) * 7, 0, quarantined=why)
