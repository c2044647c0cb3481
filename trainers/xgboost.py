"""Gradient-boosted trees (xgboost) with early stopping on the validation split.

Both targets (``trainers.targets``): ``direction`` fits an XGBClassifier (binary
logistic, monitored by log loss), ``return`` an XGBRegressor (squared error) on the
labels divided by their training standard deviation. Forward returns are ~1e-3, so
raw, every split gain and leaf sum would be dwarfed by ``gamma``, ``reg_alpha`` and
``reg_lambda``, tuned on unit-scale losses; standardised, the presets mean the same
for both targets. The labels are scaled, not centred: the booster's intercept
(``base_score``, estimated from the labels) takes the mean. The monitor and early
stopping see the MSE of the standardised labels (the square of xgboost's ``rmse``;
predicting zero scores about 1.0), and predictions and the ONNX output are scaled
back to returns.

The presets are deliberately conservative (shallow trees, row/column
subsampling, L2, slow learning rate, a minimum child weight): a few thousand
noisy bars overfit deep trees at once, and the train-val gap gate would reject
them. ``n_jobs`` defaults to 1 because the daemon runs several training
processes on few cores.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import onnx
import xgboost as xgb
from onnxmltools import convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType

from monitors.base import Action, TrainingMonitor
from trainers.augment import augment_training
from trainers.base import abort_reason, require, resolve_params
from trainers.dataset import Dataset, as_model_input, validate_dataset
from trainers.errors import InvalidInputError, TrainingAborted
from trainers.onnx_graph import with_prediction_output
from trainers.targets import DIRECTION, RETURN, Target

# onnxmltools' xgboost converter fails above opset 15 (NOTES.md).
ONNX_TARGET_OPSET = 15


_REGULARISED: Mapping[str, Any] = {
    "min_child_weight": 10.0,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 5.0,
    "reg_alpha": 0.0,
    "gamma": 0.0,
    "n_jobs": 1,
}

PRESETS: Mapping[str, Mapping[str, Any]] = {
    "tiny": {
        **_REGULARISED,
        "n_estimators": 60,
        "max_depth": 2,
        "learning_rate": 0.1,
        "early_stopping_rounds": 10,
    },
    "lightweight": {
        **_REGULARISED,
        "n_estimators": 300,
        "max_depth": 3,
        "learning_rate": 0.05,
        "early_stopping_rounds": 30,
    },
    "deep": {
        "n_estimators": 1000,
        "max_depth": 5,
        "learning_rate": 0.03,
        "min_child_weight": 20.0,
        "subsample": 0.7,
        "colsample_bytree": 0.7,
        "reg_lambda": 10.0,
        "reg_alpha": 1.0,
        "gamma": 0.1,
        "early_stopping_rounds": 50,
        "n_jobs": 1,
    },
}


class _MonitorCallback(xgb.callback.TrainingCallback):
    """Reports each round's train / val loss (and, for direction, accuracy) to a
    TrainingMonitor, then early-stops.

    It wraps the EarlyStopping callback rather than sitting beside it: xgboost
    stops asking callbacks as soon as one says stop, and both the monitor and
    the best-round bookkeeping must see every round.
    """

    def __init__(
        self,
        monitor: TrainingMonitor,
        stopper: xgb.callback.EarlyStopping,
        lr: float,
        target: Target = DIRECTION,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.stopper = stopper
        self.lr = lr
        self.target = target
        self.aborted_at: int | None = None

    def before_training(self, model: Any) -> Any:
        return self.stopper.before_training(model)

    def after_iteration(
        self, model: Any, epoch: int, evals_log: xgb.callback.TrainingCallback.EvalsLog
    ) -> bool:
        early_stop = bool(self.stopper.after_iteration(model, epoch, evals_log))
        # eval_set is [(train), (val)]: xgboost names them validation_0 / validation_1.
        extra: dict[str, float] = {"lr": self.lr}
        if self.target == RETURN:
            # The MSE of the standardised labels; accuracy means nothing for a return.
            losses = [_last(evals_log, f"validation_{i}", "rmse") ** 2 for i in (0, 1)]
        else:
            losses = [_last(evals_log, f"validation_{i}", "logloss") for i in (0, 1)]
            # eval_metric "error" is the misclassification rate at 0.5: 1 - accuracy.
            extra = {
                "train_accuracy": 1.0 - _last(evals_log, "validation_0", "error"),
                "val_accuracy": 1.0 - _last(evals_log, "validation_1", "error"),
                **extra,
            }
        action = self.monitor.on_step(epoch, losses[0], losses[1], extra)
        if action is Action.ABORT:
            self.aborted_at = epoch
        return early_stop or action is not Action.CONTINUE  # True ends boosting

    def after_training(self, model: Any) -> Any:
        # save_best: cut the booster back to its best validation round.
        return self.stopper.after_training(model)


def _last(evals_log: xgb.callback.TrainingCallback.EvalsLog, data_name: str, metric: str) -> float:
    last = evals_log[data_name][metric][-1]
    return float(last[0] if isinstance(last, tuple) else last)  # (mean, std) only under cv


class XGBoostModel:
    """A fitted XGBClassifier (direction) or XGBRegressor (return), already cut back to its
    best validation round.

    A return model's booster predicts returns divided by ``scale`` (the training
    labels' standard deviation, rounded to float32 as the ONNX graph stores it).
    """

    trainer = "xgboost"
    window = 1

    def __init__(
        self,
        clf: xgb.XGBClassifier | xgb.XGBRegressor,
        params: Mapping[str, Any],
        n_features: int,
        *,
        target: Target = DIRECTION,
        scale: float = 1.0,
    ) -> None:
        self._clf = clf
        self.params = params
        self.n_features = n_features
        self.target = target
        self.scale = float(np.float32(scale))
        self.n_params = sum(len(t.strip().splitlines()) for t in clf.get_booster().get_dump())

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """P(up) for direction; the forward log return for return."""
        if self.target == DIRECTION:
            return self.predict_proba(x)
        rows = as_model_input(x, self.n_features, self.window)
        standardised = np.asarray(self._clf.predict(rows), dtype=np.float32)
        return (standardised * np.float32(self.scale)).astype(np.float64)

    def predict_proba(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        if self.target != DIRECTION:
            raise InvalidInputError(f"{self.trainer}: predicts returns, not P(up)")
        rows = as_model_input(x, self.n_features, self.window)
        proba = self._clf.predict_proba(rows)[:, 1]
        return np.asarray(proba, dtype=np.float64)

    def export_onnx(self, path: Path) -> None:
        """Input ``input`` float32 [N, k]. Direction: outputs ``label`` [N] and
        ``probabilities`` [N, 2]; return: the one output ``prediction`` [N, 1]."""
        model = convert_xgboost(
            self._clf,
            initial_types=[("input", FloatTensorType([None, self.n_features]))],
            target_opset=ONNX_TARGET_OPSET,
        )
        if self.target == RETURN:
            (output,) = model.graph.output
            model = with_prediction_output(model, output.name, self.scale)
        onnx.save(model, str(path))


class XGBoostTrainer:
    """XGBClassifier (binary logistic) or, for a return target, XGBRegressor (squared
    error on standardised labels) on float32 numpy feature rows.

    ``preset`` (tiny, lightweight, deep) picks every hyperparameter; keywords
    override single ones (the keys of ``PRESETS``). Boosting stops when
    validation loss (log loss, or MSE of the standardised returns) has not improved
    for ``early_stopping_rounds`` rounds,
    or when the monitor says STOP; either way the model keeps the rounds up to
    its best validation loss. ``augment`` adds noisy copies of small training
    sets (``trainers.augment``).
    """

    name = "xgboost"
    unit_test_params: ClassVar[Mapping[str, Any]] = {"preset": "tiny"}

    def __init__(
        self, *, preset: str = "lightweight", augment: bool = False, **params: Any
    ) -> None:
        p = resolve_params(self.name, PRESETS, preset, params)
        for key in ("n_estimators", "early_stopping_rounds", "n_jobs", "max_depth"):
            require(key, p[key], isinstance(p[key], int) and p[key] >= 1, "an integer >= 1")
        require("learning_rate", p["learning_rate"], 0 < p["learning_rate"] <= 1, "in (0, 1]")
        for key in ("subsample", "colsample_bytree"):
            require(key, p[key], 0 < p[key] <= 1, "in (0, 1]")
        for key in ("min_child_weight", "reg_lambda", "reg_alpha", "gamma"):
            require(key, p[key], p[key] >= 0, ">= 0")
        self.augment = augment
        self.params: Mapping[str, Any] = {"preset": preset, **p, "augment": augment}

    def fit(self, data: Dataset, monitor: TrainingMonitor, seed: int) -> XGBoostModel:
        validate_dataset(data)
        p = {k: v for k, v in self.params.items() if k not in ("preset", "augment")}
        returns = data.target == RETURN
        # save_best cuts the booster back to its best round, so native predictions
        # and the ONNX export (which converts every tree) agree.
        stopper = xgb.callback.EarlyStopping(
            rounds=p.pop("early_stopping_rounds"),
            metric_name="rmse" if returns else "logloss",
            data_name="validation_1",
            save_best=True,
        )
        callback = _MonitorCallback(monitor, stopper, float(p["learning_rate"]), data.target)
        common = {**p, "tree_method": "hist", "random_state": seed, "callbacks": [callback]}
        clf: xgb.XGBClassifier | xgb.XGBRegressor
        if returns:
            clf = xgb.XGBRegressor(**common, objective="reg:squarederror", eval_metric="rmse")
            scale = float(np.float32(np.std(data.y_train)))
        else:
            clf = xgb.XGBClassifier(
                **common, objective="binary:logistic", eval_metric=["error", "logloss"]
            )
            scale = 1.0
        x_fit, y_fit = data.X_train, data.y_train
        if self.augment:
            x_fit, y_fit = augment_training(x_fit, y_fit, np.random.default_rng(seed))
        f32 = np.float32  # float64 labels double xgboost's DMatrix set-up time for nothing

        def labels(y: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
            return np.asarray(np.asarray(y, dtype=np.float64) / scale, dtype=f32)

        clf.fit(
            x_fit,
            labels(y_fit),
            # Monitors see the real training rows, never their augmented copies.
            eval_set=[(data.X_train, labels(data.y_train)), (data.X_val, labels(data.y_val))],
            verbose=False,
        )
        if callback.aborted_at is not None:
            raise TrainingAborted(self.name, callback.aborted_at, abort_reason(monitor))
        booster = clf.get_booster()
        fitted = {
            **self.params,
            "seed": seed,
            "n_rounds": int(booster.num_boosted_rounds()),
            "train_samples": len(y_fit),
        }
        if returns:
            fitted["label_scale"] = scale
        return XGBoostModel(clf, fitted, data.n_features, target=data.target, scale=scale)
