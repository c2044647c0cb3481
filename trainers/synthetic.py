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
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy.signal import lfilter

from trainers.data import Bars, validate_symbol
from trainers.errors import InvalidInputError

MEAN_REVERSION: Final = 0.4
"""AR(1) coefficient magnitude at signal_strength 1.0 (theoretical hit rate ~63%)."""
_MAX_PHI: Final = 0.9  # keeps the AR(1) process stationary at any strength
_DRAWS_PER_BAR: Final = 4  # return noise, upper wick, lower wick, volume
_WICK_SCALE: Final = 0.5  # wick length in units of the per-bar volatility
_BASE_VOLUME: Final = 1000.0


def _check_volatility(volatility: float) -> None:
    if not (math.isfinite(volatility) and volatility > 0):
        raise InvalidInputError(f"volatility must be finite and > 0, got {volatility!r}")


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
    start_ts: int = 1_735_689_600  # 2025-01-01T00:00:00Z

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
        # add.accumulate is strictly sequential, so chunking does not change the rounding.
        log_price = np.cumsum(np.concatenate(([self._log_price], returns)))[1:]
        close = np.exp(log_price)
        open_ = np.concatenate(([self._last_close], close[:-1]))
        high = np.maximum(open_, close) * np.exp(_WICK_SCALE * sigma * np.abs(z[:, 1]))
        low = np.minimum(open_, close) * np.exp(-_WICK_SCALE * sigma * np.abs(z[:, 2]))
        volume = _BASE_VOLUME * np.exp(0.3 * z[:, 3]) * (1.0 + np.abs(z[:, 0]))
        ts = self.spec.start_ts + self.spec.bar_seconds * np.arange(
            self._index, self._index + n, dtype=np.int64
        )

        self._index += n
        self._last_return = float(returns[-1])
        self._log_price = float(log_price[-1])
        self._last_close = float(close[-1])
        return Bars(ts=ts, open=open_, high=high, low=low, close=close, volume=volume)


def generate_bars(spec: MarketSpec, n: int) -> Bars:
    """The first ``n`` bars of ``spec``'s stream."""
    return MarketGenerator(spec).next_bars(n)
