"""Every few seconds, the running shadow trials of the symbols this daemon owns are saved to
the registry (``deploy.handoff``), so the daemon that takes a symbol over continues its
trial. A checkpoint is written only when the trial moved since the last one."""

from __future__ import annotations

import threading

from daemon.fleet.ownership import Ownership
from daemon.logs import get_logger
from daemon.loop import Loop
from daemon.metrics import Metrics
from deploy.errors import FencedError, RegistryError
from deploy.handoff import take_checkpoint
from deploy.live import LiveScorer
from deploy.registry import Registry
from deploy.trial import PredictionLog

_log = get_logger(component="checkpoints")


class Checkpointer(Loop):
    """Saves trial checkpoints every ``interval`` seconds and on demand (``save_all``)."""

    thread_name = "ctd-checkpoints"

    def __init__(
        self,
        *,
        interval: float,
        scorer: LiveScorer,
        log: PredictionLog,
        registry: Registry,
        ownership: Ownership,
        metrics: Metrics,
    ) -> None:
        super().__init__()
        self._interval = interval
        self._scorer, self._log, self._registry = scorer, log, registry
        self._ownership, self._metrics = ownership, metrics
        self._saved: dict[str, int] = {}
        self._guard = threading.Lock()
        self._soon = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._soon.wait(self._interval)
            self._soon.clear()
            if not self._stop.is_set():
                self.save_all()

    def save_soon(self) -> None:
        """Start a round now on the checkpoint thread, without waiting for it (a rebalance
        callback must not block the consumer's network thread on object-store writes)."""
        self._soon.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._soon.set()
        super().stop(timeout)

    def save_all(self) -> int:
        """Checkpoint every owned symbol whose trial moved; return how many were written."""
        with self._guard:
            written = 0
            # Positions, not status(): building 1,000 symbols' evidence held the scorer's
            # lock (and the live path) every round; unmoved symbols cost no log read.
            for symbol, last_ts in self._scorer.trial_positions().items():
                if last_ts == self._saved.get(symbol) or not self._ownership.owns(symbol):
                    continue
                try:
                    written += self._save(symbol)
                except FencedError as exc:
                    self._metrics.registry_fenced.labels(symbol).inc()
                    _log.warning("checkpoint_fenced", symbol=symbol, error=str(exc))
                    self._scorer.forget(symbol)
                except (RegistryError, OSError) as exc:  # the next round tries again
                    _log.error("checkpoint_failed", symbol=symbol, error=str(exc))
            return written

    def _save(self, symbol: str) -> int:
        checkpoint = take_checkpoint(self._log, symbol, self._scorer.horizon)
        if checkpoint is None or checkpoint.state.last_ts == self._saved.get(symbol):
            return 0
        self._registry.save_trial(symbol, checkpoint.to_dict())
        self._saved[symbol] = checkpoint.state.last_ts or 0
        self._metrics.trial_checkpoints.inc()
        return 1
