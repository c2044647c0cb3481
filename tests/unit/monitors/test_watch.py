"""The live-monitor protocol's adapters: drift, decay and staleness alarms from observations."""

from __future__ import annotations

import numpy as np

from monitors.drift import DriftMonitor, FeatureReference
from monitors.live import DecayMonitor, StalenessMonitor
from monitors.watch import DecayWatch, DriftWatch, LiveObservation, StalenessWatch

NAMES = ("a", "b", "c")


def _reference(rng: np.random.Generator) -> FeatureReference:
    return FeatureReference.from_matrix(rng.standard_normal((2000, 3)), NAMES)


def test_drift_alarms_on_shifted_rows_and_reports_psi_per_feature() -> None:
    """Rows like the training data raise nothing; shifted rows raise one drift alarm."""
    rng = np.random.default_rng(0)
    watch = DriftWatch(DriftMonitor(_reference(rng), window=200, min_samples=200))
    alarms = [watch.observe(LiveObservation(i, rng.standard_normal(3))) for i in range(400)]
    assert not any(alarms)
    assert set(watch.readings()) == set(NAMES)
    shifted = [watch.observe(LiveObservation(i, rng.standard_normal(3) + 2.0)) for i in range(200)]
    fired = [a for a in shifted if a is not None]
    assert fired and fired[0].kind == "drift" and "PSI above" in fired[0].reason
    assert max(watch.readings().values()) > 0.35


def test_drift_skips_bars_without_a_finite_feature_row() -> None:
    watch = DriftWatch(
        DriftMonitor(_reference(np.random.default_rng(1)), window=10, min_samples=10)
    )
    assert watch.observe(LiveObservation(1, None)) is None
    assert watch.observe(LiveObservation(2, np.array([np.nan, 0.0, 0.0]))) is None
    assert watch.readings() == {}


def test_decay_alarms_when_live_accuracy_falls_well_below_the_promise() -> None:
    watch = DecayWatch(DecayMonitor(0.65, window=200, min_samples=100, alpha=0.01))
    right = [watch.observe(LiveObservation(i, None, i % 3 != 0)) for i in range(150)]
    assert not any(right)
    wrong = [watch.observe(LiveObservation(i, None, i % 4 == 0)) for i in range(300)]
    fired = [a for a in wrong if a is not None]
    assert fired and fired[0].kind == "decay"
    assert watch.readings()["live_accuracy"] < 0.5
    assert watch.observe(LiveObservation(9, None, None)) is None  # nothing resolved: no update


def test_staleness_counts_bars_and_judges_age_on_the_schedule() -> None:
    watch = StalenessWatch(StalenessMonitor(max_age_seconds=100, max_bars_since_training=3))
    for i in range(3):
        assert watch.observe(LiveObservation(i)) is None
    assert watch.check(50) is None
    watch.observe(LiveObservation(4))
    alarm = watch.check(50)
    assert alarm is not None and "4 bars since training exceed 3" in alarm.reason
    assert watch.readings() == {"bars_since_training": 4.0}
    assert StalenessWatch(StalenessMonitor(max_age_seconds=100)).check(101) is not None
