"""A regularised random forest (scikit-learn), grown in steps the training monitor sees.

A forest beside xgboost: bagged trees averaged rather than boosted on each
other's residuals, a second tree model whose errors correlate less with the
booster's. The presets regularise it the way few thousand noisy bars need:
shallow trees (``max_depth``), large leaves (``min_samples_leaf``), ``sqrt``
of the features per split and each tree on a bootstrap fraction of the rows
(``max_samples``). Unpruned trees memorise the training split (train accuracy
near 1) and the train-val gap gate would reject every such forest; a forest's
training accuracy stays optimistic even so, since every row trained ~40% of
the trees that judge it. On 3,000-5,000 bars of synthetic noise the
lightweight preset's train-val gap measured 0.13-0.15 (0.17-0.23 with leaves
of 20 rows and 0.7 bootstraps) at the same accuracy on planted signals.

A forest has no epochs, so it grows ``trees_per_step`` trees at a time
(``warm_start``) and after each step reports the train / val log loss and
accuracy of the forest so far: the overfitting rule sees the train-val gap the
gate will judge, a non-finite or diverging loss stops or aborts the run,
and ABORT or STOP ends the growth. Warm start draws each new tree's seed from
the same stream as a one-shot fit, so the forest equals
``RandomForestClassifier(n_estimators=<trees grown>)``: the steps change only
when the monitor is asked. Unlike xgboost's rounds the forest is not cut back
to its best validation step: more trees only average more (they add no
capacity), so the best step on a flat validation curve is noise.

A ``return`` target grows a RandomForestRegressor (squared error) the same way;
each step reports the train / val MSE of the forest so far in units of the training
labels' variance (the mean return scores 1.0 on the training rows), the scale every
return trainer reports. Squared-error trees are scale-equivariant, so unlike the
booster's the labels need no standardising. ``class_weight`` is a direction option
and must stay None for returns.

``n_jobs`` defaults to 1 because the daemon runs each training in a worker
process on few cores (``CTD_TRAIN_WORKERS`` of them); joblib threads inside
each would oversubscribe the cores.

Parity: scikit-learn compares float32 features with float64 thresholds, while
ONNX's TreeEnsembleClassifier stores float32 thresholds. skl2onnx moves each
threshold to the float32 that sends every float32 value down the same branch,
and the trees are fitted on the Dataset's float32 features, which are what
the pipeline and live scoring feed; what remains is float32 vs float64
averaging of leaf probabilities (at most ~5e-7 measured, gate 1e-4).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt
import onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from monitors.base import Action, TrainingMonitor
from trainers.augment import augment_training
from trainers.base import abort_reason, require, resolve_params
from trainers.dataset import Dataset, as_model_input, validate_dataset
from trainers.errors import InvalidInputError, TrainingAborted
from trainers.metrics import PROBA_CLIP
from trainers.onnx_graph import with_prediction_output
from trainers.targets import DIRECTION, RETURN, Target

# The opset of the other tree and rule graphs: skl2onnx pairs it with ai.onnx.ml 1 and IR 8,
# which any onnxruntime since 1.10 reads.
ONNX_TARGET_OPSET: Final = 15
MAX_FEATURES: Final = ("sqrt", "log2")
CLASS_WEIGHTS: Final = (None, "balanced", "balanced_subsample")

PRESETS: Mapping[str, Mapping[str, Any]] = {
    "tiny": {
        "n_estimators": 40,
        "trees_per_step": 10,
        "max_depth": 4,
        "min_samples_leaf": 20,
        "max_features": "sqrt",
        "max_samples": 0.5,
        "class_weight": None,
        "n_jobs": 1,
    },
    "lightweight": {
        "n_estimators": 200,
        "trees_per_step": 20,
        "max_depth": 6,
        "min_samples_leaf": 40,
        "max_features": "sqrt",
        "max_samples": 0.5,
        "class_weight": None,
        "n_jobs": 1,
    },
    "deep": {
        "n_estimators": 500,
        "trees_per_step": 25,
        "max_depth": 10,
        "min_samples_leaf": 50,
        "max_features": "sqrt",
        "max_samples": 0.5,
        "class_weight": None,
        "n_jobs": 1,
    },
}


class RandomForestModel:
    """A fitted RandomForestClassifier (direction) or RandomForestRegressor (return) on
    float32 feature rows."""

    trainer = "random_forest"
    window = 1

    def __init__(
        self,
        clf: RandomForestClassifier | RandomForestRegressor,
        params: Mapping[str, Any],
        n_features: int,
        *,
        target: Target = DIRECTION,
    ) -> None:
        self._clf = clf
        self.params = params
        self.n_features = n_features
        self.target = target
        self.n_params = sum(int(tree.tree_.node_count) for tree in clf.estimators_)

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """P(up) for direction; the forward log return for return."""
        if self.target == DIRECTION:
            return self.predict_proba(x)
        rows = as_model_input(x, self.n_features, self.window)
        return np.asarray(self._clf.predict(rows), dtype=np.float64)

    def predict_proba(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        if not isinstance(self._clf, RandomForestClassifier):
            raise InvalidInputError(f"{self.trainer}: predicts returns, not P(up)")
        rows = as_model_input(x, self.n_features, self.window)
        return np.asarray(self._clf.predict_proba(rows)[:, 1], dtype=np.float64)

    def export_onnx(self, path: Path) -> None:
        """Input ``input`` float32 [N, k]. Direction: outputs ``label`` [N] and
        ``probabilities`` [N, 2]; return: the one output ``prediction`` [N, 1]."""
        initial_types = [("input", FloatTensorType([None, self.n_features]))]
        if self.target == RETURN:
            model = to_onnx(self._clf, initial_types=initial_types, target_opset=ONNX_TARGET_OPSET)
            (output,) = model.graph.output
            model = with_prediction_output(model, output.name)
        else:
            model = to_onnx(
                self._clf,
                initial_types=initial_types,
                # A plain [N, 2] tensor rather than a list of {class: probability} maps.
                options={"zipmap": False},
                target_opset=ONNX_TARGET_OPSET,
            )
        onnx.checker.check_model(model)
        onnx.save(model, str(path))


class RandomForestTrainer:
    """RandomForestClassifier (bootstrap, Gini) on float32 numpy feature rows, or for a
    return target RandomForestRegressor (bootstrap, squared error).

    ``preset`` (tiny, lightweight, deep) picks every hyperparameter; keywords
    override single ones (the keys of ``PRESETS``): ``max_features`` is
    ``sqrt``, ``log2`` or a fraction in (0, 1]; ``max_samples`` the bootstrap
    fraction of the training rows per tree; ``class_weight`` None,
    ``balanced`` or ``balanced_subsample``. The forest grows ``trees_per_step``
    trees per monitor step up to ``n_estimators``, or until the monitor says
    STOP, and keeps every tree grown. ``augment`` adds noisy copies of small
    training sets (``trainers.augment``).
    """

    name = "random_forest"
    unit_test_params: ClassVar[Mapping[str, Any]] = {"preset": "tiny"}

    def __init__(
        self, *, preset: str = "lightweight", augment: bool = False, **params: Any
    ) -> None:
        p = resolve_params(self.name, PRESETS, preset, params)
        for key in ("n_estimators", "trees_per_step", "max_depth", "min_samples_leaf", "n_jobs"):
            require(key, p[key], _is_int(p[key]) and p[key] >= 1, "an integer >= 1")
        features = p["max_features"]
        require(
            "max_features",
            features,
            features in MAX_FEATURES or (_is_real(features) and 0 < features <= 1),
            "'sqrt', 'log2' or a fraction in (0, 1]",
        )
        samples = p["max_samples"]
        require("max_samples", samples, _is_real(samples) and 0 < samples <= 1, "in (0, 1]")
        weight = p["class_weight"]
        require(
            "class_weight",
            weight,
            weight in CLASS_WEIGHTS,
            "None, 'balanced' or 'balanced_subsample'",
        )
        # As floats: scikit-learn reads an int max_features / max_samples as a count, not a share.
        if features not in MAX_FEATURES:
            p["max_features"] = float(features)
        p["max_samples"] = float(samples)
        self.augment = augment
        self.params: Mapping[str, Any] = {"preset": preset, **p, "augment": augment}

    def fit(self, data: Dataset, monitor: TrainingMonitor, seed: int) -> RandomForestModel:
        validate_dataset(data)
        p = {k: v for k, v in self.params.items() if k not in ("preset", "augment")}
        total, per_step = p.pop("n_estimators"), p.pop("trees_per_step")
        returns = data.target == RETURN
        clf: RandomForestClassifier | RandomForestRegressor
        if returns:
            weight = p.pop("class_weight")
            if weight is not None:
                raise InvalidInputError(
                    f"class_weight must be None for a return target, got {weight!r}"
                )
            clf = RandomForestRegressor(
                **p, n_estimators=per_step, bootstrap=True, warm_start=True, random_state=seed
            )
        else:
            clf = RandomForestClassifier(
                **p, n_estimators=per_step, bootstrap=True, warm_start=True, random_state=seed
            )
        x_fit, y_fit = data.X_train, data.y_train
        if self.augment:
            x_fit, y_fit = augment_training(x_fit, y_fit, np.random.default_rng(seed))
        # Monitors see the real training rows, never their augmented copies. Each part's
        # per-tree predictions (P(up) or return) are summed as trees arrive, in the forest's
        # own order, so a step costs its new trees only and its mean equals the forest's.
        parts = {"train": data.X_train, "val": data.X_val}
        sums = {part: np.zeros(len(x)) for part, x in parts.items()}
        variance = float(np.var(data.y_train)) if returns else 1.0
        grown = steps = 0
        for step in range(math.ceil(total / per_step)):
            steps = step + 1
            clf.set_params(n_estimators=min(total, steps * per_step))
            with warnings.catch_warnings():
                # scikit-learn warns that class_weight presets suit warm starts only on unchanged
                # data; every step here refits the same rows.
                warnings.filterwarnings(
                    "ignore", message='class_weight presets "balanced"', category=UserWarning
                )
                clf.fit(x_fit, y_fit)
            for part, x in parts.items():
                for tree in clf.estimators_[grown:]:
                    sums[part] += tree.predict(x) if returns else tree.predict_proba(x)[:, 1]
            grown = len(clf.estimators_)
            if returns:
                train_loss = _mse(data.y_train, sums["train"] / grown) / variance
                val_loss = _mse(data.y_val, sums["val"] / grown) / variance
                extra: dict[str, float] = {}
            else:
                train_loss, train_acc = _loss_and_accuracy(data.y_train, sums["train"] / grown)
                val_loss, val_acc = _loss_and_accuracy(data.y_val, sums["val"] / grown)
                extra = {"train_accuracy": train_acc, "val_accuracy": val_acc}
            action = monitor.on_step(step, train_loss, val_loss, extra)
            if action is Action.ABORT:
                raise TrainingAborted(self.name, step, abort_reason(monitor))
            if action is Action.STOP:
                break
        fitted = {
            **self.params,
            "seed": seed,
            "n_trees": grown,
            "n_steps": steps,
            "train_samples": len(y_fit),
        }
        return RandomForestModel(clf, fitted, data.n_features, target=data.target)


def _mse(y: npt.NDArray[Any], predicted: npt.NDArray[np.float64]) -> float:
    return float(np.mean((np.asarray(y, dtype=np.float64) - predicted) ** 2))


def _loss_and_accuracy(y: npt.NDArray[Any], p_up: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Log loss (clipped as ``trainers.metrics`` clips it) and accuracy at P(up) >= 0.5."""
    clipped = np.clip(p_up, PROBA_CLIP, 1.0 - PROBA_CLIP)
    loss = -float(np.mean(y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped)))
    return loss, float(np.mean((p_up >= 0.5) == (y == 1)))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
