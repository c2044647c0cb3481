"""The prediction log in memory: the ``deploy.trial.PredictionLog`` port without SQLite, for unit
tests of the live path and for tools; one process, thread-safe."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from deploy.trial import LogWrite, Prediction, Slot, TrialState
from trainers.data import validate_symbol


class MemoryPredictionLog:
    """Predictions by (symbol, bar ts, slot) with their outcomes, and each symbol's trial state."""

    def __init__(self) -> None:
        self._predictions: dict[tuple[str, int, Slot], tuple[Prediction, float | None]] = {}
        self._states: dict[str, TrialState] = {}
        self._lock = threading.Lock()

    def load_state(self, symbol: str) -> TrialState | None:
        validate_symbol(symbol)
        with self._lock:
            return self._states.get(symbol)

    def unresolved(self, symbol: str, before_ts: int | None = None) -> list[Prediction]:
        validate_symbol(symbol)
        with self._lock:
            out = [
                p
                for (sym, ts, _slot), (p, outcome) in self._predictions.items()
                if sym == symbol and outcome is None and (before_ts is None or ts < before_ts)
            ]
        return sorted(out, key=lambda p: (p.bar_ts, p.slot))

    def recent_outcomes(self, symbol: str, version: str, limit: int) -> list[tuple[float, float]]:
        validate_symbol(symbol)
        with self._lock:
            resolved = sorted(
                (p.bar_ts, p.value, outcome)
                for (sym, _ts, _slot), (p, outcome) in self._predictions.items()
                if sym == symbol and p.version == version and outcome is not None
            )
        return [(value, outcome) for _ts, value, outcome in resolved[-limit:]] if limit else []

    def commit(self, writes: Sequence[LogWrite]) -> None:
        for write in writes:
            validate_symbol(write.symbol)
        with self._lock:
            for w in writes:
                for p in w.predictions:  # an existing prediction is kept (as in SQLite)
                    self._predictions.setdefault((w.symbol, p.bar_ts, p.slot), (p, None))
                for r in w.resolutions:
                    for slot in ("champion", "shadow"):
                        key: tuple[str, int, Slot] = (w.symbol, r.bar_ts, slot)
                        held = self._predictions.get(key)
                        if held is not None and held[1] is None:
                            self._predictions[key] = (held[0], r.outcome)
            for w in writes:
                self._states[w.symbol] = w.state
