"""Live monitors of every champion: each watches its bars and may ask for a retrain.

Monitors come from one name table (``MONITORS``: drift, decay, staleness),
built per champion from settings and the champion's metadata, and rebuilt when
a symbol's champion changes. They are fed from the live path's updates (each
new bar's feature row and the champion's resolved outcome, never re-read from
the stores) and checked on a schedule. An alarm requests a retrain through one
per-symbol cooldown, so a drifting feed cannot cause a retrain storm.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from daemon.actions import Retrain
from daemon.logs import get_logger
from daemon.metrics import Metrics, MonitorReading
from daemon.settings import Settings
from deploy.live_state import LiveUpdate
from deploy.quarantine import STATE_ERRORS, Quarantine
from deploy.registry import Registry
from monitors.drift import DriftMonitor
from monitors.live import Cooldown, DecayMonitor, StalenessMonitor
from monitors.watch import DecayWatch, DriftWatch, LiveAlarm, LiveMonitor, StalenessWatch
from trainers.metadata import ModelMetadata

_log = get_logger(component="watch")

MonitorFactory = Callable[[Settings, ModelMetadata], LiveMonitor | None]


def _drift(s: Settings, meta: ModelMetadata) -> LiveMonitor:
    monitor = DriftMonitor(
        meta.feature_reference,
        window=s.drift_window,
        psi_threshold=s.drift_psi_threshold,
        min_samples=min(s.drift_window, 200),
    )
    return DriftWatch(monitor)


def _decay(s: Settings, meta: ModelMetadata) -> LiveMonitor | None:
    # Live outcomes are hits (deploy.live): the test rate of the same kind is the promise.
    expected = meta.test_hit_rate
    if expected is None:
        return None
    monitor = DecayMonitor(
        expected, window=s.decay_window, alpha=s.decay_alpha, tolerance=s.decay_tolerance
    )
    return DecayWatch(monitor)


def _staleness(s: Settings, meta: ModelMetadata) -> LiveMonitor:
    monitor = StalenessMonitor(s.stale_max_age_seconds, s.stale_max_bars_since_training)
    return StalenessWatch(monitor)


MONITORS: Final[Mapping[str, MonitorFactory]] = {
    "drift": _drift,
    "decay": _decay,
    "staleness": _staleness,
}
"""Live monitor kind -> factory (None when the champion lacks what the monitor needs)."""


@dataclass(slots=True)
class _Watched:
    champion: str
    trained_until: int
    created_ts: float
    monitors: tuple[LiveMonitor, ...]


class LiveWatch:
    """Per-symbol live monitors of the champion; alarms request retrains (cooldown-limited)."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry,
        metrics: Metrics,
        trigger: Retrain,
        served: Callable[[], Iterable[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.settings = settings
        self.quarantine = quarantine if quarantine is not None else Quarantine()
        # The symbols whose champions the scheduled jobs judge: in a fleet, this daemon's own.
        self._served = served if served is not None else registry.symbols
        self.registry = registry
        self.metrics = metrics
        self._trigger = trigger
        self._clock = clock
        self._watched: dict[str, _Watched] = {}
        self._cooldowns: dict[str, Cooldown] = {}
        self._lock = threading.Lock()

    def on_updates(self, updates: Sequence[LiveUpdate]) -> None:
        """Feed each symbol's new bars after its champion's training data to its monitors."""
        for u in updates:
            alarms: list[LiveAlarm] = []
            with self._lock:
                watched = self._current(u.symbol, u.champion)
                if watched is None:
                    continue
                for obs in u.observations:
                    if obs.ts <= watched.trained_until:
                        continue
                    for monitor in watched.monitors:
                        alarm = monitor.observe(obs)
                        if alarm is not None:
                            alarms.append(alarm)
            for alarm in alarms:
                self._fire(u.symbol, alarm)

    def check(self) -> None:
        """Scheduled: the monitors of every champion this daemon serves judge its age."""
        now = time.time()
        for symbol in sorted(self._served()):
            alarms: list[LiveAlarm] = []
            with self._lock:
                watched = self._current(symbol, self._champion(symbol))
                if watched is None:
                    continue
                for monitor in watched.monitors:
                    alarm = monitor.check(max(now - watched.created_ts, 0.0))
                    if alarm is not None:
                        alarms.append(alarm)
            for alarm in alarms:
                self._fire(symbol, alarm)

    def retrain_all(self) -> None:
        """Scheduled job (cron setting): retrain every symbol this daemon serves that has a
        champion (in a fleet, each daemon its own)."""
        for symbol in sorted(self._served()):
            if self._champion(symbol) is not None and self._trigger(symbol, "schedule"):
                self.metrics.live_monitor_triggers.labels(symbol, "schedule").inc()

    def forget(self, symbol: str) -> None:
        """Stop watching ``symbol`` (handed over to another daemon); its cooldown stays."""
        with self._lock:
            self._watched.pop(symbol, None)

    def readings(self) -> Iterable[MonitorReading]:
        """Every monitor's readings, for the metrics collector."""
        with self._lock:
            watched = list(self._watched.items())
        for symbol, w in watched:
            for monitor in w.monitors:
                for name, value in monitor.readings().items():
                    yield symbol, monitor.kind, name, value

    def _fire(self, symbol: str, alarm: LiveAlarm) -> None:
        where = {"symbol": symbol, "kind": alarm.kind, "reason": alarm.reason}
        if not self.settings.live_monitor_retrain:
            _log.info("live_monitor_fired_report_only", **where)
            return
        cooldown = self._cooldowns.setdefault(
            symbol, Cooldown(self.settings.retrain_cooldown_seconds, self._clock)
        )
        if not cooldown.allow():
            return
        _log.warning("live_monitor_fired", **where)
        self.metrics.live_monitor_triggers.labels(symbol, alarm.kind).inc()
        self._trigger(symbol, alarm.kind)

    def _champion(self, symbol: str) -> str | None:
        """The symbol's champion; None when it has none or is quarantined (an unreadable
        file quarantines it here)."""
        if symbol in self.quarantine:
            return None
        try:
            return self.registry.slots(symbol).champion
        except STATE_ERRORS as exc:
            self.quarantine.add(symbol, exc)
            return None

    def _current(self, symbol: str, champion: str | None) -> _Watched | None:
        """Monitors of the symbol's present champion, rebuilt when the champion changed."""
        if champion is None or symbol in self.quarantine:
            self._watched.pop(symbol, None)
            return None
        watched = self._watched.get(symbol)
        if watched is None or watched.champion != champion:
            try:
                meta = self.registry.metadata(symbol, champion)
            except STATE_ERRORS as exc:
                self.quarantine.add(symbol, exc)
                self._watched.pop(symbol, None)
                return None
            built = (factory(self.settings, meta) for factory in MONITORS.values())
            watched = _Watched(
                champion,
                meta.trained_until or 0,
                meta.created_ts,
                tuple(m for m in built if m is not None),
            )
            self._watched[symbol] = watched
            for kind in (*MONITORS, "schedule"):  # series at 0 from the first champion on
                self.metrics.live_monitor_triggers.labels(symbol, kind)
            _log.info(
                "live_monitors_armed",
                symbol=symbol,
                version=champion,
                monitors=[m.kind for m in watched.monitors],
            )
        return watched
