"""The naive baseline every gate compares against: always predict the training positive rate.

Its accuracy is that of the majority class, which is what a model must beat to
have learnt anything. For a ``return`` target it predicts the training mean return,
the constant with the least training squared error. It exports to ONNX like any
model so the registry can hold it and the conformance suite covers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from onnx import TensorProto, helper

from monitors.base import Action, TrainingMonitor
from trainers.base import abort_reason
from trainers.dataset import Dataset, as_model_input, validate_dataset
from trainers.errors import InvalidInputError, TrainingAborted
from trainers.onnx_graph import save_rule_graph
from trainers.onnx_io import PREDICTION_OUTPUT, PROBABILITIES_OUTPUT
from trainers.targets import DIRECTION, RETURN, Target


class NaiveModel:
    """Constant P(up) (direction) or return (``target`` return); the value is rounded to
    float32 so the ONNX graph reproduces it exactly."""

    trainer = "naive"
    n_params = 1
    window = 1

    def __init__(self, p_up: float, n_features: int, *, target: Target = DIRECTION) -> None:
        self.target = target
        self.p_up = float(np.float32(p_up))  # the mean return, for a return target
        self.n_features = n_features
        self.params: Mapping[str, Any] = (
            {"p_up": self.p_up} if target == DIRECTION else {"mean_return": self.p_up}
        )

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """P(up) for direction; the training mean return for return."""
        rows = as_model_input(x, self.n_features, self.window)
        return np.full(len(rows), self.p_up, dtype=np.float64)

    def predict_proba(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        if self.target != DIRECTION:
            raise InvalidInputError(f"{self.trainer}: predicts returns, not P(up)")
        return self.predict(x)

    def export_onnx(self, path: Path) -> None:
        """A graph that ignores its input's values: probabilities = Expand([1-p, p], [N, 2]),
        or for a return target prediction = Expand([mean], [N, 1])."""
        if self.target == DIRECTION:
            row, output = [1.0 - self.p_up, self.p_up], PROBABILITIES_OUTPUT
        else:
            row, output = [self.p_up], PREDICTION_OUTPUT
        values = np.array([row], dtype=np.float32)
        nodes = [
            helper.make_node("Shape", ["input"], ["input_shape"]),
            helper.make_node("Slice", ["input_shape", "zero", "one"], ["batch"]),
            helper.make_node("Concat", ["batch", "width"], ["out_shape"], axis=0),
            helper.make_node("Expand", ["row", "out_shape"], [output]),
        ]
        inits = [
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("width", TensorProto.INT64, [1], [len(row)]),
            helper.make_tensor("row", TensorProto.FLOAT, [1, len(row)], values.ravel().tolist()),
        ]
        save_rule_graph(nodes, inits, "naive_baseline", self.n_features, path, output=output)


class NaiveTrainer:
    """Fits the constant P(up) = positive rate of the training labels, or for a return
    target the training mean return.

    ``augment`` is accepted so every trainer takes the pipeline's switch; it
    changes nothing here, since augmented copies keep their labels and so the
    positive rate.
    """

    name = "naive"
    unit_test_params: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, *, augment: bool = False) -> None:
        self.augment = augment

    def fit(self, data: Dataset, monitor: TrainingMonitor, seed: int) -> NaiveModel:
        validate_dataset(data)
        if data.target == RETURN:
            return _fit_mean_return(data, monitor)
        p_up = float(np.mean(data.y_train))
        # One step, so monitors see every trainer the same way: the constant's losses.
        extra = {
            "train_accuracy": _accuracy(data.y_train, p_up),
            "val_accuracy": _accuracy(data.y_val, p_up),
        }
        step = monitor.on_step(0, _log_loss(data.y_train, p_up), _log_loss(data.y_val, p_up), extra)
        if step is Action.ABORT:
            raise TrainingAborted(self.name, 0, abort_reason(monitor))
        return NaiveModel(p_up, data.n_features)


def _fit_mean_return(data: Dataset, monitor: TrainingMonitor) -> NaiveModel:
    """The training mean return; the monitor sees its MSE in units of the training variance,
    the scale every return trainer reports (so its train loss is 1)."""
    model = NaiveModel(float(np.mean(data.y_train)), data.n_features, target=RETURN)
    variance = float(np.var(data.y_train))
    train, val = (
        float(np.mean((np.asarray(y, dtype=np.float64) - model.p_up) ** 2)) / variance
        for y in (data.y_train, data.y_val)
    )
    if monitor.on_step(0, train, val, {}) is Action.ABORT:
        raise TrainingAborted(NaiveTrainer.name, 0, abort_reason(monitor))
    return model


def _log_loss(y: npt.NDArray[Any], p_up: float) -> float:
    p = min(max(p_up, 1e-12), 1 - 1e-12)
    y = y.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _accuracy(y: npt.NDArray[Any], p_up: float) -> float:
    return float(np.mean(y == (1 if p_up >= 0.5 else 0)))
