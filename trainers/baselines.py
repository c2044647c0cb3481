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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from monitors.base import NullMonitor
from trainers.config import TrainConfig, json_safe
from trainers.dataset import Dataset
from trainers.errors import InsufficientDataError
from trainers.evaluation import split_metrics
from trainers.metadata import BaselineRecord, Params, SplitMetrics
from trainers.splits import Split, walk_forward_splits
from trainers.table import make_trainer

FloatArray = npt.NDArray[np.float64]

MAJORITY: Final = "naive"
PERSISTENCE: Final = "persistence"
BASELINES: Final = (MAJORITY, PERSISTENCE)


@dataclass(frozen=True, slots=True)
class Yardstick:
    """A fitted baseline: its metrics, and its predictions on every out-of-sample block.

    ``blocks`` maps a block's first row to the baseline's up-probabilities on
    it: the test split (fitted on the run's split) and each earlier walk-forward
    test block (refitted on that fold's train part).
    """

    name: str
    params: Params
    metrics: SplitMetrics
    blocks: Mapping[int, FloatArray]

    @property
    def val_accuracy(self) -> float:
        value = self.metrics.val.get("accuracy")
        return -1.0 if value is None else float(value)

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


def fit_yardsticks(data: Dataset, fwd_returns: FloatArray, config: TrainConfig) -> list[Yardstick]:
    """Both baselines, fitted on the run's split and on every earlier fold."""
    folds = earlier_folds(data, config)
    out = []
    for name in BASELINES:
        # A yardstick, not a candidate: nothing for a monitor to stop.
        model = make_trainer(name).fit(data, NullMonitor(), config.seed)
        blocks = {data.split.test.start: model.predict_proba(data.X_test)}
        for split in folds:
            fold = Dataset(data.features, data.labels, split)
            refit = make_trainer(name).fit(fold, NullMonitor(), config.seed)
            blocks[split.test.start] = refit.predict_proba(fold.inputs("test", 1))
        metrics = split_metrics(model.predict_proba, data, fwd_returns, window=1)
        out.append(Yardstick(name, json_safe(dict(model.params)), metrics, blocks))
    return out


def choose_yardstick(yardsticks: list[Yardstick]) -> Yardstick:
    """The baseline more accurate on validation; the majority class on a tie."""
    return max(yardsticks, key=lambda y: y.val_accuracy)
