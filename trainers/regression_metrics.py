"""Metrics of predicted against realised forward returns (``return`` targets), JSON-ready.

Like ``trainers.metrics.classification_metrics``: every value is a Python float
(``n`` an int) or None where the metric is undefined (a correlation with a constant
prediction, R^2 of constant returns), because metadata is JSON and NaN is not.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from scipy.stats import pearsonr, spearmanr

from trainers.data import FloatArray
from trainers.errors import InvalidInputError
from trainers.metrics import as_1d

MAPE_GUARD: Final = 0.1
"""MAPE counts only rows with ``|y| > MAPE_GUARD x median |y|`` of the scored rows.

An absolute error divided by a return near zero is unbounded: one flat bar would
decide the metric. A guard relative to the rows' own median keeps it scale-free
(minute bars and daily bars alike) and drops only the smallest ~5% of Gaussian
returns; rows with ``y == 0`` never count."""


def _correlation(kind: str, a: FloatArray, b: FloatArray) -> float | None:
    """Pearson or Spearman correlation; None when either side is constant or too short."""
    if len(a) < 2 or float(np.ptp(a)) == 0.0 or float(np.ptp(b)) == 0.0:
        return None
    result = pearsonr(a, b) if kind == "pearson" else spearmanr(a, b)
    value = float(result.statistic)
    return value if np.isfinite(value) else None


def regression_metrics(y_true: FloatArray, y_pred: FloatArray) -> dict[str, float | None]:
    """Metrics of predicted returns ``y_pred`` against realised returns ``y_true``.

    Keys: n, rmse, mae, mape (mean |error| / |y| over the rows ``MAPE_GUARD``
    admits, a fraction; None when none does), r2 (1 - SSE / SST around the mean of
    ``y_true``: out-of-sample it can be negative; None when ``y_true`` is constant),
    pearson, spearman (None when either side is constant), hit_rate (among rows with
    a nonzero true return, the share whose predicted sign matches; a zero
    prediction calls no direction and never hits; None without such rows). Raises
    InvalidInputError for empty, misshapen, unequal or non-finite input.
    """
    y = as_1d("y_true", y_true, None)
    n = len(y)
    if n == 0:
        raise InvalidInputError("cannot compute metrics of 0 rows")
    p = as_1d("y_pred", y_pred, n)
    err = p - y
    mse = float(np.mean(err * err))
    abs_y = np.abs(y)
    guarded = abs_y > MAPE_GUARD * float(np.median(abs_y))
    mape = float(np.mean(np.abs(err[guarded]) / abs_y[guarded])) if guarded.any() else None
    centred = y - float(np.mean(y))
    sst = float(centred @ centred)
    moved = y != 0.0
    hit = float(np.mean(np.sign(p[moved]) == np.sign(y[moved]))) if moved.any() else None
    return {
        "n": n,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(err))),
        "mape": mape,
        "r2": 1.0 - float(err @ err) / sst if sst > 0 else None,
        "pearson": _correlation("pearson", y, p),
        "spearman": _correlation("spearman", y, p),
        "hit_rate": hit,
    }
