"""The yardsticks a candidate must beat, and the honest rows it is judged on.

Two naive rules: the majority class of the training labels (``naive``) and
"the next bar goes the way the last one went" (``persistence``). Whichever is
more accurate on validation is the yardstick. For a series where persistence
is the best predictor, no model is significantly better than it, and beating
only the majority class would be no evidence of skill. (Choosing on validation
rows, which the pooled rows below partly overlap, can only favour the
yardstick: conservative for the candidate.)

The paired test uses every out-of-sample row the run has: the test split and
the walk-forward folds' earlier test blocks (``walk_forward_splits`` tiles them
without overlap), each row predicted by a model fitted only on rows before it.
With three folds that is three times the rows of the test split alone, which
is what lets a real edge of a few points be told from luck.

A ``return`` target has three regression yardsticks instead: ``zero`` (no move
expected: a random walk's best forecast), ``mean`` (the train split's mean return:
drift) and ``last`` (the past ``h``-bar return known at t, ``log(close[t] /
close[t-h])``: momentum). The one with the lowest validation MSE is the yardstick
(``zero`` on a tie), predicting on the same pooled blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from monitors.base import NullMonitor
from trainers.config import TrainConfig, json_safe
from trainers.dataset import PARTS, Dataset
from trainers.errors import InsufficientDataError, InvalidInputError
from trainers.evaluation import split_metrics
from trainers.metadata import BaselineRecord, Params, SplitMetrics
from trainers.regression_metrics import regression_metrics
from trainers.splits import Split, walk_forward_splits
from trainers.table import make_trainer
from trainers.targets import RETURN

FloatArray = npt.NDArray[np.float64]

MAJORITY: Final = "naive"
PERSISTENCE: Final = "persistence"
BASELINES: Final = (MAJORITY, PERSISTENCE)
ZERO: Final = "zero"
MEAN: Final = "mean"
LAST: Final = "last"
RETURN_BASELINES: Final = (ZERO, MEAN, LAST)


@dataclass(frozen=True, slots=True)
class Yardstick:
    """A fitted baseline: its metrics, and its predictions on every out-of-sample block.

    ``blocks`` maps a block's first row to the baseline's predictions on it
    (up-probabilities, or returns for a return target): the test split (fitted on
    the run's split) and each earlier walk-forward test block (refitted on that
    fold's train part).
    """

    name: str
    params: Params
    metrics: SplitMetrics
    blocks: Mapping[int, FloatArray]

    @property
    def val_accuracy(self) -> float:
        value = self.metrics.val.get("accuracy")
        return -1.0 if value is None else float(value)

    @property
    def val_rmse(self) -> float:
        value = self.metrics.val.get("rmse")
        return math.inf if value is None else float(value)

    def record(self) -> BaselineRecord:
        return BaselineRecord(trainer=self.name, params=self.params, metrics=self.metrics)

    def test_split_only(self, data: Dataset) -> Yardstick:
        """The same yardstick judged on the test split alone (see ``fit_yardsticks``)."""
        start = data.split.test.start
        return replace(self, blocks={start: self.blocks[start]})


def earlier_folds(data: Dataset, config: TrainConfig) -> list[Split]:
    """The walk-forward folds before the run's own split; none when folds are off or too big."""
    if not config.walk_forward_folds:
        return []
    try:
        splits = walk_forward_splits(
            len(data.features),
            folds=config.walk_forward_folds,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            embargo=data.split.embargo,
        )
    except InsufficientDataError:
        return []
    return [s for s in splits if s != data.split]


def fit_yardsticks(
    data: Dataset,
    fwd_returns: FloatArray,
    config: TrainConfig,
    *,
    past_returns: FloatArray | None = None,
) -> list[Yardstick]:
    """Every baseline of ``data.target``, fitted on the run's split and on every earlier fold.

    A return target needs ``past_returns`` (``TrainingMatrix.past_returns``, one per
    row) for the ``last`` yardstick; ``InvalidInputError`` without it.
    """
    folds = earlier_folds(data, config)
    if data.target == RETURN:
        if past_returns is None or len(past_returns) != len(data.labels):
            raise InvalidInputError(
                "the return yardsticks need past_returns, one per row (TrainingMatrix.past_returns)"
            )
        return _return_yardsticks(data, folds, np.asarray(past_returns, dtype=np.float64))
    out = []
    for name in BASELINES:
        # A yardstick, not a candidate: nothing for a monitor to stop.
        model = make_trainer(name).fit(data, NullMonitor(), config.seed)
        blocks = {data.split.test.start: model.predict_proba(data.X_test)}
        for split in folds:
            fold = Dataset(data.features, data.labels, split, data.target)
            refit = make_trainer(name).fit(fold, NullMonitor(), config.seed)
            blocks[split.test.start] = refit.predict_proba(fold.inputs("test", 1))
        metrics = split_metrics(model.predict_proba, data, fwd_returns, window=1)
        out.append(Yardstick(name, json_safe(dict(model.params)), metrics, blocks))
    return out


def _return_yardsticks(data: Dataset, folds: list[Split], past: FloatArray) -> list[Yardstick]:
    """``zero``, ``mean`` and ``last``: each a per-row forecast over the whole matrix, scored
    on the run's split; ``mean`` is refitted on each earlier fold's train part."""
    n = len(data.labels)
    labels = np.asarray(data.labels, dtype=np.float64)

    def mean_of(split: Split) -> float:
        return float(np.mean(labels[split.train]))

    forecasts: dict[str, tuple[Params, Callable[[Split], FloatArray]]] = {
        ZERO: ({}, lambda _split: np.zeros(n)),
        MEAN: ({"mean": mean_of(data.split)}, lambda split: np.full(n, mean_of(split))),
        LAST: ({"source": "past_returns"}, lambda _split: past),
    }
    out = []
    for name, (params, forecast) in forecasts.items():
        own = forecast(data.split)
        blocks = {data.split.test.start: own[data.split.test].copy()}
        for split in folds:
            blocks[split.test.start] = forecast(split)[split.test].copy()
        metrics = SplitMetrics(
            **{part: regression_metrics(data.y(part), own[data.rows(part)]) for part in PARTS}
        )
        out.append(Yardstick(name, json_safe(params), metrics, blocks))
    return out


def choose_yardstick(yardsticks: list[Yardstick]) -> Yardstick:
    """The baseline more accurate on validation (the majority class on a tie); for return
    yardsticks the one with the lowest validation RMSE (the first, ``zero``, on a tie)."""
    if yardsticks and "rmse" in yardsticks[0].metrics.val:
        return min(yardsticks, key=lambda y: y.val_rmse)
    return max(yardsticks, key=lambda y: y.val_accuracy)
