"""Binary up/down classification metrics, JSON-ready.

Every value is a Python float (``n`` an int) or None where the metric is
undefined (ROC AUC with one class, precision without positive predictions):
metadata is JSON, and NaN is not.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from trainers.data import FloatArray
from trainers.errors import InvalidInputError

PROBA_CLIP = 1e-7
"""log_loss clips probabilities to [PROBA_CLIP, 1 - PROBA_CLIP] so one sure miss stays finite."""


def as_1d(
    name: str, values: npt.ArrayLike, n: int | None, *, against: str = "y_true"
) -> FloatArray:
    """``values`` as a finite 1-D float64 array of ``n`` rows (any when None; ``against``
    names the array that has ``n``), or ``InvalidInputError`` naming ``name``; shared with
    ``trainers.regression_metrics`` and ``trainers.comparison``."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise InvalidInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise InvalidInputError(f"{name} has {len(arr)} rows, {against} has {n}")
    if not np.isfinite(arr).all():
        i = int(np.argmax(~np.isfinite(arr)))
        raise InvalidInputError(f"{name} must be finite, got {float(arr[i])} at index {i}")
    return arr


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def roc_auc(y_true: FloatArray, proba_up: FloatArray) -> float | None:
    """Mann-Whitney ROC AUC from average ranks (ties count half); None with one class."""
    pos = y_true == 1.0
    n_pos = int(pos.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(proba_up)
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def classification_metrics(
    y_true: FloatArray,
    proba_up: FloatArray,
    fwd_returns: FloatArray | None = None,
    threshold: float = 0.5,
) -> dict[str, float | None]:
    """Metrics of up-probabilities against 0/1 labels; "up" is predicted when proba >= threshold.

    Keys: n, accuracy, precision, recall, f1, roc_auc, log_loss, brier,
    positive_rate (share of rows predicted up), base_rate (share of rows labelled
    up), directional_accuracy (among rows with a nonzero forward return, share
    where the predicted direction matches the return's sign; None without
    returns). Raises InvalidInputError for empty, misshapen or non-finite input,
    labels other than 0/1, or probabilities outside [0, 1].
    """
    y = as_1d("y_true", y_true, None)
    n = len(y)
    if n == 0:
        raise InvalidInputError("cannot compute metrics of 0 rows")
    if not np.isin(y, (0.0, 1.0)).all():
        bad = float(y[~np.isin(y, (0.0, 1.0))][0])
        raise InvalidInputError(f"y_true must hold only 0.0 and 1.0, got {bad}")
    p = as_1d("proba_up", proba_up, n)
    if ((p < 0.0) | (p > 1.0)).any():
        bad = float(p[(p < 0.0) | (p > 1.0)][0])
        raise InvalidInputError(f"proba_up must be in [0, 1], got {bad}")
    if not 0.0 <= threshold <= 1.0:  # also rejects NaN
        raise InvalidInputError(f"threshold must be in [0, 1], got {threshold!r}")

    pred = p >= threshold
    actual = y == 1.0
    tp = float(np.sum(pred & actual))
    precision = _ratio(tp, float(pred.sum()))
    recall = _ratio(tp, float(actual.sum()))
    f1: float | None = None
    if precision is not None and recall is not None:
        total = precision + recall
        f1 = 2.0 * precision * recall / total if total > 0 else 0.0

    clipped = np.clip(p, PROBA_CLIP, 1.0 - PROBA_CLIP)
    log_loss = -float(np.mean(y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped)))

    directional: float | None = None
    if fwd_returns is not None:
        r = as_1d("fwd_returns", fwd_returns, n)
        moved = r != 0.0
        hits = float(np.sum(pred[moved] == (r[moved] > 0.0)))
        directional = _ratio(hits, float(moved.sum()))

    return {
        "n": n,
        "accuracy": float(np.mean(pred == actual)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(y, p),
        "log_loss": log_loss,
        "brier": float(np.mean((p - y) ** 2)),
        "positive_rate": float(np.mean(pred)),
        "base_rate": float(np.mean(actual)),
        "directional_accuracy": directional,
    }
