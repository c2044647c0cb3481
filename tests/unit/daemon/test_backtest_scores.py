"""Scores of a served signal (``daemon.backtest.scores``): pure arithmetic, checked by hand
and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daemon.backtest.scores import pnl, rolling_accuracy, score, signals, wilson

KW = {"long_above": 0.55, "short_below": 0.45, "cost_bps": 0.0, "periods_per_year": 252.0}


def test_wilson_interval_matches_the_textbook_value() -> None:
    ci = wilson(60, 100)  # p = 0.6, n = 100: 0.502 .. 0.691 (Wilson, 95%)
    assert ci is not None
    assert (round(ci.low, 3), round(ci.high, 3)) == (0.502, 0.691)
    assert wilson(0, 0) is None


def test_pnl_charges_the_cost_on_every_unit_of_turnover() -> None:
    position = np.array([1.0, 1.0, -1.0, 0.0])
    ret = np.array([0.01, -0.02, 0.03, 0.05])
    got = pnl(position, ret, cost_bps=10.0)  # 10 bp per unit: entering 1, flip 2, exit 1
    assert np.allclose(got, [0.01 - 0.001, -0.02, -0.03 - 0.002, -0.001])


def test_a_perfect_predictor_scores_perfectly_and_a_flat_one_has_no_edge() -> None:
    rng = np.random.default_rng(1)
    ret = rng.normal(0, 0.01, 2000)
    perfect = score(np.where(ret > 0, 0.9, 0.1), ret, **KW)
    assert perfect.accuracy == 1.0 and perfect.hit_rate == 1.0
    assert perfect.max_drawdown == 0.0
    assert perfect.sharpe is not None and perfect.sharpe > 10
    flat = score(np.full(2000, 0.5), ret, **KW)
    assert (flat.sharpe, flat.turnover, flat.cumulative_return) == (0.0, 0.0, 0.0)
    assert flat.sharpe_ci is not None and flat.sharpe_ci.covers(0.0)
    silent = score(np.full(2000, np.nan), ret, **KW)
    assert (silent.predicted_bars, silent.accuracy, silent.accuracy_ci) == (0, None, None)


def test_max_drawdown_is_the_worst_fall_from_a_peak() -> None:
    ret = np.array([0.10, -0.50, 0.20, 0.0])
    s = score(np.full(4, 0.9), ret, **KW)  # long all along: 1.1, 0.55, 0.66, 0.66
    assert s.max_drawdown == pytest.approx(0.5)
    assert s.cumulative_return == pytest.approx(0.66 - 1.0)


def test_on_random_signals_the_intervals_cover_no_edge_at_their_level() -> None:
    """400 simulated coin-flip predictors over i.i.d. returns (seeded): the 95% intervals of
    accuracy and Sharpe cover 0.5 and 0 in about 95% of them (binomial bound, 4 sd)."""
    rng = np.random.default_rng(7)
    trials, acc_cover, sharpe_cover = 400, 0, 0
    for _ in range(trials):
        ret = rng.normal(0, 0.01, 1000)
        s = score(rng.uniform(0, 1, 1000), ret, **KW)
        assert s.accuracy_ci is not None and s.sharpe_ci is not None
        acc_cover += s.accuracy_ci.covers(0.5)
        sharpe_cover += s.sharpe_ci.covers(0.0)
    bound = 4 * math.sqrt(trials * 0.95 * 0.05)
    assert abs(acc_cover - 0.95 * trials) <= bound, acc_cover
    assert abs(sharpe_cover - 0.95 * trials) <= bound, sharpe_cover


def test_signals_and_rolling_accuracy() -> None:
    p = np.array([0.9, 0.5, 0.1, np.nan, 0.9, 0.9])
    assert signals(p, 0.55, 0.45).tolist() == [1.0, 0.0, -1.0, 0.0, 1.0, 1.0]
    ret = np.array([0.01, -0.01, 0.01, 0.01, 0.01, -0.01])
    # right, right (0.5 is "not up", and it fell), wrong, not counted, right, wrong
    got = rolling_accuracy(p, ret, window=2)
    assert np.allclose(got, [1.0, 1.0, 0.5, 0.0, 1.0, 0.5])
