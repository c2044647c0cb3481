"""The one channel registry decisions leave the daemon by: counters, then every alert sink.

A decision is written to the ledger before it is announced; a daemon killed
between the two would never announce it. The registry therefore records per
symbol the ledger seq announced up to (``Registry.mark_announced``), moved
after the sinks took the events; when a daemon takes a symbol over (at start
or from a peer) it announces every ledger line above it: announcements are
at-least-once (a kill after the sinks but before the mark repeats one), and
they follow the symbol across machines. A symbol with no mark yet (a registry
of an earlier release, or a first writer that died before announcing) counts
as announced up to its last write, whose lines are announced again.

Sinks implement ``deploy.alerts.AlertSink``: the promotions topic
(``daemon.kafka.promotions``) and the webhook today; a new one is one class
and one line where the daemon lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import Counter

from daemon.logs import get_logger
from daemon.metrics import Metrics
from deploy.alerts import AlertSink
from deploy.events import RegistryEvent
from deploy.registry import Registry, SlotsState

_log = get_logger(component="announce")


class Announcer:
    """Counts every registry event and hands it to every sink (each picks its kinds)."""

    def __init__(self, registry: Registry, sinks: Sequence[AlertSink], metrics: Metrics) -> None:
        self.registry = registry
        self.sinks = tuple(sinks)
        self._counters: Mapping[str, Counter] = {
            "champion_bootstrapped": metrics.champion_bootstraps,
            "shadow_placed": metrics.shadow_placements,
            "promoted": metrics.promotions,
            "rejected": metrics.shadow_rejections,
            "rolled_back": metrics.rollbacks,
        }

    def announce(self, events: Iterable[RegistryEvent]) -> None:
        """Announce events this process just recorded (each carries its ledger seq)."""
        last: dict[str, int] = {}
        for event in events:
            self._announce_one(event)
            if event.seq is not None:
                last[event.symbol] = max(event.seq, last.get(event.symbol, 0))
        for symbol, seq in last.items():
            self._mark(symbol, seq)

    def catch_up(
        self, symbols: Iterable[str], known: Mapping[str, SlotsState] | None = None
    ) -> int:
        """Announce the ledger lines of ``symbols`` (just taken over) that the previous owner
        recorded but may not have announced; return how many. ``known``: states already read
        (a symbol whose every line was announced then costs no registry read)."""
        replayed = 0
        for symbol in symbols:
            state = (known or {}).get(symbol) or self.registry.state(symbol)
            done = state.announced_through
            if done >= state.seq:
                continue
            lines = self.registry.history(symbol)
            last = max((line.seq or 0 for line in lines), default=0)
            missed = [line for line in lines if (line.seq or 0) > done]
            for line in missed:
                self._announce_one(line)
                replayed += 1
            if last:
                self._mark(symbol, last)
        if replayed:
            _log.warning("decisions_reannounced", count=replayed)
        return replayed

    def deliveries(self) -> Iterable[tuple[str, str, int]]:
        """(sink, outcome, count) of every sink, for ``ctd_alert_deliveries_total``."""
        for sink in self.sinks:
            for outcome, count in sink.deliveries().items():
                yield sink.name, outcome, count

    def close(self, timeout: float) -> None:
        for sink in self.sinks:
            sink.close(timeout)

    def _mark(self, symbol: str, seq: int) -> None:
        # Unfenced: the mark only moves forward, and an operator's command may be announced
        # by a daemon that does not own the symbol.
        self.registry.unfenced().mark_announced(symbol, seq)

    def _announce_one(self, event: RegistryEvent) -> None:
        counter = self._counters.get(event.event)
        if counter is not None:
            counter.labels(event.symbol).inc()
        for sink in self.sinks:  # each sink takes the kinds it is for
            sink.notify(event)
