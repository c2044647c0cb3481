"""The synthetic market: determinism, chunking invariance, valid bars, planted signal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainers.data import Bars, InvalidSymbolError
from trainers.errors import InvalidInputError
from trainers.features import FEATURE_SPEC, training_matrix
from trainers.synthetic import MarketGenerator, MarketSpec, generate_bars

COLUMNS = ("ts", "open", "high", "low", "close", "volume")


def same(a: Bars, b: Bars) -> bool:
    return all(np.array_equal(getattr(a, c), getattr(b, c)) for c in COLUMNS)


def concat(parts: list[Bars]) -> Bars:
    return Bars(*(np.concatenate([getattr(p, c) for p in parts]) for c in COLUMNS))


def log_returns(bars: Bars) -> np.ndarray:
    return np.diff(np.log(bars.close))


def linear_probe_accuracy(bars: Bars) -> float:
    """Out-of-sample hit rate of a least-squares fit of the next return on the features."""
    m = training_matrix(bars)
    cut = int(len(m) * 0.6)
    x_train, x_test = m.X[:cut], m.X[cut:]
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-12

    def design(x: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(x)), (x - mu) / sd])

    coef = np.linalg.lstsq(design(x_train), m.fwd_returns[:cut], rcond=None)[0]
    up = design(x_test) @ coef > 0
    return float(np.mean(up == (m.y[cut:] == 1.0)))


def test_same_seed_same_stream_and_different_seed_or_symbol_differ():
    """A spec fixes the stream; another seed or another symbol gives another stream."""
    spec = MarketSpec("BTCUSDT", seed=1, signal_strength=1.0)
    assert same(generate_bars(spec, 500), generate_bars(spec, 500))
    other_seed = MarketSpec("BTCUSDT", seed=2, signal_strength=1.0)
    other_symbol = MarketSpec("ETHUSDT", seed=1, signal_strength=1.0)
    assert not np.array_equal(generate_bars(other_seed, 500).close, generate_bars(spec, 500).close)
    assert not np.array_equal(
        generate_bars(other_symbol, 500).close, generate_bars(spec, 500).close
    )


def test_chunking_does_not_change_the_stream():
    """next_bars in any chunk sizes, with a regime change between them, equals one big call."""
    spec = MarketSpec("AAPL", seed=7, signal_strength=1.0)
    whole = MarketGenerator(spec)
    a = whole.next_bars(1000)
    whole.set_regime(volatility=0.03, signal_strength=-1.0)
    expected = concat([a, whole.next_bars(1000)])

    chunked = MarketGenerator(spec)
    parts = [chunked.next_bars(k) for k in (1, 0, 2, 297, 700)]
    chunked.set_regime(volatility=0.03, signal_strength=-1.0)
    parts += [chunked.next_bars(k) for k in (1, 999)]
    assert same(concat(parts), expected)
    assert chunked.bars_emitted == 2000


@pytest.mark.parametrize("strength", [0.0, 1.0, -1.0, 5.0])
def test_bars_are_valid_ohlcv(strength):
    """Prices positive and finite, high/low bracket open and close, ts evenly spaced."""
    spec = MarketSpec("EURUSD", seed=3, start_price=1.1, volatility=0.02, signal_strength=strength)
    b = generate_bars(spec, 3000)
    for col in (b.open, b.high, b.low, b.close):
        assert np.isfinite(col).all()
        assert (col > 0).all()
    assert (b.high >= np.maximum(b.open, b.close)).all()
    assert (b.low <= np.minimum(b.open, b.close)).all()
    assert (np.isfinite(b.volume) & (b.volume >= 0)).all()
    assert b.open[0] == 1.1
    assert np.array_equal(b.open[1:], b.close[:-1])
    assert b.ts[0] == spec.start_ts
    assert (np.diff(b.ts) == spec.bar_seconds).all()
    assert b.ts.dtype == np.int64


def test_timestamps_continue_across_chunks():
    """The second chunk starts one bar after the first one ended."""
    gen = MarketGenerator(MarketSpec("SPY", seed=0, bar_seconds=300, start_ts=1_000))
    first, second = gen.next_bars(10), gen.next_bars(5)
    assert first.ts[-1] == 1_000 + 9 * 300
    assert second.ts[0] == 1_000 + 10 * 300


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_return_std_is_the_requested_volatility(strength):
    """The per-bar log-return std matches `volatility`, with or without the signal."""
    b = generate_bars(MarketSpec("X", seed=4, volatility=0.01, signal_strength=strength), 20_000)
    assert np.std(log_returns(b)) == pytest.approx(0.01, rel=0.05)


def test_volatility_regime_triples_the_return_std():
    """set_regime(volatility=x3) makes later returns about three times as volatile."""
    gen = MarketGenerator(MarketSpec("X", seed=5))
    calm = gen.next_bars(5000)
    gen.set_regime(volatility=0.03)
    wild = gen.next_bars(5000)
    ratio = np.std(log_returns(wild)) / np.std(log_returns(calm))
    assert ratio == pytest.approx(3.0, rel=0.1)
    assert gen.volatility == 0.03


@pytest.mark.parametrize("seed", [11, 12])
def test_planted_signal_is_learnable_from_the_features(seed):
    """At strength 1 a linear probe on the features beats 55% out of sample."""
    bars = generate_bars(MarketSpec("SIG", seed=seed, signal_strength=1.0), 4000)
    assert linear_probe_accuracy(bars) > 0.56


@pytest.mark.parametrize("seed", [11, 12])
def test_no_signal_at_strength_zero(seed):
    """At strength 0 returns are i.i.d.: the probe stays near a coin flip."""
    bars = generate_bars(MarketSpec("SIG", seed=seed, signal_strength=0.0), 4000)
    assert abs(linear_probe_accuracy(bars) - 0.5) < 0.05
    r = log_returns(bars)
    assert abs(np.corrcoef(r[1:], r[:-1])[0, 1]) < 0.05


def test_negative_strength_flips_the_signal():
    """Mean reversion at +1 turns into momentum at -1: the reversal rule wins, then loses."""

    def reversal_hit_rate(bars: Bars) -> float:
        r = log_returns(bars)
        return float(np.mean((r[:-1] < 0) == (r[1:] > 0)))

    gen = MarketGenerator(MarketSpec("FLIP", seed=13, signal_strength=1.0))
    before = gen.next_bars(3000)
    gen.set_regime(signal_strength=-1.0)
    after = gen.next_bars(3000)
    assert reversal_hit_rate(before) > 0.58
    assert reversal_hit_rate(after) < 0.42


def test_features_of_generated_bars_are_finite():
    """Generated bars pass feature validation and give finite rows after the lookback."""
    m = training_matrix(generate_bars(MarketSpec("FEAT", seed=14), 1000))
    assert len(m) == 1000 - FEATURE_SPEC.lookback
    assert np.isfinite(m.X).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed"),
        ({"start_price": 0.0}, "start_price"),
        ({"start_price": math.inf}, "start_price"),
        ({"volatility": 0.0}, "volatility"),
        ({"volatility": math.nan}, "volatility"),
        ({"signal_strength": math.inf}, "signal_strength"),
        ({"bar_seconds": 0}, "bar_seconds"),
        ({"start_ts": -5}, "start_ts"),
    ],
)
def test_bad_spec_is_rejected(kwargs, match):
    """Every spec field is validated at construction with an error naming it."""
    with pytest.raises(InvalidInputError, match=match):
        MarketSpec("OK", **{"seed": 0} | kwargs)


def test_bad_symbol_regime_and_count_are_rejected():
    """Unsafe symbols, bad regimes and negative counts raise instead of generating."""
    with pytest.raises(InvalidSymbolError):
        MarketSpec("../etc", seed=0)
    gen = MarketGenerator(MarketSpec("OK", seed=0))
    with pytest.raises(InvalidInputError, match="volatility"):
        gen.set_regime(volatility=-0.01)
    with pytest.raises(InvalidInputError, match="signal_strength"):
        gen.set_regime(signal_strength=math.nan)
    with pytest.raises(InvalidInputError, match="n must be >= 0"):
        gen.next_bars(-1)
    assert len(gen.next_bars(0)) == 0
    assert gen.bars_emitted == 0
