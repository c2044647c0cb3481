"""Start-up recovery of finished runs that a crash cut off before their ledger line.

A finished run is recorded in three steps (``daemon.training.outcomes``): the
bar store marks its bars trained, the registry takes the version in, then the
slot decision writes slots.json and the ledger line. A daemon killed between
them leaves a symbol that no later step repairs: its bars count as trained, so
nothing retrains it, and the version (if any) sits unreferenced. At start-up:

- A complete version newer than every version a slot or ledger line names
  (``Registry.unplaced``) is adopted: placed as its run would have placed it,
  champion when there is none, else shadow, with a ledger line whose reason
  says so. The takeover announces it like any unannounced decision.
- Otherwise, a training mark later than the symbol's last ledger line means
  the run's version was lost (never complete) or cannot be adopted: the mark
  is dropped, so the symbol's bars count as untrained and the retrain policy
  takes it up when its partition is assigned.

Only for registries on private storage: on shared storage an unplaced version
may be another daemon's run between its two writes.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol

from daemon.logs import get_logger
from daemon.training.outcomes import Placer
from deploy.errors import RegistryCorrupt, RegistryError
from deploy.events import RegistryEvent
from deploy.registry import Registry

_log = get_logger(component="recovery")

ADOPTED_REASON: Final = "adopted at start-up: its run ended before the version was placed"


class TrainedMarks(Protocol):
    """The bar store's record of each symbol's last training (``daemon.store.bars.BarStore``)."""

    def trained_state(self) -> dict[str, tuple[int, float]]: ...

    def forget_trained(self, symbol: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RecoveredRun:
    """What start-up recovery did for one symbol: ``adopted`` its unplaced ``version``, or
    dropped its training mark so it trains again (``retrain``, with the ``problem``)."""

    symbol: str
    action: Literal["adopted", "retrain"]
    version: str | None
    problem: str = ""
    events: tuple[RegistryEvent, ...] = ()


def recover_runs(
    registry: Registry, marks: TrainedMarks, placer: Placer, *, skip: Container[str] = ()
) -> list[RecoveredRun]:
    """Adopt unplaced versions and un-mark lost runs, symbol by symbol (``skip``: quarantined
    symbols, left as they are). Logs each action; a symbol whose slots or ledger do not read
    is skipped. Raises StoreError if the bar store fails."""
    trained = marks.trained_state()
    done = []
    for symbol in sorted(set(registry.symbols()) | set(trained)):
        if symbol in skip:
            continue
        try:
            recovered = _recover(registry, placer, symbol, trained.get(symbol))
        except RegistryCorrupt:
            continue  # the quarantine check reports it
        if recovered is None:
            continue
        if recovered.action == "retrain" and symbol in trained:
            marks.forget_trained(symbol)
        done.append(recovered)
        if recovered.action == "adopted":
            slot = "champion" if recovered.events[-1].event == "champion_bootstrapped" else "shadow"
            _log.warning("version_adopted", symbol=symbol, version=recovered.version, slot=slot)
        else:
            _log.warning(
                "trained_mark_dropped",
                symbol=symbol,
                version=recovered.version,
                problem=recovered.problem,
            )
    return done


def _recover(
    registry: Registry, placer: Placer, symbol: str, mark: tuple[int, float] | None
) -> RecoveredRun | None:
    unplaced = registry.unplaced(symbol)
    if unplaced:
        version = unplaced[-1]  # an older one was superseded by this run anyway
        try:
            if not registry.metadata(symbol, version).passed:
                problem = "its metadata.json says the run did not pass the gates"
            else:
                events = placer.place(symbol, version, reason=ADOPTED_REASON)
                return RecoveredRun(symbol, "adopted", version, events=tuple(events))
        except (RegistryError, OSError) as exc:
            problem = f"cannot place it: {exc}"
        return RecoveredRun(symbol, "retrain", version, problem)
    if mark is None:
        return None
    history = registry.history(symbol)
    if history and _unix(history[-1].ts) >= mark[1]:
        return None
    return RecoveredRun(
        symbol, "retrain", None, "bars marked trained after the last ledger line: run lost"
    )


def _unix(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
