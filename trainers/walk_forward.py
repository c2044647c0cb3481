"""Walk-forward evaluation: how stable is a candidate's test accuracy across time?

One train/val/test split gives one test accuracy, which may be luck of the
period. Refitting the same trainer (same parameters and seed) on ``k``
expanding-window folds (``trainers.splits.walk_forward_splits``) gives ``k``
accuracies on consecutive, non-overlapping test blocks; their standard
deviation is what the fold-stability gate judges.

The last fold is the pipeline's own split, so its already fitted model is
reused: ``k`` folds cost ``k - 1`` extra fits. Folds are scored with the native
model (no ONNX export): they measure the training recipe, not an artifact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from monitors.base import TrainingMonitor
from trainers.base import FittedModel
from trainers.dataset import Dataset
from trainers.errors import InsufficientDataError
from trainers.metadata import FoldError, FoldRecord, MeanStd, Rows, WalkForwardRecord
from trainers.metrics import classification_metrics
from trainers.regression_metrics import regression_metrics
from trainers.splits import Split, walk_forward_splits
from trainers.table import make_trainer
from trainers.targets import RETURN


def walk_forward(
    trainer: str,
    params: Mapping[str, Any],
    data: Dataset,
    fwd_returns: npt.NDArray[np.float64],
    *,
    folds: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    last_model: FittedModel,
    monitor_factory: Callable[[], TrainingMonitor],
    predictions: dict[int, npt.NDArray[np.float64]] | None = None,
) -> WalkForwardRecord:
    """Per-fold test metrics and, per metric, their mean and sample std (ddof=1) over folds.

    Data too small for ``folds`` folds gives ``skipped`` (a reason) and a fold
    whose fit fails gives ``error``; both leave the statistics out rather than
    failing the candidate. ``data`` and ``last_model`` are the pipeline's split
    and its model; folds follow ``data.target`` (regression metrics for returns).
    ``predictions``, when given, receives each refitted fold's
    predictions (``FittedModel.predict``) on its test block, by the block's first row: out-of-sample
    rows for the baseline test (``trainers.baselines``).
    """
    try:
        splits = walk_forward_splits(
            len(data.features),
            folds=folds,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            embargo=data.split.embargo,
        )
    except InsufficientDataError as exc:
        return WalkForwardRecord(folds=folds, skipped=str(exc))
    fold_metrics: list[dict[str, float | None]] = []
    per_fold: list[FoldRecord] = []
    for index, split in enumerate(splits):
        fold = Dataset(data.features, data.labels, split, data.target)
        monitor = None
        if split == data.split:
            model = last_model
        else:
            monitor = monitor_factory()
            try:
                model = make_trainer(trainer, **params).fit(fold, monitor, seed)
            except Exception as exc:  # a fold that cannot train leaves the stats out
                error = FoldError(fold=index, type=type(exc).__name__, message=str(exc))
                return WalkForwardRecord(folds=folds, error=error, per_fold=tuple(per_fold))
        predicted = model.predict(fold.inputs("test", model.window))
        if predictions is not None and monitor is not None:
            predictions[split.test.start] = predicted
        metrics = _test_metrics(fold, predicted, fwd_returns[split.test])
        fold_metrics.append(metrics)
        per_fold.append(
            FoldRecord(
                split=split_record(split),
                test=metrics,
                refit=monitor is not None,
                warnings=tuple(monitor.warnings) if monitor is not None else (),
            )
        )
    stats = {
        key: _mean_std([m[key] for m in fold_metrics]) for key in fold_metrics[0] if key != "n"
    }
    return WalkForwardRecord(folds=folds, per_fold=tuple(per_fold), stats=stats)


def _test_metrics(
    fold: Dataset, predicted: npt.NDArray[np.float64], fwd_returns: npt.NDArray[np.float64]
) -> dict[str, float | None]:
    """The fold's test metrics for its target (``trainers.evaluation.split_metrics``'s choice)."""
    if fold.target == RETURN:
        return regression_metrics(fold.y("test"), predicted)
    return classification_metrics(fold.y("test"), predicted, fwd_returns)


def _mean_std(values: list[float | None]) -> MeanStd:
    if any(v is None or not math.isfinite(v) for v in values):
        return MeanStd(mean=None, std=None)
    arr = np.asarray(values, dtype=np.float64)
    return MeanStd(mean=float(arr.mean()), std=float(arr.std(ddof=1)))


def split_record(split: Split) -> Rows:
    """A split's row ranges as recorded in metadata."""
    return Rows(
        train=(split.train.start, split.train.stop),
        val=(split.val.start, split.val.stop),
        test=(split.test.start, split.test.stop),
        embargo=split.embargo,
    )
