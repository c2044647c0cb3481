"""The persistence baseline: the next bar goes the same way as the last one.

The majority class (``trainers.naive``) ignores its input; a model that only
learnt "momentum at lag 1" beats it without having learnt anything a
one-line rule does not know. This baseline is that rule, fitted honestly: it
reads the last bar's log return (feature ``ret_1``) and predicts P(up) = q
after an up bar and 1 - q after a down bar, where q is the training share of
bars that went the same direction as the one before.

Choices, each the simplest honest one:

- q is clipped to [0.5, 1 - 1e-6]. Below 0.5 the market reverts, and a
  reversal rule is not *persistence*; at 0.5 the baseline is a coin on every
  bar with a direction. The upper bound keeps log losses finite.
- A bar with ``ret_1 == 0`` (either zero, or NaN at prediction time) has no
  direction to persist: it gets the training positive rate, the naive
  baseline's answer.
- Both values are rounded to float32 when fitted, so the ONNX graph, which
  selects float32 constants, reproduces ``predict_proba`` exactly (parity 0).

Like every model it exports to ONNX, so the registry holds it, live scoring
serves it and the conformance suite covers it.

Direction only: a ``return`` target raises ``InvalidInputError``. Its natural
counterpart, "the next ``h`` bars return what the last ``h`` did", needs the label
horizon, which a ``Dataset`` does not carry (``ret_1`` is the right feature only for
``h = 1``); the pipeline builds the return yardsticks (zero, mean and last return)
from the bars instead (``trainers.baselines``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

from monitors.base import Action, TrainingMonitor
from trainers.base import PRESETS, abort_reason, resolve_params
from trainers.dataset import Dataset, as_model_input, validate_dataset
from trainers.errors import InvalidInputError, TrainingAborted
from trainers.features import FEATURE_SPEC
from trainers.onnx_graph import save_rule_graph
from trainers.targets import DIRECTION

RET_1_COLUMN: Final = FEATURE_SPEC.names.index("ret_1")
"""The column of the last bar's log return in ``FEATURE_SPEC`` feature rows."""
MAX_P_SAME: Final = 1.0 - 1e-6
"""A perfectly persistent training set still leaves room for a surprise (finite log loss)."""

_PRESETS: Final[Mapping[str, Mapping[str, Any]]] = {preset: {} for preset in PRESETS}
# Nothing to size: the presets exist so that ``preset=`` works as for every trainer.


class PersistenceModel:
    """P(up) = ``p_same`` after an up bar, 1 - ``p_same`` after a down bar, and
    ``p_up_flat`` when ``ret_1`` is zero (or NaN); values rounded to float32."""

    trainer = "persistence"
    n_params = 2
    window = 1

    def __init__(self, p_same: float, p_up_flat: float, n_features: int) -> None:
        self.p_same = float(np.float32(p_same))
        self.p_up_flat = float(np.float32(p_up_flat))
        # Rounded again: the graph's constant for a down bar is float32 too.
        self.p_up_after_down = float(np.float32(1.0 - self.p_same))
        self.n_features = n_features
        self.params: Mapping[str, Any] = {"p_same": self.p_same, "p_up_flat": self.p_up_flat}

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """The direction target's prediction: P(up)."""
        return self.predict_proba(x)

    def predict_proba(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        rows = as_model_input(x, self.n_features, self.window)
        last = rows[:, RET_1_COLUMN]
        # The graph's comparisons, on the same float32 values: -0.0 and NaN are neither.
        proba = np.where(
            last > 0,
            self.p_same,
            np.where(last < 0, self.p_up_after_down, self.p_up_flat),
        )
        return proba.astype(np.float64)

    def export_onnx(self, path: Path) -> None:
        """``ret_1 = Gather(input, [column], axis=1)``; probabilities = the [1-p, p] row for
        an up, a down or a flat last bar, chosen by ``Where(Greater(ret_1, 0), ...)``."""
        nodes = [
            helper.make_node("Gather", ["input", "column"], ["ret_1"], axis=1),
            helper.make_node("Greater", ["ret_1", "zero"], ["is_up"]),
            helper.make_node("Less", ["ret_1", "zero"], ["is_down"]),
            helper.make_node("Where", ["is_down", "row_down", "row_flat"], ["not_up"]),
            helper.make_node("Where", ["is_up", "row_up", "not_up"], ["probabilities"]),
        ]
        inits = [
            helper.make_tensor("column", TensorProto.INT64, [1], [RET_1_COLUMN]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            _row("row_up", self.p_same),
            _row("row_down", self.p_up_after_down),
            _row("row_flat", self.p_up_flat),
        ]
        save_rule_graph(nodes, inits, "persistence_baseline", self.n_features, path)


def _row(name: str, p_up: float) -> onnx.TensorProto:
    """The [1, 2] float32 constant ``[1 - p_up, p_up]``; it broadcasts over the batch."""
    row = np.array([[1.0 - p_up, p_up]], dtype=np.float32)
    tensor: onnx.TensorProto = helper.make_tensor(
        name, TensorProto.FLOAT, [1, 2], row.ravel().tolist()
    )
    return tensor


class PersistenceTrainer:
    """Fits P(next bar goes the last bar's way) on the training rows; reads ``ret_1`` only.

    Direction targets only (``InvalidInputError`` for a return target). The data's
    columns must be ``FEATURE_SPEC``'s (``InvalidInputError`` otherwise: a baseline
    reading the wrong column would judge every gate wrongly). ``seed`` changes nothing
    (the fit is a count). ``augment`` is accepted, like ``preset``, so every trainer
    takes the pipeline's switches; it changes nothing here: noisy copies only blur the
    sign of ``ret_1``.
    """

    name = "persistence"
    unit_test_params: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self, *, preset: str = "lightweight", augment: bool = False, **overrides: Any
    ) -> None:
        resolve_params(self.name, _PRESETS, preset, overrides)
        self.augment = augment

    def fit(self, data: Dataset, monitor: TrainingMonitor, seed: int) -> PersistenceModel:
        if data.target != DIRECTION:
            raise InvalidInputError(
                f"{self.name} predicts direction only, not a {data.target} target; the "
                "return yardsticks (zero, mean and last return) are trainers.baselines'"
            )
        validate_dataset(data)
        n_expected = len(FEATURE_SPEC.names)
        if data.n_features != n_expected:
            raise InvalidInputError(
                f"{self.name} reads ret_1 at column {RET_1_COLUMN} of FEATURE_SPEC's "
                f"{n_expected} features; got {data.n_features} feature columns"
            )
        model = PersistenceModel(
            p_same_direction(data.X_train[:, RET_1_COLUMN], data.y_train),
            float(np.mean(data.y_train)),
            data.n_features,
        )
        # One step, so monitors see every trainer the same way: the fitted rule's losses.
        p_train, p_val = model.predict_proba(data.X_train), model.predict_proba(data.X_val)
        extra = {
            "train_accuracy": _accuracy(data.y_train, p_train),
            "val_accuracy": _accuracy(data.y_val, p_val),
        }
        step = monitor.on_step(
            0, _log_loss(data.y_train, p_train), _log_loss(data.y_val, p_val), extra
        )
        if step is Action.ABORT:
            raise TrainingAborted(self.name, 0, abort_reason(monitor))
        return model


def p_same_direction(last_return: npt.NDArray[Any], y: npt.NDArray[Any]) -> float:
    """Share of rows with a nonzero ``last_return`` whose label goes its way (label 1 after
    a rise, 0 after a fall), clipped to [0.5, ``MAX_P_SAME``]; 0.5 if no row has a direction."""
    up, down = last_return > 0, last_return < 0
    moved = int(np.count_nonzero(up | down))
    if moved == 0:
        return 0.5
    same = int(np.count_nonzero(up & (y == 1)) + np.count_nonzero(down & (y == 0)))
    return min(max(same / moved, 0.5), MAX_P_SAME)


def _log_loss(y: npt.NDArray[Any], p_up: npt.NDArray[np.float64]) -> float:
    p = np.clip(p_up, 1e-12, 1 - 1e-12)
    y = y.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _accuracy(y: npt.NDArray[Any], p_up: npt.NDArray[np.float64]) -> float:
    return float(np.mean(y == (p_up >= 0.5)))
