"""One row of status per symbol, read from the store and the registry on disk.

Shared by ``ctd status`` (works whether or not a daemon is running) and the
demo's live table, so both always show the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.store import BarStore
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

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def symbol_status(symbol: str, bars: int, registry: Registry) -> SymbolStatus:
    slots = registry.slots(symbol)
    trainer = acc = base = None
    if slots.champion is not None:
        meta = registry.metadata(symbol, slots.champion)
        trainer = meta.get("trainer")
        acc = ((meta.get("metrics") or {}).get("test") or {}).get("accuracy")
        base = (((meta.get("baseline") or {}).get("metrics") or {}).get("test") or {}).get(
            "accuracy"
        )
    history = registry.history(symbol)
    last = history[-1] if history else {}
    return SymbolStatus(
        symbol=symbol,
        bars=bars,
        versions=len(registry.versions(symbol)),
        champion=slots.champion,
        shadow=slots.shadow,
        champion_trainer=trainer,
        champion_test_accuracy=acc,
        baseline_test_accuracy=base,
        last_event=last.get("event"),
        last_event_ts=last.get("ts"),
        failures=sum(1 for e in history if e.get("event") == "training_failed"),
    )


def all_status(
    store: BarStore | None, registry: Registry, only: str | None = None
) -> list[SymbolStatus]:
    counts = store.counts() if store is not None else {}
    symbols = sorted(set(counts) | set(registry.symbols()))
    if only is not None:
        symbols = [s for s in symbols if s == only]
    return [symbol_status(s, counts.get(s, 0), registry) for s in symbols]
