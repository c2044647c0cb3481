"""Scoring a fitted predictor: metrics per split part, and paired counts against a yardstick.

Shared by the candidates and the baselines so both are measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from monitors.gates import PairedCounts
from trainers.dataset import PARTS, Dataset
from trainers.metadata import SplitMetrics
from trainers.metrics import classification_metrics

FloatArray = npt.NDArray[np.float64]
Predict = Callable[[npt.NDArray[np.float32]], FloatArray]


def split_metrics(
    predict: Predict, data: Dataset, fwd_returns: FloatArray, *, window: int
) -> SplitMetrics:
    """Metrics of every split part, each row scored from its own (windowed) input."""
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
