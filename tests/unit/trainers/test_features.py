"""The shared feature function: offset invariance, reference values, guards."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from trainers.data import Bars
from trainers.errors import InvalidInputError
from trainers.features import (
    FEATURE_SPEC,
    _rolling_mean_std,
    _windowed_dot,
    compute_features,
    compute_labels,
    forward_returns,
    latest_features,
    training_matrix,
)

LOOKBACK = FEATURE_SPEC.lookback
NAMES = FEATURE_SPEC.names


def random_bars(seed: int, n: int, price: float = 100.0, vol: float = 0.02) -> Bars:
    """Valid but rough bars: fat-tailed returns, occasional flat bars and zero volume."""
    rng = np.random.default_rng(seed)
    r = vol * rng.standard_t(3, n)
    r[rng.random(n) < 0.05] = 0.0
    close = price * np.exp(np.cumsum(r))
    open_ = np.concatenate(([price], close[:-1]))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, vol / 2, n)))
    volume = rng.lognormal(8, 1.5, n)
    volume[rng.random(n) < 0.05] = 0.0
    ts = 1_700_000_000 + 60 * np.arange(n, dtype=np.int64)
    return Bars(ts, open_, high, low, close, volume)


def head(bars: Bars, k: int) -> Bars:
    return Bars(
        bars.ts[:k], bars.open[:k], bars.high[:k], bars.low[:k], bars.close[:k], bars.volume[:k]
    )


def replace(bars: Bars, **cols: np.ndarray) -> Bars:
    parts = {name: getattr(bars, name) for name in ("ts", "open", "high", "low", "close")}
    parts["volume"] = bars.volume
    parts.update(cols)
    return Bars(**parts)


def reference_row(bars: Bars, t: int) -> list[float]:
    """Row t computed the slow, obvious way, one scalar at a time."""
    c, h, lo, v = (list(map(float, a)) for a in (bars.close, bars.high, bars.low, bars.volume))

    def r1(i: int) -> float:
        return math.log(c[i] / c[i - 1])

    def ema(values: list[float], end: int, span: int) -> float:
        a = 2 / (span + 1)
        ws = [(1 - a) ** j for j in range(2 * span)]
        return sum(w * values[end - j] for j, w in enumerate(ws)) / sum(ws)

    row = [math.log(c[t] / c[t - k]) for k in (1, 2, 3, 5, 10, 20)]
    row += [statistics.pstdev([r1(i) for i in range(t - w + 1, t + 1)]) for w in (10, 20)]
    rets = [r1(i) for i in range(t - 13, t + 1)]
    gains, losses = sum(x for x in rets if x > 0), -sum(x for x in rets if x < 0)
    row.append(gains / (gains + losses) if gains + losses > 0 else 0.5)
    macd = [0.0] * len(c)
    for i in range(t - 17, t + 1):
        macd[i] = (ema(c, i, 12) - ema(c, i, 26)) / c[i]
    signal = ema(macd, t, 9)
    row += [macd[t], signal, macd[t] - signal]
    row.append((h[t] - lo[t]) / c[t])
    row.append((c[t] - lo[t]) / (h[t] - lo[t]) if h[t] > lo[t] else 0.5)
    window = v[t - 19 : t + 1]
    sd = statistics.pstdev(window)
    row.append((v[t] - statistics.fmean(window)) / sd if sd > 0 else 0.0)
    return row


def test_spec_is_json_ready_and_names_match_columns():
    """The spec survives a JSON round trip and names one column per feature."""
    d = FEATURE_SPEC.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["names"] == list(NAMES)
    assert d["lookback"] == LOOKBACK
    assert d["label_horizon"] == 1
    assert len(set(NAMES)) == len(NAMES) == 15
    assert compute_features(random_bars(0, 200)).shape == (200, len(NAMES))


def test_rows_before_lookback_are_nan_and_later_rows_finite():
    """Rows t < lookback - 1 are all NaN; every later row is finite."""
    f = compute_features(random_bars(1, 500))
    assert f.dtype == np.float64
    assert np.isnan(f[: LOOKBACK - 1]).all()
    assert np.isfinite(f[LOOKBACK - 1 :]).all()


def test_short_and_empty_histories_give_all_nan_rows():
    """Fewer bars than the lookback give NaN rows of the right shape, not an error."""
    assert compute_features(Bars.empty()).shape == (0, len(NAMES))
    f = compute_features(random_bars(2, LOOKBACK - 1))
    assert f.shape == (LOOKBACK - 1, len(NAMES))
    assert np.isnan(f).all()


@pytest.mark.parametrize(("seed", "price"), [(3, 100.0), (4, 60_000.0), (5, 0.0123)])
def test_latest_row_is_bit_identical_to_full_history_row(seed, price):
    """latest_features(bars[:k]) equals row k-1 of the full computation exactly, for every k."""
    bars = random_bars(seed, 1200, price=price)
    full = compute_features(bars)
    for k in range(LOOKBACK, len(bars) + 1):
        row = latest_features(head(bars, k))
        assert row is not None
        assert np.array_equal(row, full[k - 1]), f"row {k - 1} differs"


def test_latest_features_needs_a_full_lookback():
    """latest_features is None below the lookback and a 1-D row at exactly the lookback."""
    bars = random_bars(6, LOOKBACK)
    assert latest_features(head(bars, LOOKBACK - 1)) is None
    assert latest_features(Bars.empty()) is None
    row = latest_features(bars)
    assert row is not None
    assert row.shape == (len(NAMES),)
    assert np.isfinite(row).all()


def test_lookback_is_exactly_the_dependency_window():
    """Row t changes when bar t - lookback + 1 changes and not when bar t - lookback does."""
    bars = random_bars(7, 300)
    t = 250
    base = compute_features(bars)[t]
    for i, should_change in ((t - LOOKBACK + 1, True), (t - LOOKBACK, False)):
        close = bars.close.copy()
        close[i] *= 1.01
        high = np.maximum(bars.high, close)
        changed = compute_features(replace(bars, close=close, high=high))[t]
        assert (not np.array_equal(changed, base)) == should_change


@pytest.mark.parametrize("t", [LOOKBACK - 1, LOOKBACK + 7, 333, 599])
def test_rows_match_a_slow_reference_implementation(t):
    """Each feature equals its textbook definition computed one scalar at a time."""
    bars = random_bars(8, 600)
    got = compute_features(bars)[t]
    want = reference_row(bars, t)
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-9, abs=1e-12), name


def test_features_are_scale_free():
    """Multiplying every price by 5,000 leaves the features unchanged up to rounding."""
    bars = random_bars(9, 400)
    scaled = replace(
        bars,
        open=bars.open * 5000,
        high=bars.high * 5000,
        low=bars.low * 5000,
        close=bars.close * 5000,
    )
    a, b = compute_features(bars), compute_features(scaled)
    np.testing.assert_allclose(b[LOOKBACK - 1 :], a[LOOKBACK - 1 :], rtol=1e-6, atol=1e-9)


def test_degenerate_but_valid_bars_give_finite_features():
    """Flat prices, zero range and constant or zero volume give finite, neutral features."""
    n = 200
    flat = np.full(n, 0.1)
    ts = np.arange(n, dtype=np.int64)
    for volume in (np.zeros(n), np.full(n, 0.1), np.full(n, 3e9)):
        f = compute_features(Bars(ts, flat, flat, flat, flat, volume))[LOOKBACK - 1 :]
        assert np.isfinite(f).all()
        col = {name: f[:, i] for i, name in enumerate(NAMES)}
        assert (col["rsi_14"] == 0.5).all()
        assert (col["close_pos"] == 0.5).all()
        assert (col["volume_z20"] == 0.0).all()
        assert (col["range"] == 0.0).all()
        assert (col["vol_20"] == 0.0).all()
        assert np.abs(col["macd"]).max() < 1e-12


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, -1.0])
@pytest.mark.parametrize("column", ["open", "high", "low", "close"])
def test_bad_prices_are_rejected_with_the_column_and_index(column, bad):
    """A non-finite or non-positive price raises InvalidInputError naming column and index."""
    bars = random_bars(10, 100)
    col = getattr(bars, column).copy()
    col[42] = bad
    with pytest.raises(
        InvalidInputError, match=rf"bar {column} must be finite and positive, got {bad} at index 42"
    ):
        compute_features(replace(bars, **{column: col}))


@pytest.mark.parametrize("bad", [math.nan, -1.0])
def test_bad_volume_is_rejected(bad):
    """Negative or non-finite volume raises InvalidInputError instead of NaN features."""
    bars = random_bars(11, 100)
    volume = bars.volume.copy()
    volume[7] = bad
    with pytest.raises(InvalidInputError, match=r"volume .*got (nan|-1.0) at index 7"):
        compute_features(replace(bars, volume=volume))
    with pytest.raises(InvalidInputError):
        training_matrix(replace(bars, volume=volume))


def test_labels_and_forward_returns_look_one_bar_ahead():
    """Label t is 1 only when close rises from t to t+1 (flat is 0); the last row is NaN."""
    close = np.array([10.0, 11.0, 11.0, 9.0, 12.0])
    bars = Bars(np.arange(5, dtype=np.int64), close, close, close, close, np.ones(5))
    labels = compute_labels(bars)
    assert np.array_equal(labels[:-1], [1.0, 0.0, 0.0, 1.0])
    assert np.isnan(labels[-1])
    fwd = forward_returns(bars)
    np.testing.assert_allclose(fwd[:-1], np.log([1.1, 1.0, 9 / 11, 12 / 9]), rtol=1e-15)
    assert np.isnan(fwd[-1])


def test_training_matrix_keeps_aligned_complete_rows():
    """The matrix holds rows lookback-1 .. n-2, aligned with their bars' ts, labels, returns."""
    bars = random_bars(12, 300)
    m = training_matrix(bars)
    rows = np.arange(LOOKBACK - 1, 300 - 1)
    assert len(m) == len(rows)
    assert np.array_equal(m.ts, bars.ts[rows])
    assert np.array_equal(m.X, compute_features(bars)[rows])
    assert np.array_equal(m.y, compute_labels(bars)[rows])
    assert np.array_equal(m.fwd_returns, forward_returns(bars)[rows])
    assert np.isfinite(m.X).all()
    assert m.ts.dtype == np.int64
    assert np.array_equal(m.y, (m.fwd_returns > 0).astype(np.float64))


@pytest.mark.parametrize("price", [1e300, 1e-300])
def test_a_row_beyond_float32_is_excluded_and_reported_not_fatal(price: float) -> None:
    """One bar the features cannot represent (a stored 1e300 from before the edge checked it):
    only the rows whose window holds it leave the matrix, named in ``excluded_ts``; every row
    left is finite in float32, which the models see."""
    bars = random_bars(14, 400)
    bad = 200
    cols = {name: getattr(bars, name).copy() for name in ("open", "high", "low", "close")}
    for col in cols.values():
        col[bad] = price
    m = training_matrix(replace(bars, **cols))
    clean = training_matrix(bars)
    assert 0 < len(m.excluded_ts) <= LOOKBACK + 1
    assert len(m) + len(m.excluded_ts) == len(clean)
    assert set(m.excluded_ts) <= set(bars.ts[bad - 1 : bad + LOOKBACK])
    assert not set(m.excluded_ts) & set(m.ts)
    with np.errstate(over="raise"):
        assert np.isfinite(m.X.astype(np.float32)).all()
    far = m.ts > bars.ts[bad + LOOKBACK]
    assert np.array_equal(m.X[far], clean.X[clean.ts > bars.ts[bad + LOOKBACK]])
    assert len(clean.excluded_ts) == 0


def test_training_matrix_of_too_few_bars_is_empty():
    """With no complete row the matrix is empty but well-shaped."""
    m = training_matrix(random_bars(13, LOOKBACK))
    assert m.X.shape == (0, len(NAMES))
    assert len(m.y) == len(m.fwd_returns) == len(m.ts) == 0


def test_inputs_are_not_mutated():
    """Computing features leaves the caller's columns untouched."""
    bars = random_bars(14, 200)
    before = [getattr(bars, c).copy() for c in ("open", "high", "low", "close", "volume")]
    training_matrix(bars)
    latest_features(bars)
    after = [getattr(bars, c) for c in ("open", "high", "low", "close", "volume")]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("w", [2, 9, 18, 24, 52])
def test_window_sums_add_oldest_first_like_a_slice_loop(w):
    """Every windowed sum rounds exactly as ``acc += weight[j] * x[j : j + m]`` oldest first.

    That order is the contract: models trained before the vectorised sums were
    trained on these exact bits, and the offset invariance rests on it.
    """
    rng = np.random.default_rng(w)
    x = rng.lognormal(0, 2, 500) * 10 ** rng.uniform(-6, 6, 500)
    weights = rng.random(w)
    m = len(x) - w + 1
    dot, total, sq = weights[0] * x[:m], x[:m].copy(), np.zeros(m)
    for j in range(1, w):
        dot += weights[j] * x[j : j + m]
        total += x[j : j + m]
    mean = total / w
    for j in range(w):
        d = x[j : j + m] - mean
        sq += d * d
    assert np.array_equal(_windowed_dot(x, weights)[w - 1 :], dot)
    got_mean, got_std = _rolling_mean_std(x, w)
    assert np.array_equal(got_mean[w - 1 :], mean)
    assert np.array_equal(got_std[w - 1 :], np.sqrt(sq / w))
    assert np.isnan(got_std[: w - 1]).all()
