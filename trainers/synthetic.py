"""A seedable synthetic market for the demo, tests and benchmarks.

One-bar log returns follow an AR(1) process ``r[t] = phi * r[t-1] + noise`` with
``phi = -MEAN_REVERSION x signal_strength``: at strength 0 the returns are
i.i.d. (nothing to learn); at 1 the sign of the last return predicts the next
direction about 63% of the time (mean reversion), which a tree model finds
through the ``ret_1`` feature; negative strengths turn it into momentum. The
noise is scaled so that the stationary return std equals ``volatility``.

Each bar consumes one fixed-size block of the random stream, and all carried
state (last return, log price, close) is updated with the same floating-point
operations in any chunking, so the stream is identical however it is sliced.

``planted_bars`` is the other generator, for honest-statistics tests and
benches: a signal of known strength at a chosen lag, ``r[t] = phi * r[t-lag] +
noise``, specified by the directional accuracy the planted rule truly has, so a
test can ask whether a measured accuracy, or a gate's verdict, matches the truth.

``planted_return_bars`` plants a signal for ``return`` targets: the next
``horizon``-bar log return depends on the past ``horizon``-bar return (the
``ret_h`` feature when ``h`` is one of its lags). ``random_walk_bars`` is the null:
i.i.d. Gaussian returns, nothing to learn.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy.signal import lfilter

from trainers.data import Bars, FloatArray, IntArray, validate_symbol
from trainers.errors import InvalidInputError

MEAN_REVERSION: Final = 0.4
"""AR(1) coefficient magnitude at signal_strength 1.0 (theoretical hit rate ~63%)."""
_MAX_PHI: Final = 0.9  # keeps the AR(1) process stationary at any strength
_DRAWS_PER_BAR: Final = 4  # return noise, upper wick, lower wick, volume
_WICK_SCALE: Final = 0.5  # wick length in units of the per-bar volatility
_BASE_VOLUME: Final = 1000.0
_START_TS: Final = 1_735_689_600  # 2025-01-01T00:00:00Z


def _check_volatility(volatility: float) -> None:
    if not (math.isfinite(volatility) and volatility > 0):
        raise InvalidInputError(f"volatility must be finite and > 0, got {volatility!r}")


def _check_series(
    seed: int, start_price: float, volatility: float, bar_seconds: int, start_ts: int
) -> None:
    """The arguments every generated series shares; InvalidInputError names a bad one."""
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}")
    if not (math.isfinite(start_price) and start_price > 0):
        raise InvalidInputError(f"start_price must be finite and > 0, got {start_price!r}")
    _check_volatility(volatility)
    if bar_seconds < 1:
        raise InvalidInputError(f"bar_seconds must be >= 1, got {bar_seconds}")
    if start_ts < 0:
        raise InvalidInputError(f"start_ts must be >= 0, got {start_ts}")


def _check_strength(signal_strength: float) -> None:
    if not math.isfinite(signal_strength):
        raise InvalidInputError(f"signal_strength must be finite, got {signal_strength!r}")


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """Parameters of one synthetic symbol; the symbol and seed together pick the stream."""

    symbol: str
    seed: int
    start_price: float = 100.0
    volatility: float = 0.01
    signal_strength: float = 0.0
    bar_seconds: int = 60
    start_ts: int = _START_TS

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        if self.seed < 0:
            raise InvalidInputError(f"seed must be >= 0, got {self.seed}")
        if not (math.isfinite(self.start_price) and self.start_price > 0):
            raise InvalidInputError(f"start_price must be finite and > 0, got {self.start_price!r}")
        _check_volatility(self.volatility)
        _check_strength(self.signal_strength)
        if self.bar_seconds < 1:
            raise InvalidInputError(f"bar_seconds must be >= 1, got {self.bar_seconds}")
        if self.start_ts < 0:
            raise InvalidInputError(f"start_ts must be >= 0, got {self.start_ts}")


class MarketGenerator:
    """An endless, deterministic bar stream; ``set_regime`` changes it from the next bar on."""

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self._rng = np.random.default_rng([spec.seed, zlib.crc32(spec.symbol.encode())])
        self._volatility = spec.volatility
        self._strength = spec.signal_strength
        self._index = 0
        self._last_return = 0.0
        self._log_price = math.log(spec.start_price)
        self._last_close = spec.start_price

    @property
    def volatility(self) -> float:
        return self._volatility

    @property
    def signal_strength(self) -> float:
        return self._strength

    @property
    def bars_emitted(self) -> int:
        return self._index

    def set_regime(
        self, *, volatility: float | None = None, signal_strength: float | None = None
    ) -> None:
        """Change volatility and/or signal strength for every later bar (drift scenarios)."""
        if volatility is not None:
            _check_volatility(volatility)
            self._volatility = volatility
        if signal_strength is not None:
            _check_strength(signal_strength)
            self._strength = signal_strength

    def next_bars(self, n: int) -> Bars:
        """The next ``n`` bars of the stream (valid OHLCV, timestamps continue)."""
        if n < 0:
            raise InvalidInputError(f"n must be >= 0, got {n}")
        if n == 0:
            return Bars.empty()
        z = self._rng.standard_normal((n, _DRAWS_PER_BAR))
        sigma = self._volatility
        phi = min(max(-MEAN_REVERSION * self._strength, -_MAX_PHI), _MAX_PHI)

        noise = sigma * math.sqrt(1.0 - phi * phi) * z[:, 0]
        returns = np.asarray(
            lfilter([1.0], [1.0, -phi], noise, zi=[phi * self._last_return])[0],
            dtype=np.float64,
        )
        ts = self.spec.start_ts + self.spec.bar_seconds * np.arange(
            self._index, self._index + n, dtype=np.int64
        )
        bars, self._log_price = _bars_from_returns(
            ts, returns, z, log_price=self._log_price, last_close=self._last_close, sigma=sigma
        )

        self._index += n
        self._last_return = float(returns[-1])
        self._last_close = float(bars.close[-1])
        return bars


def _bars_from_returns(
    ts: IntArray,
    returns: FloatArray,
    z: FloatArray,
    *,
    log_price: float,
    last_close: float,
    sigma: float,
) -> tuple[Bars, float]:
    """Bars whose one-bar log returns are ``returns``, continuing from ``log_price`` and
    ``last_close``; and the log price after the last bar.

    ``z`` is the ``(n, _DRAWS_PER_BAR)`` block of standard normals the bars were drawn
    with: column 0 drove the returns (big moves trade more volume), columns 1-3 give
    the wicks and the volume.
    """
    # add.accumulate is strictly sequential, so chunking does not change the rounding.
    log_prices = np.cumsum(np.concatenate(([log_price], returns)))[1:]
    close = np.exp(log_prices)
    open_ = np.concatenate(([last_close], close[:-1]))
    high = np.maximum(open_, close) * np.exp(_WICK_SCALE * sigma * np.abs(z[:, 1]))
    low = np.minimum(open_, close) * np.exp(-_WICK_SCALE * sigma * np.abs(z[:, 2]))
    volume = _BASE_VOLUME * np.exp(0.3 * z[:, 3]) * (1.0 + np.abs(z[:, 0]))
    bars = Bars(ts=ts, open=open_, high=high, low=low, close=close, volume=volume)
    return bars, float(log_prices[-1])


def generate_bars(spec: MarketSpec, n: int) -> Bars:
    """The first ``n`` bars of ``spec``'s stream."""
    return MarketGenerator(spec).next_bars(n)


def phi_for_accuracy(accuracy: float) -> float:
    """The ``phi`` of ``planted_bars`` whose planted rule has directional ``accuracy``.

    For a stationary Gaussian process with one lag, ``corr(r[t], r[t-lag]) = phi``
    and ``P(sign r[t] = sign(phi * r[t-lag])) = 1/2 + arcsin(|phi|) / pi``
    (Sheppard's formula), so ``phi = sin(pi * (accuracy - 1/2))``. ``accuracy``
    must be in [0.5, 1): 0.5 is no signal, 1 would need ``phi = 1``, a random
    walk of returns that is not stationary.
    """
    _check_accuracy(accuracy)
    return math.sin(math.pi * (accuracy - 0.5))


def accuracy_for_phi(phi: float) -> float:
    """The true directional accuracy of the rule ``sign(phi * r[t-lag])``: the inverse of
    ``phi_for_accuracy`` (a negative ``phi``, planted reversal, has the accuracy of ``|phi|``)."""
    _check_phi(phi)
    return 0.5 + math.asin(abs(phi)) / math.pi


def planted_bars(
    n_bars: int,
    *,
    seed: int,
    accuracy: float | None = None,
    phi: float | None = None,
    lag: int = 1,
    start_price: float = 100.0,
    volatility: float = 0.01,
    bar_seconds: int = 60,
    start_ts: int = _START_TS,
) -> Bars:
    """``n_bars`` bars whose one-bar log returns follow ``r[t] = phi * r[t-lag] + e[t]``.

    Give the signal as ``accuracy`` (the true hit rate of predicting the sign of
    ``r[t-lag]``, ``phi_for_accuracy``) or as ``phi`` in (-1, 1), not both. The
    ``e[t]`` are i.i.d. normal, scaled so that the stationary return std is
    ``volatility``; accuracy 0.5 (phi 0) is a pure Gaussian random walk. The
    first ``lag`` returns are drawn from the stationary law itself, so the
    series is stationary from its first bar (exactly, where a burn-in would
    only approach it); only returns ``lag`` apart are correlated.

    Bars are those of ``MarketGenerator``: open is the previous close (the first
    opens at ``start_price``), high and low bracket open and close by random
    wicks, volume is positive and larger on big moves, ``ts`` steps by
    ``bar_seconds`` from ``start_ts`` (Unix seconds, as in ``Bars``). The same
    arguments give the same bars. Strong signals make prices wander far: the
    log price's std grows like ``volatility * sqrt(n_bars * (1 + phi) / (1 - phi))``.

    Raises ``InvalidInputError`` naming any bad argument.
    """
    if not isinstance(n_bars, int) or n_bars < 1:
        raise InvalidInputError(f"n_bars must be an integer >= 1, got {n_bars!r}")
    if not isinstance(lag, int) or lag < 1:
        raise InvalidInputError(f"lag must be an integer >= 1, got {lag!r}")
    if accuracy is not None and phi is None:
        phi = phi_for_accuracy(accuracy)
    elif phi is None or accuracy is not None:
        raise InvalidInputError(
            "give the signal as accuracy or as phi, not both or neither; "
            f"got accuracy={accuracy!r}, phi={phi!r}"
        )
    _check_phi(phi)
    _check_series(seed, start_price, volatility, bar_seconds, start_ts)

    rng = np.random.default_rng(seed)
    # The lag returns before the first bar: each of the lag interleaved AR(1) chains
    # starts from its stationary law N(0, volatility^2).
    history = volatility * rng.standard_normal(lag)
    z = rng.standard_normal((n_bars, _DRAWS_PER_BAR))
    noise = volatility * math.sqrt(1.0 - phi * phi) * z[:, 0]
    # Filtering the history as if it were noise reproduces it as the first lag outputs
    # (nothing lies lag bars before it); every later output is phi * r[t-lag] + e[t].
    a = np.zeros(lag + 1)
    a[0], a[lag] = 1.0, -phi
    filtered = np.asarray(lfilter([1.0], a, np.concatenate((history, noise))), dtype=np.float64)
    returns = filtered[lag:]
    ts = start_ts + bar_seconds * np.arange(n_bars, dtype=np.int64)
    bars, _ = _bars_from_returns(
        ts, returns, z, log_price=math.log(start_price), last_close=start_price, sigma=volatility
    )
    return bars


_IMPULSE_BARS: Final = 20_000  # long enough for any |strength| <= _MAX_PHI to decay fully
_IMPULSE_TOL: Final = 1e-12


def planted_return_bars(
    n: int,
    *,
    horizon: int,
    strength: float,
    seed: int,
    start_price: float = 100.0,
    volatility: float = 0.01,
    bar_seconds: int = 60,
    start_ts: int = _START_TS,
) -> Bars:
    """``n`` bars whose next-``horizon``-bar log return depends on the features.

    One-bar log returns follow ``r[t] = (strength / h) * (r[t-1] + ... + r[t-h]) +
    e[t]``: each bar drifts by ``strength`` times the mean return of the last ``h``
    bars, i.e. ``strength / h`` times ``log(close[t-1] / close[t-h-1])``. So the
    forward return ``log(close[t+h] / close[t])`` is linear in the past ``h``-bar
    return ``log(close[t] / close[t-h])`` (the ``ret_h`` feature when ``h`` is one of
    its lags; other horizons are sums of ``ret_k``) plus noise: positive ``strength``
    is momentum, negative mean reversion, 0 a Gaussian random walk. For ``h = 5``
    the correlation of past and forward 5-bar returns is about 0.21 at strength 0.3,
    0.39 at 0.5 and 0.60 at 0.7 (out-of-sample R^2 of the best predictor ~ its
    square). ``|strength| <= 0.9`` keeps the process stationary (the coefficients'
    absolute sum is below 1).

    The noise is scaled so that the stationary one-bar return std is ``volatility``
    (from the filter's impulse response), and the process runs through a burn-in as
    long as that response takes to decay below 1e-12, so it is stationary from the
    first bar. Bars are those of ``planted_bars``; the same arguments give the same
    bars. Raises ``InvalidInputError`` naming any bad argument.
    """
    if not isinstance(n, int) or n < 1:
        raise InvalidInputError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(horizon, int) or horizon < 1:
        raise InvalidInputError(f"horizon must be an integer >= 1, got {horizon!r}")
    if not (math.isfinite(strength) and abs(strength) <= _MAX_PHI):
        raise InvalidInputError(
            f"strength must be in [-{_MAX_PHI}, {_MAX_PHI}] (stationary), got {strength!r}"
        )
    _check_series(seed, start_price, volatility, bar_seconds, start_ts)

    a = np.concatenate(([1.0], np.full(horizon, -strength / horizon)))
    impulse = np.zeros(_IMPULSE_BARS)
    impulse[0] = 1.0
    psi = np.asarray(lfilter([1.0], a, impulse), dtype=np.float64)
    scale = volatility / math.sqrt(float(np.sum(psi * psi)))
    alive = np.flatnonzero(np.abs(psi) > _IMPULSE_TOL)
    burn = int(alive[-1]) + 1 if len(alive) else 1

    rng = np.random.default_rng(seed)
    burn_noise = rng.standard_normal(burn)
    z = rng.standard_normal((n, _DRAWS_PER_BAR))
    noise = scale * np.concatenate((burn_noise, z[:, 0]))
    returns = np.asarray(lfilter([1.0], a, noise), dtype=np.float64)[burn:]
    ts = start_ts + bar_seconds * np.arange(n, dtype=np.int64)
    bars, _ = _bars_from_returns(
        ts, returns, z, log_price=math.log(start_price), last_close=start_price, sigma=volatility
    )
    return bars


def random_walk_bars(n: int, *, seed: int, volatility: float = 0.01) -> Bars:
    """``n`` bars of a Gaussian random walk (i.i.d. returns of std ``volatility``): the null
    market on which no target, direction or return, has anything to learn."""
    return planted_return_bars(n, horizon=1, strength=0.0, seed=seed, volatility=volatility)


def _check_accuracy(accuracy: float) -> None:
    if not (math.isfinite(accuracy) and 0.5 <= accuracy < 1.0):
        raise InvalidInputError(f"accuracy must be in [0.5, 1) (0.5: no signal), got {accuracy!r}")


def _check_phi(phi: float) -> None:
    if not (math.isfinite(phi) and -1.0 < phi < 1.0):
        raise InvalidInputError(f"phi must be in (-1, 1) for a stationary series, got {phi!r}")
