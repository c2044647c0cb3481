"""The one channel registry decisions leave the daemon by: counters, then every alert sink.

A decision is written to the ledger before it is announced; a daemon killed
between the two would never announce it. The announcer therefore keeps a
cursor per symbol (the ledger seq announced up to, a small durable JSON file),
moves it after the sinks took the events, and at start-up announces every
ledger line above it: announcements are at-least-once (a kill after the sinks
but before the cursor moved repeats one). Without a cursor file (first
start), nothing old is replayed.

Sinks implement ``deploy.alerts.AlertSink``: the promotions topic
(``daemon.kafka.promotions``) and the webhook today; a new one is one class
and one line where the daemon lists them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from prometheus_client import Counter

from daemon.logs import get_logger
from daemon.metrics import Metrics
from deploy.alerts import AlertSink
from deploy.durable import write_atomic
from deploy.events import RegistryEvent
from deploy.registry import Registry

_log = get_logger(component="announce")


class AnnouncementCursor:
    """Per symbol, the ledger seq up to which decisions were announced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.fresh = not path.exists()
        self._seqs: dict[str, int] = {} if self.fresh else json.loads(path.read_text())

    def get(self, symbol: str) -> int | None:
        return self._seqs.get(symbol)

    def advance(self, symbol: str, seq: int) -> None:
        with self._lock:
            if seq <= self._seqs.get(symbol, -1):
                return
            self._seqs[symbol] = seq
            write_atomic(self.path, json.dumps(self._seqs).encode())


class Announcer:
    """Counts every registry event and hands the promotion-topic ones to every sink."""

    def __init__(
        self,
        registry: Registry,
        cursor: AnnouncementCursor,
        sinks: Sequence[AlertSink],
        metrics: Metrics,
    ) -> None:
        self.registry = registry
        self.cursor = cursor
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
            self.cursor.advance(symbol, seq)

    def catch_up(self) -> int:
        """Announce the ledger lines a previous run recorded but may not have announced."""
        replayed = 0
        for symbol in self.registry.symbols():
            lines = self.registry.history(symbol)
            last = max((line.seq or 0 for line in lines), default=0)
            done = self.cursor.get(symbol)
            if done is None and self.cursor.fresh:
                self.cursor.advance(symbol, last)  # first start: nothing old to replay
                continue
            for line in lines:
                if (line.seq or 0) > (done or 0) and line.is_promotion_topic_event:
                    self._announce_one(line)
                    replayed += 1
            self.cursor.advance(symbol, last)
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

    def _announce_one(self, event: RegistryEvent) -> None:
        counter = self._counters.get(event.event)
        if counter is not None:
            counter.labels(event.symbol).inc()
        if event.is_promotion_topic_event:
            for sink in self.sinks:
                sink.notify(event)
