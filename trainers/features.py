"""The one feature function, shared by training and live scoring.

Row t of the feature matrix depends only on bars ``t - lookback + 1 .. t``, and
is bit-identical whether it is computed on the full history or on
``bars.tail(lookback)``: live scoring must see exactly what training saw. So
there are no infinite-memory recursions (classic EMA, Wilder RSI): every
window is finite, and every windowed sum is an element-wise sum of shifted
slices in a fixed order, whose rounding does not depend on the row's offset
(cumsum-based rolling sums do). All features are scale-free, so a model
trained on a 60,000 price works on a 100 price.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from trainers.data import Bars, FloatArray, IntArray
from trainers.dataset import Dataset
from trainers.errors import InvalidInputError
from trainers.splits import chronological_split
from trainers.targets import DIRECTION, RETURN, TARGETS, Target

BoolArray = npt.NDArray[np.bool_]

_RETURN_LAGS: Final = (1, 2, 3, 5, 10, 20)
_VOL_WINDOWS: Final = (10, 20)
_RSI_WINDOW: Final = 14
_MACD_FAST, _MACD_SLOW, _MACD_SIGNAL = 12, 26, 9
# A truncated EMA over 2 x span bars keeps ~98% of the classic EMA's weight mass.
_EMA_TRUNCATION: Final = 2
_VOLUME_WINDOW: Final = 20
# A volume std this small relative to its mean is rounding noise, not variation.
_VOLUME_STD_RTOL: Final = 1e-9


def _ema_window(span: int) -> int:
    return _EMA_TRUNCATION * span


# Bars each feature needs; the largest is MACD's signal line: an EMA over MACD values,
# each of which needs the slow EMA's window.
_LOOKBACK: Final = max(
    max(_RETURN_LAGS) + 1,
    max(_VOL_WINDOWS) + 1,
    _RSI_WINDOW + 1,
    _ema_window(_MACD_SLOW) + _ema_window(_MACD_SIGNAL) - 1,
    _VOLUME_WINDOW,
)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What a model was trained on; stored in every model's metadata.

    ``lookback``: row t depends only on bars ``t - lookback + 1 .. t``.
    ``label_horizon``: the label of row t looks ``label_horizon`` bars ahead.
    """

    version: int
    names: tuple[str, ...]
    lookback: int
    label_horizon: int = 1

    def to_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "names": list(self.names),
            "lookback": self.lookback,
            "label_horizon": self.label_horizon,
        }


FEATURE_SPEC: Final = FeatureSpec(
    version=1,
    names=(
        *(f"ret_{k}" for k in _RETURN_LAGS),
        *(f"vol_{w}" for w in _VOL_WINDOWS),
        f"rsi_{_RSI_WINDOW}",
        "macd",
        "macd_signal",
        "macd_hist",
        "range",
        "close_pos",
        f"volume_z{_VOLUME_WINDOW}",
    ),
    lookback=_LOOKBACK,
    label_horizon=1,
)
"""Features, all scale-free:

- ``ret_k``: log(close[t] / close[t-k]).
- ``vol_w``: population std of the last w one-bar log returns.
- ``rsi_14``: sum of gains / (sum of gains + sum of losses) of the last 14 one-bar
  log returns, in [0, 1] (0.5 when flat).
- ``macd``: (EMA12 - EMA26) / close; ``macd_signal``: EMA9 of ``macd``;
  ``macd_hist`` = macd - macd_signal. EMAs use normalised weights truncated to
  2 x span bars.
- ``range``: (high - low) / close; ``close_pos``: (close - low) / (high - low),
  0.5 when high == low.
- ``volume_z20``: (volume - mean) / std over the last 20 bars, 0 when std is 0.
"""


FLOAT32_MAX: Final = float(np.finfo(np.float32).max)
"""Models run on float32 (ONNX): a feature beyond this is infinite to them."""
MIN_PRICE: Final = 1e-18
MAX_PRICE: Final = 1e18
"""Prices the features can represent. The largest feature of prices in
``MIN_PRICE..MAX_PRICE`` is a ratio of two of them (``macd``, ``range``): at most
1e36, within float32's 3.4e38; log returns stay below 83. A price outside
(1e300 beside 100) makes a float32 feature infinite and that row untrainable."""
MAX_VOLUME: Final = 1e150
"""Volumes the features can represent: ``volume_z20`` squares deviations of 20
volumes in float64 (max 1.8e308); the z-score itself is scale-free."""


def _validate(bars: Bars) -> None:
    for name in ("open", "high", "low", "close", "volume"):
        col = np.asarray(getattr(bars, name), dtype=np.float64)
        ok = np.isfinite(col) & ((col >= 0) if name == "volume" else (col > 0))
        if not ok.all():
            i = int(np.argmin(ok))
            need = "finite and >= 0" if name == "volume" else "finite and positive"
            raise InvalidInputError(
                f"bar {name} must be {need}, got {float(col[i])} at index {i} "
                f"(ts {int(bars.ts[i])})"
            )


def _lagged(x: FloatArray, w: int) -> FloatArray:
    """Row ``j`` of the ``(w, n - w + 1)`` result is ``x[j : j + n - w + 1]``: column t holds
    the window ending at ``x[t + w - 1]``, oldest first. C-contiguous, for ``_sum_rows``."""
    x = np.ascontiguousarray(x)
    view = np.ndarray((w, len(x) - w + 1), x.dtype, x, strides=(x.itemsize, x.itemsize))
    return np.ascontiguousarray(view)


def _sum_rows(terms: FloatArray) -> FloatArray:
    """Column sums of ``terms``, added row by row, oldest first (``acc += row``).

    numpy reduces the first axis of a C-contiguous array in exactly that order
    (tests/test_features.py pins it against a slice-by-slice loop), so a
    column's rounding depends only on its own window, not on where the window
    sits in the series. A handful of numpy calls instead of one per window
    element: live scoring of one bar is dominated by call overhead.
    """
    out: FloatArray = np.add.reduce(terms, axis=0)
    return out


def _rolled(x: FloatArray, w: int, reduce: Callable[[FloatArray], FloatArray]) -> FloatArray:
    """``reduce(_lagged(x, w))`` aligned to ``x``: NaN where a window is incomplete."""
    out = np.full(len(x), np.nan)
    if len(x) >= w:
        out[w - 1 :] = reduce(_lagged(x, w))
    return out


def _windowed_dot(x: FloatArray, weights: FloatArray) -> FloatArray:
    """``out[t] = sum_j weights[j] * x[t - W + 1 + j]`` (oldest first); NaN for t < W - 1."""
    return _rolled(x, len(weights), lambda lagged: _sum_rows(lagged * weights[:, None]))


def _rolling_sum(x: FloatArray, w: int) -> FloatArray:
    return _rolled(x, w, _sum_rows)


def _rolling_mean_std(x: FloatArray, w: int) -> tuple[FloatArray, FloatArray]:
    """Rolling mean and population std, two-pass (no catastrophic cancellation)."""
    mean = _rolling_sum(x, w) / w

    def std(lagged: FloatArray) -> FloatArray:
        d = lagged - mean[w - 1 :]
        out: FloatArray = np.sqrt(_sum_rows(d * d) / w)
        return out

    return mean, _rolled(x, w, std)


@functools.cache
def _ema_weights(span: int) -> FloatArray:
    """Normalised EMA weights over a truncated window, oldest first."""
    alpha = 2.0 / (span + 1)
    lags = np.arange(_ema_window(span) - 1, -1, -1, dtype=np.float64)
    w: FloatArray = (1.0 - alpha) ** lags
    w /= float(w.sum())
    w.flags.writeable = False  # cached and shared
    return w


def _safe_ratio(num: FloatArray, den: FloatArray, ok: BoolArray, fallback: float) -> FloatArray:
    out = np.full(len(num), fallback)
    np.divide(num, den, out=out, where=ok)
    # Keep NaN (too little history) where the inputs are NaN.
    out[np.isnan(num) | np.isnan(den)] = np.nan
    return out


def _features_unchecked(bars: Bars) -> FloatArray:
    close = np.asarray(bars.close, dtype=np.float64)
    high = np.asarray(bars.high, dtype=np.float64)
    low = np.asarray(bars.low, dtype=np.float64)
    volume = np.asarray(bars.volume, dtype=np.float64)
    n = len(close)
    cols: list[FloatArray] = []

    for k in _RETURN_LAGS:
        r = np.full(n, np.nan)
        if n > k:
            r[k:] = np.log(close[k:] / close[:-k])
        cols.append(r)
    r1 = cols[0]

    for w in _VOL_WINDOWS:
        cols.append(_rolling_mean_std(r1, w)[1])

    gains = _rolling_sum(np.maximum(r1, 0.0), _RSI_WINDOW)
    losses = _rolling_sum(np.maximum(-r1, 0.0), _RSI_WINDOW)
    total = gains + losses
    cols.append(_safe_ratio(gains, total, total > 0, 0.5))

    fast = _windowed_dot(close, _ema_weights(_MACD_FAST))
    slow = _windowed_dot(close, _ema_weights(_MACD_SLOW))
    macd = (fast - slow) / close
    signal = _windowed_dot(macd, _ema_weights(_MACD_SIGNAL))
    cols += [macd, signal, macd - signal]

    span = high - low
    cols.append(span / close)
    cols.append(_safe_ratio(close - low, span, span > 0, 0.5))

    mean, std = _rolling_mean_std(volume, _VOLUME_WINDOW)
    ok = (std > 0) & (std > _VOLUME_STD_RTOL * np.abs(mean))
    cols.append(_safe_ratio(volume - mean, std, ok, 0.0))

    out = np.column_stack(cols) if n else np.empty((0, len(cols)))
    out[: FEATURE_SPEC.lookback - 1] = np.nan
    return out


def compute_features(bars: Bars) -> FloatArray:
    """Feature matrix, shape ``(len(bars), len(FEATURE_SPEC.names))``, float64.

    Rows ``t < lookback - 1`` are NaN. Raises InvalidInputError for non-finite or
    non-positive prices and non-finite or negative volume.
    """
    _validate(bars)
    return _features_unchecked(bars)


def latest_features(bars: Bars) -> FloatArray | None:
    """Feature row (1-D) of the last bar, from ``bars.tail(lookback)`` only.

    None if there are fewer than ``lookback`` bars.
    """
    if len(bars) < FEATURE_SPEC.lookback:
        return None
    row: FloatArray = compute_features(bars.tail(FEATURE_SPEC.lookback))[-1]
    return row


def _close(bars: Bars) -> FloatArray:
    _validate(bars)
    return np.asarray(bars.close, dtype=np.float64)


def _check_horizon(horizon: int) -> None:
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise InvalidInputError(f"horizon must be an integer >= 1, got {horizon!r}")


def forward_returns(bars: Bars, horizon: int = 1) -> FloatArray:
    """``log(close[t+h] / close[t])`` for ``h = horizon``; the last ``h`` rows are NaN."""
    _check_horizon(horizon)
    close = _close(bars)
    out = np.full(len(close), np.nan)
    if len(close) > horizon:
        out[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    return out


def past_returns(bars: Bars, horizon: int = 1) -> FloatArray:
    """``log(close[t] / close[t-h])``, the last ``h``-bar return known at t; the first ``h``
    rows are NaN. The "last return" yardstick of a return target (``trainers.baselines``)."""
    _check_horizon(horizon)
    close = _close(bars)
    out = np.full(len(close), np.nan)
    if len(close) > horizon:
        out[horizon:] = np.log(close[horizon:] / close[:-horizon])
    return out


def compute_labels(bars: Bars, horizon: int = 1) -> FloatArray:
    """1.0 if ``close[t+h] > close[t]`` else 0.0 (flat is not up), ``h = horizon``; the last
    ``h`` rows are NaN."""
    _check_horizon(horizon)
    close = _close(bars)
    out = np.full(len(close), np.nan)
    if len(close) > horizon:
        out[:-horizon] = (close[horizon:] > close[:-horizon]).astype(np.float64)
    return out


@dataclass(frozen=True, slots=True)
class TrainingMatrix:
    """Rows whose features (in float32 too) and label are all finite, in time order.

    ``ts[i]`` is the timestamp of the bar whose features are ``X[i]``; ``y[i]`` and
    ``fwd_returns[i]`` describe the move from that bar to ``horizon`` bars later:
    ``y`` is the direction label (1.0 up) or, for a ``return`` target, the forward log
    return itself. ``past_returns[i]``: the ``horizon``-bar log return up to that bar
    (0.0 where the bars do not reach back that far). ``excluded_ts``: bars with a full
    lookback and a label whose row was left out anyway because a feature is not finite
    in float32 (a price the features cannot represent in the window): one bad bar costs
    its rows, never the run.
    """

    X: FloatArray
    y: FloatArray
    fwd_returns: FloatArray
    ts: IntArray
    excluded_ts: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    target: Target = DIRECTION
    horizon: int = 1
    past_returns: FloatArray | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def feature_spec(self) -> FeatureSpec:
        """``FEATURE_SPEC`` with this matrix's label horizon, as metadata records it."""
        if self.horizon == FEATURE_SPEC.label_horizon:
            return FEATURE_SPEC
        return replace(FEATURE_SPEC, label_horizon=self.horizon)

    def dataset(self, *, val_fraction: float, test_fraction: float, min_rows: int = 30) -> Dataset:
        """Train, val, test in time order, an embargo of ``FEATURE_SPEC.lookback + horizon``
        rows between them so no row's inputs or label (``horizon`` bars ahead) span two
        parts; the ``Dataset`` carries the matrix's target."""
        split = chronological_split(
            len(self),
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            embargo=FEATURE_SPEC.lookback + self.horizon,
            min_rows=min_rows,
        )
        return Dataset.from_split(self.X, self.y, split, self.target)


def training_matrix(bars: Bars, *, target: Target = DIRECTION, horizon: int = 1) -> TrainingMatrix:
    """Features, labels and forward returns of every bar that has all three, with every
    feature inside float32's range (``excluded_ts`` names the rows that had history and
    a label but not that).

    Labels look ``horizon`` bars ahead, so the last ``horizon`` bars have none; ``target``
    picks the label (``trainers.targets``): the direction over the horizon, or its log
    return. ``horizon=1`` with ``direction`` is the matrix the daemon has always trained on.
    """
    if target not in TARGETS:
        raise InvalidInputError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    features = compute_features(bars)
    fwd = forward_returns(bars, horizon)
    y = fwd.copy() if target == RETURN else compute_labels(bars, horizon)
    labelled = np.isfinite(y) & np.isfinite(fwd)
    labelled[: FEATURE_SPEC.lookback - 1] = False  # warm-up rows are NaN by design
    # NaN compares False: one test for NaN, inf and finite-but-infinite-in-float32.
    representable = (np.abs(features) <= FLOAT32_MAX).all(axis=1)
    keep = labelled & representable
    ts = np.asarray(bars.ts, dtype=np.int64)
    past = np.nan_to_num(past_returns(bars, horizon)[keep], nan=0.0)
    return TrainingMatrix(
        X=np.ascontiguousarray(features[keep]),
        y=y[keep],
        fwd_returns=fwd[keep],
        ts=ts[keep],
        excluded_ts=ts[labelled & ~representable],
        target=target,
        horizon=horizon,
        past_returns=past,
    )
