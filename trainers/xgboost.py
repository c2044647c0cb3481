"""Gradient-boosted trees (xgboost) with early stopping on the validation split.

The defaults are deliberately conservative (shallow trees, row/column
subsampling, L2, slow learning rate): a few thousand noisy bars overfit deep
trees at once, and the train-val gap gate would reject them. ``n_jobs``
defaults to 1 because the daemon runs several training processes on few cores.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import xgboost as xgb
from onnxmltools import convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType

from monitors.base import Action, TrainingMonitor
from trainers.base import Dataset, abort_reason, as_feature_rows, validate_dataset
from trainers.errors import InvalidInputError, TrainingAborted

# onnxmltools' xgboost converter fails above opset 15 (NOTES.md).
ONNX_TARGET_OPSET = 15


class _MonitorCallback(xgb.callback.TrainingCallback):
    """Reports each round's train / val log loss to a TrainingMonitor, then early-stops.

    It wraps the EarlyStopping callback rather than sitting beside it: xgboost
    stops asking callbacks as soon as one says stop, and both the monitor and
    the best-round bookkeeping must see every round.
    """

    def __init__(self, monitor: TrainingMonitor, stopper: xgb.callback.EarlyStopping) -> None:
        super().__init__()
        self.monitor = monitor
        self.stopper = stopper
        self.aborted_at: int | None = None

    def before_training(self, model: Any) -> Any:
        return self.stopper.before_training(model)

    def after_iteration(
        self, model: Any, epoch: int, evals_log: xgb.callback.TrainingCallback.EvalsLog
    ) -> bool:
        early_stop = bool(self.stopper.after_iteration(model, epoch, evals_log))
        # eval_set is [(train), (val)]: xgboost names them validation_0 / validation_1.
        train_loss = _last_logloss(evals_log, "validation_0")
        val_loss = _last_logloss(evals_log, "validation_1")
        action = self.monitor.on_step(epoch, train_loss, val_loss)
        if action is Action.ABORT:
            self.aborted_at = epoch
        return early_stop or action is not Action.CONTINUE  # True ends boosting

    def after_training(self, model: Any) -> Any:
        # save_best: cut the booster back to its best validation round.
        return self.stopper.after_training(model)


def _last_logloss(evals_log: xgb.callback.TrainingCallback.EvalsLog, data_name: str) -> float:
    last = evals_log[data_name]["logloss"][-1]
    return float(last[0] if isinstance(last, tuple) else last)  # (mean, std) only under cv


class XGBoostModel:
    """A fitted XGBClassifier, already cut back to its best validation round."""

    trainer = "xgboost"

    def __init__(self, clf: xgb.XGBClassifier, params: Mapping[str, Any], n_features: int) -> None:
        self._clf = clf
        self.params = params
        self.n_features = n_features
        self.n_params = sum(len(t.strip().splitlines()) for t in clf.get_booster().get_dump())

    def predict_proba(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        rows = as_feature_rows(x, self.n_features)
        proba = self._clf.predict_proba(rows)[:, 1]
        return np.asarray(proba, dtype=np.float64)

    def export_onnx(self, path: Path) -> None:
        """Outputs ``label`` [N] and ``probabilities`` [N, 2]; input ``input`` float32 [N, k]."""
        model = convert_xgboost(
            self._clf,
            initial_types=[("input", FloatTensorType([None, self.n_features]))],
            target_opset=ONNX_TARGET_OPSET,
        )
        onnx.save(model, str(path))


class XGBoostTrainer:
    """XGBClassifier (binary logistic) on float32 numpy features.

    Boosting stops when validation log loss has not improved for
    ``early_stopping_rounds`` rounds, or when the monitor says STOP; either way
    the model keeps the rounds up to its best validation loss.
    """

    name = "xgboost"

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        max_depth: int = 3,
        learning_rate: float = 0.05,
        min_child_weight: float = 10.0,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 5.0,
        reg_alpha: float = 0.0,
        gamma: float = 0.0,
        early_stopping_rounds: int = 30,
        n_jobs: int = 1,
    ) -> None:
        if n_estimators < 1:
            raise InvalidInputError(f"n_estimators must be >= 1, got {n_estimators}")
        if early_stopping_rounds < 1:
            raise InvalidInputError(
                f"early_stopping_rounds must be >= 1, got {early_stopping_rounds}"
            )
        if n_jobs < 1:
            raise InvalidInputError(f"n_jobs must be >= 1, got {n_jobs}")
        self.params: Mapping[str, Any] = {
            "n_estimators": n_estimators,
            "max_depth": max_depth,
            "learning_rate": learning_rate,
            "min_child_weight": min_child_weight,
            "subsample": subsample,
            "colsample_bytree": colsample_bytree,
            "reg_lambda": reg_lambda,
            "reg_alpha": reg_alpha,
            "gamma": gamma,
            "early_stopping_rounds": early_stopping_rounds,
            "n_jobs": n_jobs,
        }

    def fit(self, data: Dataset, monitor: TrainingMonitor, seed: int) -> XGBoostModel:
        validate_dataset(data)
        p = dict(self.params)
        # save_best cuts the booster back to its best round, so native predictions
        # and the ONNX export (which converts every tree) agree.
        stopper = xgb.callback.EarlyStopping(
            rounds=p.pop("early_stopping_rounds"),
            metric_name="logloss",
            data_name="validation_1",
            save_best=True,
        )
        callback = _MonitorCallback(monitor, stopper)
        clf = xgb.XGBClassifier(
            **p,
            objective="binary:logistic",
            eval_metric="logloss",
            tree_method="hist",
            random_state=seed,
            callbacks=[callback],
        )
        clf.fit(
            data.X_train,
            data.y_train,
            eval_set=[(data.X_train, data.y_train), (data.X_val, data.y_val)],
            verbose=False,
        )
        if callback.aborted_at is not None:
            raise TrainingAborted(self.name, callback.aborted_at, abort_reason(monitor))
        booster = clf.get_booster()
        fitted = {**self.params, "seed": seed, "n_rounds": int(booster.num_boosted_rounds())}
        return XGBoostModel(clf, fitted, data.n_features)
