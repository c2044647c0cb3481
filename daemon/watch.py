"""Live monitors of every champion: feature drift, accuracy decay, staleness.

Each can request a retrain of its symbol, through one per-symbol cooldown so
that a drifting feed cannot cause a retrain storm. Monitors are rebuilt
whenever a symbol's champion changes. Feeds come from the ingest path (new
bars, resolved predictions); staleness is checked on a schedule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from daemon.events import BarRecord
from daemon.logs import get_logger
from daemon.metrics import Metrics
from daemon.predictions import PredictionStore
from daemon.settings import Settings
from daemon.store import BarStore
from deploy.registry import Registry
from monitors.drift import DriftMonitor, FeatureReference
from monitors.live import Cooldown, DecayMonitor, StalenessMonitor
from trainers.features import FEATURE_SPEC, compute_features

_log = get_logger(component="watch")

Trigger = Callable[[str, str], bool]


@dataclass(slots=True)
class _Watched:
    champion: str
    trained_bars_last_ts: int
    created_at: float
    drift: DriftMonitor | None
    decay: DecayMonitor | None
    bars_since_training: int = 0


class LiveWatch:
    """Per-symbol drift / decay / staleness monitors that trigger retrains (cooldown-limited)."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry,
        store: BarStore,
        predictions: PredictionStore,
        metrics: Metrics,
        trigger: Trigger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.predictions = predictions
        self.metrics = metrics
        self._trigger = trigger
        self._clock = clock
        self._watched: dict[str, _Watched] = {}
        self._cooldowns: dict[str, Cooldown] = {}
        self._staleness = StalenessMonitor(
            settings.stale_max_age_seconds, settings.stale_max_bars_since_training
        )
        self._lock = threading.Lock()

    # -- feeds ---------------------------------------------------------------------------
    def on_batch(
        self, bars_by_symbol: Mapping[str, Sequence[BarRecord]], resolved: Mapping[str, int]
    ) -> None:
        """Feed the batch's new bars (drift) and newly resolved champion outcomes (decay)."""
        for symbol, records in bars_by_symbol.items():
            with self._lock:
                watched = self._current(symbol)
                if watched is None:
                    continue
                fresh = [r for r in records if r.ts > watched.trained_bars_last_ts]
                watched.bars_since_training += len(fresh)
                if watched.drift is not None and fresh:
                    self._feed_drift(symbol, watched, len(fresh))
                n_resolved = resolved.get(symbol, 0)
                if watched.decay is not None and n_resolved:
                    self._feed_decay(symbol, watched, n_resolved)

    def _feed_drift(self, symbol: str, watched: _Watched, n_new: int) -> None:
        assert watched.drift is not None
        bars = self.store.load(symbol, last_n=FEATURE_SPEC.lookback + n_new - 1)
        rows = compute_features(bars)[-n_new:]
        report = None
        for row in rows[np.all(np.isfinite(rows), axis=1)]:
            report = watched.drift.update(row)
            if report is not None and report.drifted:
                worst = f"worst {report.worst_feature} {report.max_psi:.2f}"
                self._fire(
                    symbol,
                    "drift",
                    f"PSI above {report.threshold} on {len(report.drifted_features)} "
                    f"features ({worst})",
                )
        if report is not None:
            for name, value in report.psi.items():
                self.metrics.feature_psi.labels(symbol, name).set(value)

    def _feed_decay(self, symbol: str, watched: _Watched, n_resolved: int) -> None:
        assert watched.decay is not None
        outcomes = self.predictions.recent_outcomes(symbol, watched.champion, n_resolved)
        for proba, label in outcomes:
            report = watched.decay.update((proba >= 0.5) == (label == 1))
            if report is not None and report.decayed:
                self._fire(
                    symbol,
                    "decay",
                    f"live accuracy {report.live_accuracy:.3f} significantly below "
                    f"{report.expected_accuracy:.3f} "
                    f"(p={report.p_value:.2g}, n={report.n_samples})",
                )

    # -- scheduled -----------------------------------------------------------------------
    def check_staleness(self) -> None:
        """Scheduled job: every champion older / further behind than its limits is retrained."""
        for symbol in self.registry.symbols():
            with self._lock:
                watched = self._current(symbol)
                if watched is None:
                    continue
                age = max(time.time() - watched.created_at, 0.0)
                report = self._staleness.check(age, watched.bars_since_training)
            if report.stale:
                self._fire(symbol, "staleness", report.reason)

    def retrain_all(self) -> None:
        """Scheduled job (cron setting): retrain every symbol that has a champion."""
        for symbol in self.registry.symbols():
            if self.registry.slots(symbol).champion is not None and self._trigger(
                symbol, "schedule"
            ):
                self.metrics.live_monitor_triggers.labels(symbol, "schedule").inc()

    # -- helpers -------------------------------------------------------------------------
    def _fire(self, symbol: str, kind: str, reason: str) -> None:
        if not self.settings.live_monitor_retrain:
            _log.info("live_monitor_fired_report_only", symbol=symbol, kind=kind, reason=reason)
            return
        cooldown = self._cooldowns.setdefault(
            symbol, Cooldown(self.settings.retrain_cooldown_seconds, self._clock)
        )
        if not cooldown.allow():
            return
        _log.warning("live_monitor_fired", symbol=symbol, kind=kind, reason=reason)
        self.metrics.live_monitor_triggers.labels(symbol, kind).inc()
        self._trigger(symbol, kind)

    def _current(self, symbol: str) -> _Watched | None:
        """Monitors for the symbol's present champion, rebuilt when the champion changed."""
        champion = self.registry.slots(symbol).champion
        if champion is None:
            self._watched.pop(symbol, None)
            return None
        watched = self._watched.get(symbol)
        if watched is None or watched.champion != champion:
            watched = self._build(symbol, champion, self.registry.metadata(symbol, champion))
            self._watched[symbol] = watched
        return watched

    def _build(self, symbol: str, version: str, meta: Mapping[str, Any]) -> _Watched:
        s = self.settings
        drift = None
        reference = meta.get("feature_reference")
        if reference:
            drift = DriftMonitor(
                FeatureReference.from_dict(reference),
                window=s.drift_window,
                psi_threshold=s.drift_psi_threshold,
                min_samples=min(s.drift_window, 200),
            )
        test_accuracy = ((meta.get("metrics") or {}).get("test") or {}).get("accuracy")
        decay = None
        if isinstance(test_accuracy, float):
            decay = DecayMonitor(
                test_accuracy,
                window=s.decay_window,
                alpha=s.decay_alpha,
                tolerance=s.decay_tolerance,
            )
        created = datetime.fromisoformat(str(meta.get("created_at")).replace("Z", "+00:00"))
        _log.info("live_monitors_armed", symbol=symbol, version=version, drift=drift is not None)
        return _Watched(
            champion=version,
            trained_bars_last_ts=int((meta.get("data") or {}).get("last_ts") or 0),
            created_at=created.timestamp(),
            drift=drift,
            decay=decay,
        )
