"""When a retrain would only repeat the symbol's last finished run: the pure decision."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from daemon.errors import SettingsError
from daemon.metrics import RETRAIN_SKIP_REASONS, Metrics
from daemon.settings import load_settings
from daemon.training.window import (
    DataWindow,
    FinishedWindows,
    Skip,
    SkipReason,
    judge,
    load_size,
)
from trainers.data import Bars
from trainers.metadata import DataRange
from trainers.repro import bars_sha256

WINDOW = 100


def _bars(ts: list[int] | np.ndarray, *, close: float = 10.0) -> Bars:
    t = np.asarray(ts, dtype=np.int64)
    price = np.full(len(t), close) + np.arange(len(t)) * 0.01
    return Bars(t, price.copy(), price + 1, price - 1, price.copy(), np.ones(len(t)))


def _series(n: int, *, start: int = 0) -> Bars:
    return _bars(np.arange(start, start + n) * 60)


def _concat(*parts: Bars) -> Bars:
    cols = ("ts", "open", "high", "low", "close", "volume")
    merged = {c: np.concatenate([getattr(p, c) for p in parts]) for c in cols}
    order = np.argsort(merged["ts"], kind="stable")
    return Bars(*(merged[c][order] for c in cols))


def _corrected(bars: Bars, i: int) -> Bars:
    close = bars.close.copy()
    close[i] *= 1.001
    return Bars(bars.ts, bars.open, np.maximum(bars.high, close), bars.low, close, bars.volume)


def _judge(stored: Bars, previous: DataWindow | None, min_new_bars: int = 0) -> Skip | None:
    """As the worker does: load the newest ``load_size`` bars of the store, then judge them."""
    loaded = stored.tail(load_size(WINDOW, previous, min_new_bars))
    return judge(loaded, WINDOW, previous, min_new_bars)


def _trained_on(stored: Bars) -> DataWindow:
    """The window a run on ``stored`` trains on (the newest WINDOW bars)."""
    return DataWindow.of(stored.tail(WINDOW))


def test_a_first_training_always_runs() -> None:
    """Without a finished run to compare with, nothing is dropped."""
    assert _judge(_series(80), None) is None
    assert _judge(_series(80), None, min_new_bars=50) is None


@pytest.mark.parametrize("n", [80, WINDOW, 250])
def test_the_very_bars_of_the_last_run_are_same_data(n: int) -> None:
    """Unchanged bars, window full or not, are dropped as same_data with no new bar."""
    stored = _series(n)
    skip = _judge(stored, _trained_on(stored))
    assert skip == Skip("same_data", _trained_on(stored), 0)


def test_a_corrected_bar_in_the_window_retrains() -> None:
    """Same count and range, one bar's values corrected: the hash differs, the job runs."""
    stored = _series(80)
    previous = _trained_on(stored)
    assert _judge(_corrected(stored, 40), previous) is None
    assert _judge(_corrected(stored, 79), previous, min_new_bars=10) is None


def test_one_new_bar_retrains_by_default() -> None:
    """With retrain_min_new_bars at 0 only identical windows are dropped."""
    previous = _trained_on(_series(WINDOW))
    assert _judge(_series(WINDOW + 1), previous) is None  # the window slid by one
    assert _judge(_series(81), _trained_on(_series(80))) is None  # the window grew by one


@pytest.mark.parametrize(("new", "dropped"), [(1, True), (9, True), (10, False), (30, False)])
def test_fewer_new_bars_than_the_minimum_are_dropped(new: int, dropped: bool) -> None:
    """min_new_bars=10: 9 new bars (the window slid by 9) are dropped, 10 train."""
    previous = _trained_on(_series(300))
    skip = _judge(_series(300 + new), previous, min_new_bars=10)
    if dropped:
        assert skip is not None and (skip.reason, skip.new_bars) == ("few_new_bars", new)
        assert skip.window == _trained_on(_series(300 + new))
    else:
        assert skip is None


def test_few_new_bars_in_a_window_not_yet_full() -> None:
    """The window grows instead of sliding: the count of new bars is the same rule."""
    previous = _trained_on(_series(60))
    skip = _judge(_series(65), previous, min_new_bars=10)
    assert skip is not None and (skip.reason, skip.new_bars) == ("few_new_bars", 5)


def test_a_corrected_bar_forces_a_retrain_whatever_the_new_bars() -> None:
    """A correction in the previous range, in the window or slid out of it, retrains."""
    stored = _series(300)
    previous = _trained_on(stored)
    grown = _series(303)
    assert _judge(_corrected(grown, 250), previous, min_new_bars=10) is None  # in the window
    assert _judge(_corrected(grown, 201), previous, min_new_bars=10) is None  # slid out
    assert _judge(_corrected(grown, 150), previous, min_new_bars=10) is not None  # never in it


def test_a_bar_filled_in_inside_the_previous_range_retrains() -> None:
    """A late bar with a ts inside the previous run's range changes its data: the job runs."""
    stored = _bars(np.arange(0, 200) * 120)  # every other minute
    previous = _trained_on(stored)
    filled = _concat(stored, _bars([199 * 120 - 60]))
    assert _judge(filled, previous, min_new_bars=10) is None
    assert _judge(filled, previous) is None


def test_a_range_the_load_does_not_reach_counts_as_changed() -> None:
    """Loaded without the extra ``min_new_bars``, the previous range is out of view: run."""
    previous = _trained_on(_series(300))
    loaded = _series(303).tail(WINDOW)  # too few: the first 3 bars of the range are missing
    assert judge(loaded, WINDOW, previous, min_new_bars=10) is None
    assert judge(_series(303).tail(WINDOW + 10), WINDOW, previous, min_new_bars=10) is not None


def test_older_bars_behind_a_full_window_change_nothing() -> None:
    """A late backfill of bars older than a full window leaves the window as it was."""
    stored = _series(WINDOW, start=1000)
    with_history = _concat(_series(500), stored)
    skip = _judge(with_history, _trained_on(stored))
    assert skip is not None and skip.reason == "same_data"


def test_older_bars_in_a_window_not_yet_full_are_new_bars() -> None:
    """Older bars that enter a window not yet full are data the last run never saw."""
    stored = _series(60, start=1000)
    previous = _trained_on(stored)
    assert _judge(_concat(_series(5, start=900), stored), previous) is None
    skip = _judge(_concat(_series(5, start=900), stored), previous, min_new_bars=10)
    assert skip is not None and (skip.reason, skip.new_bars) == ("few_new_bars", 5)
    assert _judge(_concat(_series(20, start=900), stored), previous, min_new_bars=10) is None


def test_load_size_adds_the_minimum_only_when_there_is_a_run_to_compare_with() -> None:
    previous = _trained_on(_series(10))
    assert load_size(WINDOW, None, 50) == WINDOW
    assert load_size(WINDOW, previous, 0) == WINDOW
    assert load_size(WINDOW, previous, 50) == WINDOW + 50


def test_a_runs_recorded_data_range_is_its_window() -> None:
    """The metadata's data range (n_bars, first/last ts, bars_sha256) reads as the same window."""
    bars = _series(80)
    data = DataRange(n_bars=80, first_ts=0, last_ts=79 * 60, n_rows=60, sha256=bars_sha256(bars))
    assert DataWindow.of_run(data) == DataWindow.of(bars)
    assert DataWindow.of(Bars.empty()) == DataWindow(0, None, None, bars_sha256(Bars.empty()))


def test_finished_windows_keeps_the_last_per_symbol() -> None:
    windows = FinishedWindows()
    first, second = _trained_on(_series(80)), _trained_on(_series(90))
    assert windows.get("AAA") is None
    windows.record("AAA", first)
    windows.record("AAA", second)
    windows.record("BBB", first)
    assert (windows.get("AAA"), windows.get("BBB")) == (second, first)


def test_skip_reasons_are_exported_at_zero_for_each_symbol() -> None:
    """ctd_retrains_skipped_total has a series per symbol and reason from the symbol's start."""
    assert set(RETRAIN_SKIP_REASONS) == set(get_args(SkipReason))
    metrics = Metrics(CollectorRegistry(), version="t")
    metrics.init_symbol("AAA")
    for reason in RETRAIN_SKIP_REASONS:
        labels = {"symbol": "AAA", "reason": reason}
        assert metrics.registry.get_sample_value("ctd_retrains_skipped_total", labels) == 0.0


def test_retrain_min_new_bars_is_a_setting_bounded_by_retrain_every_bars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CTD_RETRAIN_MIN_NEW_BARS sets it (default 0); above retrain_every_bars it is refused,
    named: every retrain the bar count triggers would be dropped."""
    assert load_settings().retrain_min_new_bars == 0
    monkeypatch.setenv("CTD_RETRAIN_MIN_NEW_BARS", "40")
    assert load_settings().retrain_min_new_bars == 40
    with pytest.raises(SettingsError, match="retrain_min_new_bars"):
        load_settings(retrain_every_bars=39)
    with pytest.raises(SettingsError, match="CTD_RETRAIN_MIN_NEW_BARS"):
        load_settings(retrain_min_new_bars=-1)
