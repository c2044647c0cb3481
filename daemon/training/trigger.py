"""When a symbol is due for retraining, and the requests that follow.

Policy: a symbol is due when it has at least ``min_bars`` bars and at least
``retrain_every_bars`` new bars since its last finished training. New bars
from ingest are judged by the policy; an operator's command or a live monitor
requests a retrain whatever the count (the queue still coalesces and backs off).
Whether a job would only repeat the symbol's last finished run is judged when it
starts, on the bars it loaded (``daemon.training.window``).
"""

from __future__ import annotations

import threading
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TriggerPolicy:
    """Pure rule: is a symbol with ``total`` bars, last trained at ``trained_at`` bars, due?"""

    min_bars: int
    retrain_every_bars: int

    def due(self, total: int, trained_at: int | None) -> bool:
        if total < self.min_bars:
            return False
        return trained_at is None or total - trained_at >= self.retrain_every_bars


class RetrainQueue(Protocol):
    """Where requests go (``daemon.training.scheduler.RetrainScheduler``)."""

    def request(self, symbol: str, bar_count: int, reason: str) -> bool: ...


class RetrainTrigger:
    """Bars per symbol and bars at the last training; asks the queue when a symbol is due.

    Thread-safe: ingest, the outcome recorder and the command consumer call it.
    """

    def __init__(
        self,
        policy: TriggerPolicy,
        queue: RetrainQueue,
        *,
        counts: Mapping[str, int],
        trained: Mapping[str, int],
        held: Container[str] = (),
    ) -> None:
        self._policy = policy
        self._held = held  # symbols never queued (quarantined)
        self._queue = queue
        self._counts = dict(counts)
        self._trained = dict(trained)
        self._lock = threading.Lock()

    def symbols(self) -> list[str]:
        with self._lock:
            return sorted(self._counts)

    def count(self, symbol: str) -> int:
        with self._lock:
            return self._counts.get(symbol, 0)

    def add_bars(self, new: Mapping[str, int]) -> None:
        """Count newly stored bars per symbol."""
        with self._lock:
            for symbol, n in new.items():
                self._counts[symbol] = self._counts.get(symbol, 0) + n

    def request_due(self, symbols: Iterable[str], reason: str) -> None:
        """Request every one of ``symbols`` that the policy says is due."""
        for symbol in symbols:
            with self._lock:
                total = self._counts.get(symbol, 0)
                due = self._policy.due(total, self._trained.get(symbol))
            if due and symbol not in self._held:
                self._queue.request(symbol, total, reason)

    def request(self, symbol: str, reason: str) -> bool:
        """A retrain asked for by an operator or a live monitor, whatever the bar count;
        False for a held symbol."""
        if symbol in self._held:
            return False
        return self._queue.request(symbol, self.count(symbol), reason)

    def take_over(self, symbol: str, count: int, trained_at: int | None) -> None:
        """A symbol this daemon just took over: its bar count after the rebuild, and the count
        at its last training (estimated from the registry when another daemon trained it)."""
        with self._lock:
            self._counts[symbol] = count
            if trained_at is not None:
                self._trained[symbol] = max(trained_at, self._trained.get(symbol, 0))

    def trained(self, symbol: str, bar_count: int) -> int:
        """Record a finished training on ``bar_count`` bars; return the count now recorded.

        Jobs can finish out of order (a monitor-triggered one with an older count
        after a newer one): the trained count never moves back.
        """
        with self._lock:
            kept = max(bar_count, self._trained.get(symbol, 0))
            self._trained[symbol] = kept
            return kept
