"""Live monitors: accuracy decay, staleness and the per-symbol retrain cooldown."""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from monitors.live import Cooldown, DecayMonitor, StalenessMonitor


def outcomes(seed: int, n: int, accuracy: float) -> list[bool]:
    rng = np.random.default_rng(seed)
    return [bool(x) for x in rng.random(n) < accuracy]


def first_fire(monitor: DecayMonitor, stream: list[bool]) -> int | None:
    for i, correct in enumerate(stream):
        report = monitor.update(correct)
        if report is not None and report.decayed:
            return i
    return None


# --- decay ---------------------------------------------------------------------------------


def test_decay_silent_until_min_samples():
    """update returns None before min_samples outcomes, then a report each time."""
    monitor = DecayMonitor(0.6, window=20, min_samples=10)
    reports = [monitor.update(True) for _ in range(12)]
    assert reports[:9] == [None] * 9
    assert reports[9] is not None and reports[9].n_samples == 10
    assert reports[9].live_accuracy == 1.0 and not reports[9].decayed


def test_decay_window_forgets_old_outcomes():
    """Only the last ``window`` outcomes count: counts match the tail of the stream."""
    monitor = DecayMonitor(0.5, window=50, min_samples=50)
    stream = outcomes(0, 537, 0.5)
    for correct in stream:
        report = monitor.update(correct)
    assert report is not None
    assert (report.n_samples, report.n_correct) == (50, sum(stream[-50:]))


def test_decay_level_boundary_fires_at_equality():
    """A p-value exactly at alpha / window fires; a hair above it does not."""
    # Ten wrong of ten at expected 0.5: p = 0.5**10 = 1/1024 exactly; level = alpha / 10.
    at = DecayMonitor(0.5, window=10, min_samples=10, alpha=10 / 1024)
    below = DecayMonitor(0.5, window=10, min_samples=10, alpha=math.nextafter(10 / 1024, 0))
    for _ in range(10):
        at_report, below_report = at.update(False), below.update(False)
    assert at_report is not None and at_report.p_value == at_report.level == 1 / 1024
    assert at_report.decayed
    assert below_report is not None and not below_report.decayed


@pytest.mark.parametrize("seed", range(5))
def test_unchanged_process_never_fires(seed):
    """5,000 outcomes at the expected accuracy (0.58) never fire at the defaults."""
    assert first_fire(DecayMonitor(0.58), outcomes(seed, 5000, 0.58)) is None


@pytest.mark.parametrize("seed", range(5))
def test_ten_point_drop_fires(seed):
    """After 1,000 healthy outcomes, accuracy 10 points lower fires within 1,000 more."""
    stream = outcomes(seed, 1000, 0.58) + outcomes(100 + seed, 1000, 0.48)
    fired = first_fire(DecayMonitor(0.58), stream)
    assert fired is not None and 1000 <= fired < 2000


@pytest.mark.parametrize("seed", range(5))
def test_flipped_signal_fires_fast(seed):
    """A flipped signal (accuracy 0.63 -> 0.37) fires within 300 outcomes (one window)."""
    stream = outcomes(seed, 1000, 0.63) + outcomes(100 + seed, 1000, 0.37)
    fired = first_fire(DecayMonitor(0.63), stream)
    assert fired is not None and 1000 <= fired < 1300


def test_tolerance_lowers_the_bar():
    """With tolerance the test is against expected - tolerance; at or below 0 it never fires."""
    stream = [False] * 300
    assert first_fire(DecayMonitor(0.6, tolerance=0.05), list(stream)) is not None
    assert first_fire(DecayMonitor(0.05, tolerance=0.05), list(stream)) is None
    monitor = DecayMonitor(0.6, tolerance=0.05, min_samples=100)
    for correct in outcomes(1, 100, 0.55):
        report = monitor.update(correct)
    assert report is not None and report.tolerance == 0.05


def test_decay_report_is_frozen_and_json_ready():
    """A decay report cannot be mutated and serialises to JSON."""
    monitor = DecayMonitor(0.6, window=10, min_samples=1)
    report = monitor.update(True)
    assert report is not None
    with pytest.raises(FrozenInstanceError):
        report.decayed = True  # type: ignore[misc]
    assert json.loads(json.dumps(report.to_dict()))["n_correct"] == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"expected_accuracy": 1.2}, "expected_accuracy"),
        ({"expected_accuracy": math.nan}, "expected_accuracy"),
        ({"window": 0}, "window"),
        ({"min_samples": 400}, "min_samples"),
        ({"alpha": 0.0}, "alpha"),
        ({"tolerance": -0.1}, "tolerance"),
    ],
)
def test_decay_rejects_bad_settings(kwargs, match):
    """Out-of-range settings raise ValueError naming the setting."""
    with pytest.raises(ValueError, match=match):
        DecayMonitor(**{"expected_accuracy": 0.6, **kwargs})


# --- staleness -------------------------------------------------------------------------------


def test_staleness_boundary_is_strict():
    """A model exactly at a limit is fresh; one past it is stale with the reason."""
    monitor = StalenessMonitor(max_age_seconds=3600, max_bars_since_training=500)
    fresh = monitor.check(3600.0, 500)
    assert not fresh.stale and fresh.reason == "fresh"
    old = monitor.check(3600.5, 500)
    assert old.stale and "age" in old.reason and "bars" not in old.reason
    both = monitor.check(7200.0, 501)
    assert both.stale and "age" in both.reason and "501 bars" in both.reason
    assert json.loads(json.dumps(both.to_dict()))["stale"] is True


def test_staleness_limits_can_be_off():
    """A limit set to None never makes a model stale."""
    assert not StalenessMonitor().check(1e9, 10**9).stale
    assert StalenessMonitor(max_bars_since_training=10).check(1e9, 11).stale


@pytest.mark.parametrize(("age", "bars"), [(-1.0, 0), (math.nan, 0), (0.0, -1)])
def test_staleness_rejects_bad_input(age, bars):
    """A negative or non-finite age, or a negative bar count, raises ValueError."""
    with pytest.raises(ValueError, match="must be"):
        StalenessMonitor(60).check(age, bars)


# --- cooldown --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cooldown_allows_first_then_waits():
    """The first trigger passes; the next passes only once ``seconds`` have gone by (inclusive)."""
    clock = FakeClock()
    cooldown = Cooldown(600, clock)
    assert cooldown.remaining() == 0.0 and cooldown.last_trigger is None
    assert cooldown.allow()
    clock.now += 599.0
    assert not cooldown.allow()
    assert cooldown.remaining() == pytest.approx(1.0)
    clock.now += 1.0
    assert cooldown.allow()
    assert cooldown.last_trigger == 1600.0


def test_cooldown_prevents_a_retrain_storm():
    """Drift firing every second for an hour yields one retrain per 10-minute cooldown."""
    clock = FakeClock()
    cooldown = Cooldown(600, clock)
    allowed = []
    for second in range(3600):
        clock.now = 1000.0 + second
        if cooldown.allow():
            allowed.append(second)
    assert allowed == [0, 600, 1200, 1800, 2400, 3000]


def test_cooldown_rejects_bad_seconds():
    """A negative or non-finite cooldown raises ValueError."""
    for bad in (-1.0, math.inf):
        with pytest.raises(ValueError, match="cooldown seconds"):
            Cooldown(bad)
