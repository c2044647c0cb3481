"""Scoring a fitted predictor: metrics per split part, and paired comparisons with a yardstick.

Shared by the candidates and the baselines so both are measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
from scipy.stats import t

from monitors.gates import PairedCounts
from monitors.return_gates import PairedLosses
from trainers.comparison import diebold_mariano
from trainers.dataset import PARTS, Dataset
from trainers.metadata import SplitMetrics
from trainers.metrics import classification_metrics
from trainers.regression_metrics import regression_metrics
from trainers.targets import RETURN

FloatArray = npt.NDArray[np.float64]
Predict = Callable[[npt.NDArray[np.float32]], FloatArray]


def split_metrics(
    predict: Predict, data: Dataset, fwd_returns: FloatArray, *, window: int
) -> SplitMetrics:
    """Metrics of every split part, each row scored from its own (windowed) input.

    ``predict`` gives what ``data.target`` asks for: P(up) scored by
    ``classification_metrics``, or returns scored by ``regression_metrics``.
    """
    if data.target == RETURN:
        by_part = {
            part: regression_metrics(data.y(part), predict(data.inputs(part, window)))
            for part in PARTS
        }
    else:
        by_part = {
            part: classification_metrics(
                data.y(part), predict(data.inputs(part, window)), fwd_returns[data.rows(part)]
            )
            for part in PARTS
        }
    return SplitMetrics(**by_part)


def paired_counts(
    labels: npt.NDArray[np.float64],
    candidate: Mapping[int, FloatArray],
    baseline: Mapping[int, FloatArray],
    baseline_name: str,
) -> PairedCounts:
    """Discordant rows of candidate vs baseline at the 0.5 threshold, pooled over blocks.

    ``candidate`` and ``baseline`` map a block's first row to up-probabilities of
    its consecutive rows; only blocks both predicted are compared (so a fold the
    candidate could not fit drops out for both sides).
    """
    cand_only = base_only = rows = base_right = 0
    for start, cand in candidate.items():
        base = baseline.get(start)
        if base is None or len(base) != len(cand):
            continue
        up = labels[start : start + len(cand)] == 1.0
        cand_ok = (cand >= 0.5) == up
        base_ok = (base >= 0.5) == up
        cand_only += int(np.sum(cand_ok & ~base_ok))
        base_only += int(np.sum(base_ok & ~cand_ok))
        base_right += int(np.sum(base_ok))
        rows += len(cand)
    return PairedCounts(cand_only, base_only, rows, base_right, baseline_name)


def paired_losses(
    labels: npt.NDArray[np.float64],
    candidate: Mapping[int, FloatArray],
    baseline: Mapping[int, FloatArray],
    baseline_name: str,
    *,
    horizon: int,
) -> PairedLosses:
    """Squared-error losses of candidate vs baseline return forecasts, pooled over blocks,
    and the one-sided Diebold-Mariano test that the candidate's expected loss is lower.

    Blocks are those both predicted (as ``paired_counts``), taken in time order and
    concatenated: labels ``horizon`` bars ahead overlap, so the loss differential is
    MA(``horizon`` - 1) and ``diebold_mariano`` uses a HAC variance of that lag. The
    walk-forward test blocks tile time without gaps, so rows neighbouring across a
    block boundary are neighbours in time too and their overlap is counted. The
    one-sided p-value reads the statistic from the same t(n - 1) as the two-sided one.
    Fewer than 2 paired rows give ``rows`` 0 and p-value 1.
    """
    cand_parts: list[FloatArray] = []
    base_parts: list[FloatArray] = []
    label_parts: list[FloatArray] = []
    for start in sorted(candidate):
        cand, base = candidate[start], baseline.get(start)
        if base is None or len(base) != len(cand):
            continue
        cand_parts.append(np.asarray(cand, dtype=np.float64))
        base_parts.append(np.asarray(base, dtype=np.float64))
        label_parts.append(np.asarray(labels[start : start + len(cand)], dtype=np.float64))
    rows = sum(len(c) for c in cand_parts)
    if rows < 2:
        return PairedLosses(0, len(cand_parts), None, None, 0.0, 1.0, baseline_name, horizon)
    y = np.concatenate(label_parts)
    loss_c = (np.concatenate(cand_parts) - y) ** 2
    loss_b = (np.concatenate(base_parts) - y) ** 2
    test = diebold_mariano(loss_c, loss_b, horizon=horizon)
    p = float(t.sf(test.statistic, rows - 1)) if test.statistic != 0.0 else 1.0
    return PairedLosses(
        rows=rows,
        blocks=len(cand_parts),
        candidate_mse=float(loss_c.mean()),
        baseline_mse=float(loss_b.mean()),
        statistic=test.statistic,
        p_value=p,
        baseline=baseline_name,
        horizon=horizon,
    )
