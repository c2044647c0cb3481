"""Return-target scoring: regression metrics against numpy/scipy, the regression
yardsticks, the paired Diebold-Mariano losses, and the planted return market."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr, t

from trainers.baselines import LAST, MEAN, RETURN_BASELINES, ZERO, choose_yardstick, fit_yardsticks
from trainers.comparison import diebold_mariano
from trainers.config import TrainConfig
from trainers.errors import InvalidInputError
from trainers.evaluation import paired_losses
from trainers.features import training_matrix
from trainers.regression_metrics import MAPE_GUARD, regression_metrics
from trainers.synthetic import planted_return_bars, random_walk_bars

KEYS = ("n", "rmse", "mae", "mape", "r2", "pearson", "spearman", "hit_rate")


def test_metrics_match_numpy_and_scipy() -> None:
    """Every metric equals its textbook formula on random data."""
    rng = np.random.default_rng(0)
    y = rng.normal(0, 0.01, 500)
    p = 0.5 * y + rng.normal(0, 0.01, 500)
    m = regression_metrics(y, p)
    assert tuple(m) == KEYS
    assert m["n"] == 500
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((p - y) ** 2)))
    assert m["mae"] == pytest.approx(np.mean(np.abs(p - y)))
    assert m["r2"] == pytest.approx(1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2))
    assert m["pearson"] == pytest.approx(pearsonr(y, p).statistic)
    assert m["spearman"] == pytest.approx(spearmanr(y, p).statistic)
    assert m["hit_rate"] == pytest.approx(np.mean(np.sign(p) == np.sign(y)))
    keep = np.abs(y) > MAPE_GUARD * np.median(np.abs(y))
    assert m["mape"] == pytest.approx(np.mean(np.abs(p - y)[keep] / np.abs(y)[keep]))
    assert all(isinstance(v, float) for k, v in m.items() if k != "n")


def test_undefined_metrics_are_none_not_nan() -> None:
    """A constant forecast has no correlation, constant returns no R^2, zero returns no
    MAPE or hit rate; a zero forecast never hits."""
    y = np.array([0.01, -0.02, 0.03, 0.0])
    zero = regression_metrics(y, np.zeros(4))
    assert zero["pearson"] is None and zero["spearman"] is None
    assert zero["hit_rate"] == 0.0
    flat = regression_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]))
    assert flat["r2"] is None and flat["mape"] is None and flat["hit_rate"] is None
    assert flat["rmse"] == pytest.approx(math.sqrt((0.01 + 0.04 + 0.09) / 3))


def test_mape_ignores_returns_near_zero() -> None:
    """A row whose true return is below the guard cannot blow MAPE up."""
    y = np.array([0.01, -0.01, 0.02, 1e-12])
    m = regression_metrics(y, np.array([0.02, -0.01, 0.01, 0.01]))
    assert m["mape"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([], [], "0 rows"),
        ([0.1, 0.2], [0.1], "y_pred has 1 rows, y_true has 2"),
        ([0.1, math.nan], [0.1, 0.2], "y_true must be finite"),
        ([[0.1]], [0.1], "y_true must be 1-D"),
    ],
)
def test_bad_input_is_named(y: list[object], p: list[object], message: str) -> None:
    """Empty, unequal, non-finite or misshapen input raises InvalidInputError."""
    with pytest.raises(InvalidInputError, match=message):
        regression_metrics(np.asarray(y, dtype=float), np.asarray(p, dtype=float))


def return_data(seed: int = 3, strength: float = 0.5, horizon: int = 5):
    bars = planted_return_bars(2000, horizon=horizon, strength=strength, seed=seed)
    m = training_matrix(bars, target="return", horizon=horizon)
    return m, m.dataset(val_fraction=0.15, test_fraction=0.15)


def test_return_yardsticks_predict_zero_train_mean_and_last_return() -> None:
    """zero, mean (train mean, refitted per fold) and last (past h-bar return) forecast
    the test split and every earlier walk-forward block; the lowest val RMSE wins."""
    m, data = return_data()
    config = TrainConfig(target="return", horizon_bars=5)
    sticks = {
        y.name: y for y in fit_yardsticks(data, m.fwd_returns, config, past_returns=m.past_returns)
    }
    assert tuple(sticks) == RETURN_BASELINES
    test = data.split.test
    assert set(sticks[ZERO].blocks) == set(sticks[LAST].blocks)
    assert len(sticks[ZERO].blocks) == 3
    np.testing.assert_array_equal(sticks[ZERO].blocks[test.start], np.zeros(test.stop - test.start))
    np.testing.assert_array_equal(sticks[LAST].blocks[test.start], m.past_returns[test])
    mean = float(np.mean(data.y_train))
    assert sticks[MEAN].params == {"mean": mean}
    np.testing.assert_array_equal(
        sticks[MEAN].blocks[test.start], np.full(test.stop - test.start, mean)
    )
    for stick in sticks.values():
        assert stick.metrics.test == regression_metrics(data.y_test, stick.blocks[test.start])
    chosen = choose_yardstick(list(sticks.values()))
    assert chosen.val_rmse == min(s.val_rmse for s in sticks.values())


def test_strong_momentum_makes_last_return_the_yardstick() -> None:
    """When the past h-bar return is a better forecast than zero, it is what must be beaten."""
    m, data = return_data(strength=0.85)
    config = TrainConfig(target="return", horizon_bars=5)
    chosen = choose_yardstick(
        fit_yardsticks(data, m.fwd_returns, config, past_returns=m.past_returns)
    )
    assert chosen.name == LAST


def test_return_yardsticks_need_past_returns() -> None:
    """Without past_returns the last-return yardstick cannot be built: named error."""
    m, data = return_data()
    with pytest.raises(InvalidInputError, match="past_returns"):
        fit_yardsticks(data, m.fwd_returns, TrainConfig(target="return"))


def test_paired_losses_is_one_sided_diebold_mariano_over_pooled_blocks() -> None:
    """Blocks both predicted are pooled in time order; the p-value is the one-sided tail of
    diebold_mariano's statistic with HAC lag horizon - 1."""
    rng = np.random.default_rng(1)
    labels = rng.normal(0, 1, 300)
    good = {0: labels[:100] * 0.5, 200: labels[200:300] * 0.5, 150: np.zeros(10)}
    base = {200: np.zeros(100), 0: np.zeros(100)}
    result = paired_losses(labels, good, base, "zero", horizon=3)
    y = np.concatenate([labels[:100], labels[200:300]])
    dm = diebold_mariano((0.5 * y - y) ** 2, y**2, horizon=3)
    assert (result.rows, result.blocks, result.baseline, result.horizon) == (200, 2, "zero", 3)
    assert result.statistic == pytest.approx(dm.statistic)
    assert result.p_value == pytest.approx(t.sf(dm.statistic, 199))
    assert result.p_value < 1e-6
    assert result.candidate_mse == pytest.approx(np.mean((0.5 * y - y) ** 2))
    worse = paired_losses(labels, base, good, "x", horizon=3)
    assert worse.p_value == pytest.approx(1 - result.p_value)
    empty = paired_losses(labels, {5: np.zeros(3)}, base, "zero", horizon=1)
    assert (empty.rows, empty.p_value, empty.candidate_mse) == (0, 1.0, None)


def test_planted_return_market_has_the_documented_signal() -> None:
    """The past and next 5-bar returns correlate ~0.39 at strength 0.5, the one-bar std is
    the volatility asked for, and strength 0 is uncorrelated."""
    bars = planted_return_bars(100_000, horizon=5, strength=0.5, seed=0, volatility=0.02)
    log_close = np.log(bars.close)
    r = np.diff(log_close)
    assert r.std() == pytest.approx(0.02, rel=0.03)
    i = np.arange(5, len(log_close) - 5)
    corr = np.corrcoef(log_close[i] - log_close[i - 5], log_close[i + 5] - log_close[i])[0, 1]
    assert corr == pytest.approx(0.39, abs=0.02)
    walk = np.diff(np.log(random_walk_bars(100_000, seed=0).close))
    assert abs(np.corrcoef(walk[:-1], walk[1:])[0, 1]) < 0.01
    same = planted_return_bars(100, horizon=5, strength=0.5, seed=0, volatility=0.02)
    np.testing.assert_array_equal(same.close, bars.close[:100])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": 0}, "horizon must be an integer >= 1, got 0"),
        ({"strength": 0.95}, "strength must be in"),
        ({"strength": math.nan}, "strength must be in"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"volatility": 0.0}, "volatility must be finite and > 0"),
    ],
)
def test_planted_return_market_names_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    """Bad generator arguments raise InvalidInputError naming them."""
    args: dict[str, float] = {"horizon": 5, "strength": 0.5, "seed": 0} | kwargs
    with pytest.raises(InvalidInputError, match=message):
        planted_return_bars(100, **args)  # type: ignore[arg-type]
