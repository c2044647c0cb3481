"""The bar store in memory: ``BarStore``'s reads and writes without SQLite, for unit tests of
the live path and tools; one process, thread-safe."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from daemon.store.bars import Partition, Written
from trainers.data import BarRecord, Bars, validate_symbol


class MemoryBarStore:
    """Bars by (symbol, ts), idempotent upserts, and the trained bookkeeping."""

    def __init__(self) -> None:
        self._bars: dict[str, dict[int, BarRecord]] = {}
        self._trained: dict[str, tuple[int, float]] = {}
        self._positions: dict[Partition, int] = {}
        self._partitions: dict[str, Partition] = {}
        self._lock = threading.Lock()

    def upsert(
        self,
        bars: Sequence[BarRecord],
        *,
        positions: Mapping[Partition, int] | None = None,
        partitions: Mapping[str, Partition] | None = None,
    ) -> dict[str, int]:
        """Store bars; return how many were new, per symbol (a correction replaces, counts 0)."""
        return self.write(bars, positions=positions, partitions=partitions).new

    def write(
        self,
        bars: Sequence[BarRecord],
        *,
        positions: Mapping[Partition, int] | None = None,
        partitions: Mapping[str, Partition] | None = None,
    ) -> Written:
        """Store bars; return the new and the corrected ones per symbol, as ``BarStore.write``."""
        new: dict[str, int] = {}
        corrected: dict[str, int] = {}
        with self._lock:
            for tp, offset in (positions or {}).items():
                self._positions[tp] = max(offset, self._positions.get(tp, 0))
            self._partitions.update(partitions or {})
            for bar in bars:
                rows = self._bars.setdefault(validate_symbol(bar.symbol), {})
                old = rows.get(bar.ts)
                new[bar.symbol] = new.get(bar.symbol, 0) + (old is None)
                changed = old is not None and old != bar
                corrected[bar.symbol] = corrected.get(bar.symbol, 0) + changed
                rows[bar.ts] = bar
        return Written(new, corrected)

    def load(self, symbol: str, last_n: int | None = None) -> Bars:
        validate_symbol(symbol)
        with self._lock:
            rows = sorted(self._bars.get(symbol, {}).values(), key=lambda b: b.ts)
        if last_n is not None:
            rows = rows[max(len(rows) - last_n, 0) :] if last_n else []
        return Bars.from_rows([(r.ts, r.open, r.high, r.low, r.close, r.volume) for r in rows])

    def count(self, symbol: str) -> int:
        with self._lock:
            return len(self._bars.get(validate_symbol(symbol), {}))

    def count_after(self, symbol: str, ts: int) -> int:
        with self._lock:
            return sum(1 for t in self._bars.get(validate_symbol(symbol), {}) if t > ts)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {s: len(rows) for s, rows in self._bars.items() if rows}

    def positions(self) -> dict[Partition, int]:
        with self._lock:
            return dict(self._positions)

    def partitions(self) -> dict[str, Partition]:
        with self._lock:
            return dict(self._partitions)

    def mark_trained(self, symbol: str, bar_count: int, at: float) -> None:
        with self._lock:
            self._trained[validate_symbol(symbol)] = (bar_count, at)

    def trained_state(self) -> dict[str, tuple[int, float]]:
        with self._lock:
            return dict(self._trained)

    def forget_trained(self, symbol: str) -> None:
        with self._lock:
            self._trained.pop(validate_symbol(symbol), None)
