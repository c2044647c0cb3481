"""The live-monitor extension point: one protocol for everything that watches a serving champion.

A ``LiveMonitor`` sees every live bar after the champion's training data, in
time order, as a ``LiveObservation`` (the bar's feature row, and whether the
champion's prediction of the previous bar came true), and is checked on a
schedule with the champion's age. Either may return a ``LiveAlarm``: the daemon
then asks for a retrain (through a per-symbol cooldown). ``readings`` are its
current measurements, exported as gauges.

The adapters here put the pure monitors of ``monitors.drift`` and
``monitors.live`` behind the protocol; the daemon builds one of each per
champion from a name table (``daemon.live.watch.MONITORS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from monitors.drift import DriftMonitor
from monitors.live import DecayMonitor, DecayReport, StalenessMonitor


@dataclass(frozen=True, slots=True)
class LiveObservation:
    """One live bar of a symbol, as its champion saw it.

    ``features``: the bar's feature row (None when there was too little history
    to compute it). ``champion_correct``: whether the champion's prediction of
    the previous bar was right, now that this bar resolved it (None when it made none).
    """

    ts: int
    features: npt.NDArray[np.float64] | None = None
    champion_correct: bool | None = None


@dataclass(frozen=True, slots=True)
class LiveAlarm:
    """A monitor's request for a retrain, and why (one line for the log and the metric)."""

    kind: str
    reason: str


class LiveMonitor(Protocol):
    """Watches one champion of one symbol; never raises for the data it is given."""

    kind: str

    def observe(self, obs: LiveObservation) -> LiveAlarm | None:
        """One new bar after the champion's training data."""
        ...

    def check(self, age_seconds: float) -> LiveAlarm | None:
        """The scheduled check, with the champion's age."""
        ...

    def readings(self) -> Mapping[str, float]:
        """Current measurements by name (empty until there are any)."""
        ...


class DriftWatch:
    """Feature drift (PSI) of live rows against the training distribution."""

    kind = "drift"

    def __init__(self, monitor: DriftMonitor) -> None:
        self._monitor = monitor

    def observe(self, obs: LiveObservation) -> LiveAlarm | None:
        row = obs.features
        if row is None or not np.isfinite(row).all():
            return None
        drifted = self._monitor.add(row)
        if not drifted:
            return None
        report = self._monitor.report()
        return LiveAlarm(
            self.kind,
            f"PSI above {report.threshold} on {len(report.drifted_features)} features "
            f"(worst {report.worst_feature} {report.max_psi:.2f})",
        )

    def check(self, age_seconds: float) -> LiveAlarm | None:
        return None

    def readings(self) -> Mapping[str, float]:
        return self._monitor.psi()


class DecayWatch:
    """The champion's rolling live accuracy against the test accuracy it was chosen on."""

    kind = "decay"

    def __init__(self, monitor: DecayMonitor) -> None:
        self._monitor = monitor
        self._report: DecayReport | None = None

    def observe(self, obs: LiveObservation) -> LiveAlarm | None:
        if obs.champion_correct is None:
            return None
        report = self._monitor.update(obs.champion_correct)
        if report is None:
            return None
        self._report = report
        if not report.decayed:
            return None
        return LiveAlarm(
            self.kind,
            f"live accuracy {report.live_accuracy:.3f} significantly below "
            f"{report.expected_accuracy:.3f} (p={report.p_value:.2g}, n={report.n_samples})",
        )

    def check(self, age_seconds: float) -> LiveAlarm | None:
        return None

    def readings(self) -> Mapping[str, float]:
        r = self._report
        return {} if r is None else {"live_accuracy": r.live_accuracy, "p_value": r.p_value}


class StalenessWatch:
    """The champion's age and the bars seen since its training data, against their limits."""

    kind = "staleness"

    def __init__(self, monitor: StalenessMonitor) -> None:
        self._monitor = monitor
        self._bars = 0

    def observe(self, obs: LiveObservation) -> LiveAlarm | None:
        self._bars += 1
        return None

    def check(self, age_seconds: float) -> LiveAlarm | None:
        report = self._monitor.check(max(age_seconds, 0.0), self._bars)
        return LiveAlarm(self.kind, report.reason) if report.stale else None

    def readings(self) -> Mapping[str, float]:
        return {"bars_since_training": float(self._bars)}
