"""FeatureStream: every pushed row bit for bit the batch row, whatever the bars and the seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from trainers.data import Bars
from trainers.errors import InvalidInputError
from trainers.features import FEATURE_SPEC, MAX_PRICE, MAX_VOLUME, MIN_PRICE, compute_features
from trainers.features_stream import FeatureStream

LOOKBACK = FEATURE_SPEC.lookback
N_FEATURES = len(FEATURE_SPEC.names)
COLUMNS = ("ts", "open", "high", "low", "close", "volume")
EXAMPLES = 200

log_return = st.one_of(
    st.just(0.0),  # flat
    st.floats(-0.05, 0.05),  # ordinary
    st.sampled_from([1e-15, -1e-15, 1e-300, -1e-300]),  # below a price's resolution
    st.floats(-12.0, 12.0),  # gaps, also across many decades
)
# Jumps to the ends of float64 (clipped): ratios overflow to inf or underflow to 0.
extreme_return = st.one_of(log_return, st.sampled_from([-1e4, 1e4]), st.floats(-800.0, 800.0))
wick = st.one_of(st.just(0.0), st.floats(0.0, 0.1))
volume = st.one_of(
    st.just(0.0),
    st.just(1000.0),  # constant volume: std 0, or rounding noise below the relative floor
    st.floats(0.0, 1e6),
    st.floats(0.0, MAX_VOLUME),
    st.floats(0.0, 1e-300),
)
extreme_volume = st.one_of(volume, st.floats(0.0, 1.7e308))  # sums overflow to inf
ts_gap = st.integers(1, 10**6)
bar_steps = st.tuples(log_return, wick, wick, volume, ts_gap)
extreme_steps = st.tuples(extreme_return, wick, wick, extreme_volume, ts_gap)


@st.composite
def bar_sequences(draw: st.DrawFn, *, max_size: int = 160, extreme: bool = False) -> Bars:
    """Valid bars: flat runs, zero volume, gaps, prices anywhere in the features' range
    (``extreme``: anywhere positive and finite, so features can be inf or NaN)."""
    lo, hi = (5e-324, 1.7e308) if extreme else (MIN_PRICE, MAX_PRICE)
    n = draw(st.integers(0, max_size))  # lists would mostly stay short of the lookback
    steps = draw(st.lists(extreme_steps if extreme else bar_steps, min_size=n, max_size=n))

    def clip(price: float) -> float:  # Python floats overflow to inf without a warning
        return min(max(price, lo), hi)

    rows = []
    ts = draw(st.integers(0, 2_000_000_000))
    close = clip(math.exp(draw(st.floats(math.log(lo), math.log(hi)))))
    for r, up, down, vol, gap in steps:
        open_ = close
        close = clip(close * math.exp(min(max(r, -745.0), 709.0)))
        high = clip(max(open_, close) * math.exp(up))
        low = clip(min(open_, close) * math.exp(-down))
        ts += gap
        rows.append((ts, open_, high, low, close, vol))
    return Bars.from_rows(rows)


def head(bars: Bars, k: int) -> Bars:
    return Bars(*(getattr(bars, c)[:k] for c in COLUMNS))


def bar(bars: Bars, i: int) -> tuple[int, float, float, float, float, float]:
    return (
        int(bars.ts[i]),
        *(float(getattr(bars, c)[i]) for c in COLUMNS[1:]),
    )  # type: ignore[return-value]


def bits(a: np.ndarray) -> np.ndarray:
    """The float64 bit patterns: equal NaN positions, signs of zero and NaN payloads."""
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def assert_bit_identical(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.array_equal(bits(got), bits(want)), (got, want)


def expected_tail(bars: Bars, m: int) -> np.ndarray:
    """The last ``m`` batch rows, NaN-padded above (``deploy.scoring.feature_tail``)."""
    feats = compute_features(bars)[-m:] if m else np.empty((0, N_FEATURES))
    pad = np.full((m - len(feats), N_FEATURES), np.nan)
    return np.vstack([pad, feats])


def push_all(stream: FeatureStream, bars: Bars, start: int = 0) -> list[np.ndarray]:
    return [stream.push(*bar(bars, i)) for i in range(start, len(bars))]


@settings(max_examples=EXAMPLES, deadline=None)
@given(bar_sequences())
def test_every_pushed_row_is_the_batch_row_bit_for_bit(bars):
    """Each push returns compute_features(all bars so far)[-1], to the last bit."""
    stream = FeatureStream()
    want = compute_features(bars)
    for i, row in enumerate(push_all(stream, bars)):
        assert_bit_identical(row, want[i])
    assert stream.count == len(bars)
    event(f"rows past the lookback: {'some' if len(bars) >= LOOKBACK else 'none'}")


@settings(max_examples=EXAMPLES, deadline=None)
@given(bar_sequences(extreme=True))
def test_rows_match_bit_for_bit_even_where_features_overflow(bars):
    """Prices spanning the whole float64 range give the batch's inf and NaN, in place."""
    with np.errstate(all="ignore"):  # both sides divide and log their way to inf
        stream = FeatureStream()
        want = compute_features(bars)
        for i, row in enumerate(push_all(stream, bars)):
            assert_bit_identical(row, want[i])
    overflowed = len(bars) >= LOOKBACK and not np.isfinite(want[LOOKBACK - 1 :]).all()
    event(f"non-finite features past the lookback: {overflowed}")


@settings(max_examples=EXAMPLES, deadline=None)
@given(bar_sequences(max_size=220), st.data())
def test_seeding_from_any_tail_equals_pushing_from_the_start(bars, data):
    """from_bars(first s bars) then pushes gives the rows of pushing every bar, and rows(m)
    is the batch's last m rows."""
    s = data.draw(st.integers(0, len(bars)), label="seed bars")
    keep = data.draw(st.integers(1, 40), label="keep")
    m = data.draw(st.integers(0, keep), label="m")
    seeded = FeatureStream.from_bars(head(bars, s), keep=keep)
    assert seeded.count == s
    assert seeded.last_ts == (int(bars.ts[s - 1]) if s else None)
    assert_bit_identical(seeded.rows(m), expected_tail(head(bars, s), m))
    fresh = FeatureStream(keep=keep)
    push_all(fresh, head(bars, s))
    for got, want in zip(push_all(seeded, bars, s), push_all(fresh, bars, s), strict=True):
        assert_bit_identical(got, want)
    assert_bit_identical(seeded.rows(m), expected_tail(bars, m))
    assert_bit_identical(seeded.rows(keep), fresh.rows(keep))


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(bar_sequences(), st.data())
def test_a_copy_goes_its_own_way(bars, data):
    """Pushing to a copy leaves the original where it was."""
    s = data.draw(st.integers(0, len(bars)))
    original = FeatureStream.from_bars(head(bars, s), keep=3)
    before = original.rows(3)
    trial = original.copy()
    push_all(trial, bars, s)
    assert_bit_identical(original.rows(3), before)
    assert original.count == s
    assert_bit_identical(trial.rows(3), expected_tail(bars, 3))


def good_history(n: int = LOOKBACK + 5) -> Bars:
    rng = np.random.default_rng(n)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    return Bars(
        1_700_000_000 + 60 * np.arange(n, dtype=np.int64),
        close,
        close * 1.01,
        close * 0.99,
        close,
        rng.lognormal(5, 1, n),
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("open", 0.0),
        ("high", -1.0),
        ("low", float("nan")),
        ("close", float("inf")),
        ("close", 0.0),
        ("volume", -1.0),
        ("volume", float("nan")),
        ("volume", float("inf")),
    ],
)
def test_a_bad_bar_raises_the_batch_error_and_changes_nothing(column, value):
    """A value compute_features rejects raises its InvalidInputError, message and all; the
    stream goes on as if the bar never came."""
    bars = good_history()
    stream = FeatureStream.from_bars(head(bars, len(bars) - 1))
    ts, *values = bar(bars, len(bars) - 1)
    values[COLUMNS.index(column) - 1] = value
    open_, high, low, close, vol = values
    last = (ts, open_, high, low, close, vol)
    bad = Bars.from_rows([*(bar(bars, i) for i in range(len(bars) - 1)), last])
    with pytest.raises(InvalidInputError) as batch_error:
        compute_features(bad)
    with pytest.raises(InvalidInputError) as stream_error:
        stream.push(*last)
    assert str(stream_error.value) == str(batch_error.value)
    with pytest.raises(InvalidInputError) as seed_error:
        FeatureStream.from_bars(bad)
    assert str(seed_error.value) == str(batch_error.value)
    assert stream.count == len(bars) - 1
    assert_bit_identical(stream.push(*bar(bars, len(bars) - 1)), compute_features(bars)[-1])


@pytest.mark.parametrize("delta", [0, -60])
def test_a_bar_not_after_the_last_is_rejected(delta):
    """ts must increase, as Bars requires; a late bar leaves the stream unchanged."""
    bars = good_history()
    stream = FeatureStream.from_bars(head(bars, len(bars) - 1))
    last = int(bars.ts[-2])
    with pytest.raises(InvalidInputError, match=f"ts must be increasing, got {last + delta}"):
        stream.push(last + delta, 1.0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(InvalidInputError, match="ts must be an integer"):
        stream.push(float(last + 60), 1.0, 1.0, 1.0, 1.0, 1.0)  # type: ignore[arg-type]
    assert stream.last_ts == last
    assert_bit_identical(stream.push(*bar(bars, len(bars) - 1)), compute_features(bars)[-1])


def test_rows_and_keep_are_bounded():
    """rows(m) takes 0 <= m <= keep; keep must be a positive integer."""
    stream = FeatureStream(keep=2)
    assert stream.rows(0).shape == (0, N_FEATURES)
    assert np.isnan(stream.rows(2)).all()
    with pytest.raises(InvalidInputError, match="0 <= m <= keep"):
        stream.rows(3)
    for keep in (0, -1, True, 1.5):
        with pytest.raises(InvalidInputError, match="keep must be"):
            FeatureStream(keep=keep)  # type: ignore[arg-type]


def test_returned_rows_are_read_only():
    """The stream keeps the rows it returns for rows(m), so they cannot be changed."""
    bars = good_history()
    row = FeatureStream.from_bars(head(bars, len(bars) - 1)).push(*bar(bars, len(bars) - 1))
    with pytest.raises(ValueError, match="read-only"):
        row[0] = 0.0


def test_state_stays_bounded_however_long_the_history():
    """O(1) per bar: after 2,000 bars the buffers hold only the largest window's inputs."""
    stream = FeatureStream(keep=4)
    rng = np.random.default_rng(1)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, 2000)))
    for i, c in enumerate(close):
        stream.push(i, c, c, c, c, 1.0 + i % 3)
    buffers = (stream._closes, stream._returns, stream._macds, stream._volumes, stream._rows)
    assert [len(b) for b in buffers] == [52, 20, 18, 20, 4]


def test_a_long_rough_history_matches_row_for_row():
    """3,000 fat-tailed bars with flat runs and zero volume, seeded mid-way: every row the
    batch's, long after the buffers have wrapped many times."""
    rng = np.random.default_rng(7)
    n = 3000
    close = 80 * np.exp(np.cumsum(0.02 * rng.standard_t(3, n) * (rng.random(n) > 0.05)))
    volume = rng.lognormal(8, 1.5, n) * (rng.random(n) > 0.05)
    bars = Bars(
        1_700_000_000 + 60 * np.arange(n, dtype=np.int64),
        close,
        close * np.exp(np.abs(rng.normal(0, 0.01, n))),
        close * np.exp(-np.abs(rng.normal(0, 0.01, n))),
        close,
        volume,
    )
    want = compute_features(bars)
    stream = FeatureStream.from_bars(head(bars, 500), keep=16)
    for i, row in enumerate(push_all(stream, bars, 500), start=500):
        assert_bit_identical(row, want[i])
    assert_bit_identical(stream.rows(16), want[-16:])
