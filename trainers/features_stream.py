"""Live scoring's features, one bar at a time: O(1) per bar, bit-identical to the batch.

``FeatureStream.push`` returns exactly the row ``compute_features`` would give the
new bar on the whole history: every feature of ``trainers.features`` is a finite
window, so the stream keeps each window's inputs in a small buffer and recomputes
the window's sum per bar with the batch's arithmetic in the batch's order (a
sequential sum, oldest first, of the same products; ``np.log`` for the log returns,
since ``math.log`` rounds differently on about 1 value in 200,000). Running sums
updated by add-and-subtract would be cheaper but round differently, and a model
must see live exactly what it saw in training. The work per bar is bounded by the
largest window (52 closes), whatever the history.
"""

from __future__ import annotations

import math
from collections import deque
from functools import reduce
from itertools import repeat
from operator import add, mul, sub
from typing import Final

import numpy as np

from trainers.data import Bars, FloatArray
from trainers.errors import InvalidInputError
from trainers.features import (
    _EMA_TRUNCATION,
    _MACD_FAST,
    _MACD_SIGNAL,
    _MACD_SLOW,
    _RETURN_LAGS,
    _RSI_WINDOW,
    _VOL_WINDOWS,
    _VOLUME_STD_RTOL,
    _VOLUME_WINDOW,
    FEATURE_SPEC,
    _ema_weights,
    _features_unchecked,
    _validate,
    _windowed_dot,
)

_LOOKBACK: Final = FEATURE_SPEC.lookback
_N_FEATURES: Final = len(FEATURE_SPEC.names)
_W_FAST: Final = tuple(_ema_weights(_MACD_FAST).tolist())
_W_SLOW: Final = tuple(_ema_weights(_MACD_SLOW).tolist())
_W_SIGNAL: Final = tuple(_ema_weights(_MACD_SIGNAL).tolist())
# Inputs each buffer must hold for the newest bar's windows.
_CLOSES: Final = max(max(_RETURN_LAGS) + 1, _EMA_TRUNCATION * _MACD_SLOW)
_RETURNS: Final = max(*_VOL_WINDOWS, _RSI_WINDOW)
_MACDS: Final = _EMA_TRUNCATION * _MACD_SIGNAL
_NAN_ROW: Final = np.full(_N_FEATURES, np.nan)
_NAN_ROW.flags.writeable = False
_COLUMNS: Final = ("open", "high", "low", "close", "volume")


def _sum(terms: list[float]) -> float:
    """``acc = terms[0]; acc += terms[j]``: the batch's ``_sum_rows`` order, so its rounding."""
    total: float = reduce(add, terms)
    return total


def _dot(values: list[float], weights: tuple[float, ...]) -> float:
    """The batch's ``_windowed_dot`` of the last ``len(weights)`` values (oldest first)."""
    total: float = reduce(add, map(mul, values[len(values) - len(weights) :], weights))
    return total


def _mean_std(values: list[float], w: int) -> tuple[float, float]:
    """Mean and population std of the last ``w`` values, two-pass as ``_rolling_mean_std``."""
    window = values[len(values) - w :]
    mean = _sum(window) / w
    d = list(map(sub, window, repeat(mean, w)))
    total: float = reduce(add, map(mul, d, d))
    return mean, math.sqrt(total / w)


def _gains_losses(returns: list[float]) -> tuple[float, float]:
    """The batch's sums of ``np.maximum(r, 0)`` and ``np.maximum(-r, 0)``, in one pass.

    Skipping a zero term leaves a sequential sum's bits unchanged (``acc + 0.0 == acc``
    for ``acc >= +0``, and ``0.0 + t == t``), so each sum adds its nonzero terms in the
    batch's order. Log returns of positive prices are never NaN, which the batch's
    ``np.maximum`` would propagate.
    """
    gains = losses = 0.0
    for r in returns:
        if r > 0.0:
            gains += r
        elif r < 0.0:
            losses -= r  # IEEE: a - b is a + (-b), exactly
    return gains, losses


def _ratio(num: float, den: float, ok: bool, fallback: float) -> float:
    """The batch's ``_safe_ratio`` for one value."""
    if math.isnan(num) or math.isnan(den):
        return math.nan
    return num / den if ok else fallback


class FeatureStream:
    """One symbol's feature state: push a bar, get its feature row.

    Invariant: after ``from_bars(bars)`` and pushes ``b1 .. bk``, ``push`` returned
    ``compute_features(bars + b1 .. bk)[-1]`` for the last bar (NaN before ``lookback``
    bars), bit for bit, and ``rows(m)`` (``m <= keep``) equals the last ``m`` rows of
    that matrix, NaN-padded above when there are fewer bars. ``keep`` is how many
    rows to remember: a sequence model of window ``w`` needs ``w``.

    A push costs the same whatever the history (~13 us against ~100 us for
    ``compute_features`` on the lookback tail). Not thread-safe; ``copy()`` (cheap)
    to try bars without committing them.
    """

    __slots__ = (
        "_closes",
        "_count",
        "_keep",
        "_last_ts",
        "_macds",
        "_returns",
        "_rows",
        "_seen",
        "_volumes",
    )

    def __init__(self, *, keep: int = 1) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidInputError(f"keep must be an integer >= 1, got {keep!r}")
        self._keep = keep
        self._count = 0  # bars in the history, for error messages
        self._seen = 0  # bars pushed through the buffers: rows need a full lookback of them
        self._last_ts: int | None = None
        self._closes: list[float] = []
        self._returns: list[float] = []
        self._macds: list[float] = []
        self._volumes: list[float] = []
        self._rows: deque[FloatArray] = deque(maxlen=keep)

    @classmethod
    def from_bars(cls, bars: Bars, *, keep: int = 1) -> FeatureStream:
        """A stream whose history is ``bars`` (any length, also empty).

        Raises ``InvalidInputError`` exactly when ``compute_features(bars)`` does. Only
        the last ``lookback + keep - 1`` bars are read: the kept rows are the batch's
        own (offset-invariant) rows of that tail, and the buffers hold what pushing the
        tail would have left in them, computed by the batch's helpers, whose arithmetic
        the pushes repeat (tests pin seeding against pushing from the start).
        """
        _validate(bars)
        stream = cls(keep=keep)
        tail = bars.tail(_LOOKBACK + keep - 1)
        n = len(tail)
        stream._count, stream._seen = len(bars), n
        stream._last_ts = int(tail.ts[-1]) if n else None
        if not n:
            return stream
        close = np.asarray(tail.close, dtype=np.float64)
        stream._closes = close[-_CLOSES:].tolist()
        stream._volumes = np.asarray(tail.volume, dtype=np.float64)[-_VOLUME_WINDOW:].tolist()
        last = close[-(_RETURNS + 1) :]
        stream._returns = np.log(last[1:] / last[:-1]).tolist()
        slow = len(_W_SLOW)
        if n >= slow:
            fast_ema = _windowed_dot(close, _ema_weights(_MACD_FAST))
            slow_ema = _windowed_dot(close, _ema_weights(_MACD_SLOW))
            macd = ((fast_ema - slow_ema) / close)[slow - 1 :]
            stream._macds = macd[-_MACDS:].tolist()
        rows = _features_unchecked(tail)[-keep:]
        rows.flags.writeable = False  # its rows are kept: see push
        stream._rows.extend(rows)
        return stream

    @property
    def count(self) -> int:
        """Bars in the history (seed bars plus pushed ones)."""
        return self._count

    @property
    def keep(self) -> int:
        return self._keep

    @property
    def last_ts(self) -> int | None:
        """The newest bar's ts; ``push`` takes only later ones."""
        return self._last_ts

    def push(  # noqa: PLR0917 -- one bar's columns in BarRecord order, as the hot path has them
        self, ts: int, open: float, high: float, low: float, close: float, volume: float
    ) -> FloatArray:
        """Add the next bar; its feature row (read-only, shape ``(n_features,)``).

        Raises ``InvalidInputError``, leaving the stream unchanged, for a ts that is not an
        integer or not after the last one (``Bars`` needs increasing ts), or a value
        ``compute_features`` rejects (its message, with the bar's index in the history).
        """
        if isinstance(ts, bool | float) or not isinstance(ts, int | np.integer):
            raise InvalidInputError(f"bar ts must be an integer, got {ts!r}")
        ts = int(ts)
        if self._last_ts is not None and ts <= self._last_ts:
            raise InvalidInputError(
                f"bar ts must be increasing, got {ts} after {self._last_ts} at index {self._count}"
            )
        o, h, lo, c, v = float(open), float(high), float(low), float(close), float(volume)
        # NaN fails every comparison; one chained test for the common case of a good bar.
        if not (
            0 < o < math.inf
            and 0 < h < math.inf
            and 0 < lo < math.inf
            and 0 < c < math.inf
            and 0 <= v < math.inf
        ):
            for name, value in zip(_COLUMNS, (o, h, lo, c, v), strict=True):
                if not (math.isfinite(value) and (value >= 0 if name == "volume" else value > 0)):
                    need = "finite and >= 0" if name == "volume" else "finite and positive"
                    raise InvalidInputError(
                        f"bar {name} must be {need}, got {value} at index {self._count} (ts {ts})"
                    )
        return self._advance(ts, h, lo, c, v)

    def rows(self, m: int) -> FloatArray:
        """The last ``m`` feature rows, ``(m, n_features)``, oldest first; NaN rows above
        when fewer bars were seen. ``m`` may be 0; above ``keep`` it raises
        ``InvalidInputError``."""
        if not 0 <= m <= self._keep:
            raise InvalidInputError(f"rows(m) needs 0 <= m <= keep ({self._keep}), got {m}")
        have = min(m, len(self._rows))
        kept = [self._rows[i] for i in range(len(self._rows) - have, len(self._rows))]
        return np.array([_NAN_ROW] * (m - have) + kept, dtype=np.float64).reshape(m, _N_FEATURES)

    def copy(self) -> FeatureStream:
        """An independent stream with the same history (rows are read-only, so shared)."""
        other = FeatureStream.__new__(FeatureStream)
        other._keep, other._count, other._seen = self._keep, self._count, self._seen
        other._last_ts = self._last_ts
        other._closes, other._returns = self._closes.copy(), self._returns.copy()
        other._macds, other._volumes = self._macds.copy(), self._volumes.copy()
        other._rows = self._rows.copy()
        return other

    def _advance(self, ts: int, high: float, low: float, close: float, volume: float) -> FloatArray:
        """Push a validated bar through the buffers; its row."""
        closes, returns, macds, volumes = self._closes, self._returns, self._macds, self._volumes
        self._count += 1
        self._seen += 1
        self._last_ts = ts
        closes.append(close)
        if len(closes) > _CLOSES:
            del closes[0]
        volumes.append(volume)
        if len(volumes) > _VOLUME_WINDOW:
            del volumes[0]
        full = self._seen >= _LOOKBACK
        logs: list[float] = []
        if full:
            # One np.log call: the batch's log, element for element.
            ratios = [close / closes[-1 - k] for k in _RETURN_LAGS]
            logs = np.log(np.array(ratios)).tolist()
            returns.append(logs[0])
        elif len(closes) > 1:
            returns.append(np.log(np.array([close / closes[-2]])).tolist()[0])
        if len(returns) > _RETURNS:
            del returns[0]
        if len(closes) >= len(_W_SLOW):
            macds.append((_dot(closes, _W_FAST) - _dot(closes, _W_SLOW)) / close)
            if len(macds) > _MACDS:
                del macds[0]
        if not full:
            self._rows.append(_NAN_ROW)
            return _NAN_ROW

        row = logs
        row += [_mean_std(returns, w)[1] for w in _VOL_WINDOWS]
        rsi = returns[len(returns) - _RSI_WINDOW :]
        gains, losses = _gains_losses(rsi)
        total = gains + losses
        row.append(_ratio(gains, total, total > 0, 0.5))
        macd = macds[-1]
        signal = _dot(macds, _W_SIGNAL)
        row += [macd, signal, macd - signal]
        span = high - low
        row.append(span / close)
        row.append(_ratio(close - low, span, span > 0, 0.5))
        mean, std = _mean_std(volumes, _VOLUME_WINDOW)
        ok = std > 0 and std > _VOLUME_STD_RTOL * abs(mean)
        row.append(_ratio(volume - mean, std, ok, 0.0))
        out = np.array(row, dtype=np.float64)
        out.flags.writeable = False  # kept for rows(): callers must not change it
        self._rows.append(out)
        return out
