"""planted_bars: the planted lag correlation and directional accuracy are the ones asked for.

Tolerances are a few standard errors at 20,000 bars, checked over 300 seeds.
The lag-L sample autocorrelation of this process has standard error
sqrt((1 - phi^2) / n) (Bartlett's formula); the planted rule's hit rate is a
mean of n Bernoulli(accuracy) indicators, sqrt(acc (1 - acc) / n), inflated by
up to ~1.3 by their serial dependence (measured at phi 0.81). 4 of the first
and 6 of the second keep a false failure rarer than 1 in 10,000 per
assertion, while a phi 0.1 off (several hundredths of accuracy) still fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainers.data import Bars
from trainers.errors import InvalidInputError
from trainers.features import FEATURE_SPEC, training_matrix
from trainers.synthetic import accuracy_for_phi, phi_for_accuracy, planted_bars

N = 20_000
COLUMNS = ("ts", "open", "high", "low", "close", "volume")


def log_returns(bars: Bars, start_price: float = 100.0) -> np.ndarray:
    """Every bar's one-bar log return, the first one from the start price."""
    return np.diff(np.log(np.concatenate(([start_price], bars.close))))


def lag_corr(r: np.ndarray, lag: int) -> float:
    return float(np.corrcoef(r[lag:], r[:-lag])[0, 1])


def hit_rate(r: np.ndarray, lag: int, phi: float) -> float:
    """How often the planted rule sign(phi * r[t-lag]) calls the sign of r[t]."""
    return float(np.mean((r[lag:] > 0) == (phi * r[:-lag] > 0)))


@pytest.mark.parametrize(
    ("accuracy", "lag", "seed"), [(0.55, 1, 1), (0.6, 1, 2), (0.6, 3, 3), (0.7, 2, 4), (0.8, 5, 5)]
)
def test_planted_correlation_and_accuracy_match_the_target(accuracy, lag, seed):
    """corr(r[t], r[t-lag]) is phi_for_accuracy(accuracy), the planted rule's hit rate is
    accuracy, returns 2 lags apart correlate by phi^2 and those not a multiple of lag apart
    not at all."""
    phi = phi_for_accuracy(accuracy)
    r = log_returns(planted_bars(N, seed=seed, accuracy=accuracy, lag=lag))
    assert abs(lag_corr(r, lag) - phi) < 4 * math.sqrt((1 - phi * phi) / N)
    assert abs(hit_rate(r, lag, phi) - accuracy) < 6 * math.sqrt(accuracy * (1 - accuracy) / N)
    # Bartlett: the lag-2L estimate has standard error sqrt((1 + 2 phi^2 - 3 phi^4) / N).
    assert abs(lag_corr(r, 2 * lag) - phi**2) < 4 * math.sqrt((1 + 2 * phi**2) / N)
    # Zero correlations of a correlated series are noisier: Bartlett gives at most
    # sqrt((1 + phi) / (1 - phi) / N) (reached at half the lag, the worst case).
    for other in range(1, 2 * lag + 2):
        if other % lag:
            assert abs(lag_corr(r, other)) < 4 * math.sqrt((1 + phi) / (1 - phi) / N)
    assert np.std(r) == pytest.approx(0.01, rel=0.05)


def test_negative_phi_plants_reversal_at_the_same_accuracy():
    """phi < 0 plants mean reversion: the reversal rule hits accuracy_for_phi(phi)."""
    r = log_returns(planted_bars(N, seed=6, phi=-0.5, lag=1))
    target = accuracy_for_phi(-0.5)
    assert target == pytest.approx(2 / 3)
    assert abs(lag_corr(r, 1) + 0.5) < 4 * math.sqrt(0.75 / N)
    assert abs(hit_rate(r, 1, -0.5) - target) < 6 * math.sqrt(target * (1 - target) / N)


@pytest.mark.parametrize("seed", [7, 8])
def test_accuracy_half_is_a_random_walk(seed):
    """Accuracy 0.5 is phi 0: returns with the requested std and no correlation at any lag."""
    assert phi_for_accuracy(0.5) == 0.0
    r = log_returns(planted_bars(N, seed=seed, accuracy=0.5, volatility=0.02))
    assert np.std(r) == pytest.approx(0.02, rel=0.05)
    for lag in (1, 2, 3, 5, 10):
        assert abs(lag_corr(r, lag)) < 4 / math.sqrt(N)
    assert abs(float(np.mean(r))) < 5 * 0.02 / math.sqrt(N)  # no drift


def test_stationary_from_the_first_bar():
    """The first returns already have the stationary std (a cold start would give
    volatility * sqrt(1 - phi^2), a third of it at phi 0.95), and their lag correlation."""
    first = np.array(
        [log_returns(planted_bars(4, seed=s, phi=0.95, lag=2))[:4] for s in range(3000)]
    )
    # std of a sample std: sigma / sqrt(2 n) = 1.3% at n = 3000.
    np.testing.assert_allclose(first.std(axis=0), 0.01, rtol=0.06)
    corr = np.corrcoef(first[:, 0], first[:, 2])[0, 1]
    assert abs(corr - 0.95) < 4 * (1 - 0.95**2) / math.sqrt(3000)


def test_phi_and_accuracy_are_inverse():
    """phi_for_accuracy and accuracy_for_phi undo each other; 0.75 is phi sqrt(2)/2."""
    assert phi_for_accuracy(0.75) == pytest.approx(math.sqrt(2) / 2)
    for accuracy in (0.5, 0.51, 0.6, 0.75, 0.9, 0.999):
        assert accuracy_for_phi(phi_for_accuracy(accuracy)) == pytest.approx(accuracy)


def test_bars_are_valid_deterministic_ohlcv():
    """Open is the previous close, high/low bracket the body, volume positive, ts one minute
    apart in Unix seconds; the same arguments give the same bars, another seed others."""
    b = planted_bars(3000, seed=9, accuracy=0.7, lag=2, start_price=1.1, volatility=0.02)
    for col in (b.open, b.high, b.low, b.close, b.volume):
        assert np.isfinite(col).all()
        assert (col > 0).all()
    assert (b.high >= np.maximum(b.open, b.close)).all()
    assert (b.low <= np.minimum(b.open, b.close)).all()
    assert (b.high > b.low).all()
    assert b.open[0] == 1.1
    assert np.array_equal(b.open[1:], b.close[:-1])
    assert b.ts.dtype == np.int64
    assert b.ts[0] == 1_735_689_600
    assert (np.diff(b.ts) == 60).all()
    again = planted_bars(3000, seed=9, accuracy=0.7, lag=2, start_price=1.1, volatility=0.02)
    assert all(np.array_equal(getattr(b, c), getattr(again, c)) for c in COLUMNS)
    other = planted_bars(3000, seed=10, accuracy=0.7, lag=2, start_price=1.1, volatility=0.02)
    assert not np.array_equal(b.close, other.close)
    shifted = planted_bars(5, seed=0, accuracy=0.6, bar_seconds=300, start_ts=1_000)
    assert shifted.ts.tolist() == [1_000, 1_300, 1_600, 1_900, 2_200]


def test_features_of_planted_bars_are_finite():
    """Planted bars pass feature validation and every row after the lookback is usable."""
    m = training_matrix(planted_bars(1000, seed=11, accuracy=0.6))
    assert len(m) == 1000 - FEATURE_SPEC.lookback
    assert np.isfinite(m.X).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"accuracy": 0.49}, r"accuracy must be in \[0.5, 1\) \(0.5: no signal\), got 0.49"),
        ({"accuracy": 1.0}, r"accuracy must be in \[0.5, 1\) .*got 1.0"),
        ({"accuracy": math.nan}, r"accuracy must be in \[0.5, 1\) .*got nan"),
        ({"phi": 1.0}, r"phi must be in \(-1, 1\) for a stationary series, got 1.0"),
        ({"phi": -1.5}, r"phi must be in \(-1, 1\) .*got -1.5"),
        ({"phi": math.inf}, r"phi must be in \(-1, 1\) .*got inf"),
        ({}, "give the signal as accuracy or as phi, not both or neither; got accuracy=None"),
        ({"accuracy": 0.6, "phi": 0.2}, "not both or neither; got accuracy=0.6, phi=0.2"),
        ({"accuracy": 0.6, "lag": 0}, "lag must be an integer >= 1, got 0"),
        ({"accuracy": 0.6, "lag": 1.5}, "lag must be an integer >= 1, got 1.5"),
        ({"accuracy": 0.6, "n_bars": 0}, "n_bars must be an integer >= 1, got 0"),
        ({"accuracy": 0.6, "seed": -1}, "seed must be >= 0, got -1"),
        ({"accuracy": 0.6, "volatility": 0.0}, "volatility must be finite and > 0, got 0.0"),
        ({"accuracy": 0.6, "start_price": -1.0}, "start_price must be finite and > 0, got -1.0"),
        ({"accuracy": 0.6, "bar_seconds": 0}, "bar_seconds must be >= 1, got 0"),
        ({"accuracy": 0.6, "start_ts": -1}, "start_ts must be >= 0, got -1"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    """Every argument is validated, and the error names it and the value."""
    args = {"n_bars": 100, "seed": 0} | kwargs
    with pytest.raises(InvalidInputError, match=match):
        planted_bars(**args)


@pytest.mark.parametrize("accuracy", [0.4999, 1.0, -math.inf])
def test_phi_for_accuracy_rejects_accuracies_outside_half_to_one(accuracy):
    """phi_for_accuracy accepts [0.5, 1) only."""
    with pytest.raises(InvalidInputError, match="accuracy must be in"):
        phi_for_accuracy(accuracy)
