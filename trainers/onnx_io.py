"""Scoring ONNX models with onnxruntime, and the native-vs-ONNX parity check.

The same ``OnnxScorer`` serves the training-time parity check and live
scoring, so a model is judged by exactly the code path that will run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from trainers.base import FittedModel
from trainers.dataset import as_model_input, first_non_finite
from trainers.errors import InvalidInputError, ParityError
from trainers.targets import DIRECTION, RETURN, Target

PROBABILITIES_OUTPUT = "probabilities"
PREDICTION_OUTPUT = "prediction"
"""A return-target model's output: the predicted forward return, ``[N, 1]`` float32."""


class OnnxScorer:
    """One cached onnxruntime session for a model file; P(up) for batches of model inputs.

    The model takes one float32 input, either ``[N, n_features]`` rows
    (``window`` 1: tabular models) or ``[N, window, n_features]`` windows of
    consecutive feature rows, oldest first (sequence models); ``window`` and
    ``n_features`` are read from the input's static dimensions. P(up) is read
    from the output named ``probabilities`` when there is one (else the first
    output): ``[N, 2]`` gives column 1; ``[N, 1]`` or ``[N]`` is P(up) itself.
    """

    def __init__(self, path: Path, *, intra_op_threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.path = path
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise InvalidInputError(f"{path}: expected one model input, found {len(inputs)}")
        shape = inputs[0].shape
        static = shape[1:]
        if len(shape) not in (2, 3) or not all(isinstance(d, int) and d >= 1 for d in static):
            raise InvalidInputError(
                f"{path}: input must be [N, n_features] or [N, window, n_features] "
                f"with fixed sizes, got {shape}"
            )
        self.input_name: str = inputs[0].name
        self.n_features: int = int(shape[-1])
        self.window: int = int(shape[1]) if len(shape) == 3 else 1
        names = [o.name for o in self._session.get_outputs()]
        self.output_name: str = PROBABILITIES_OUTPUT if PROBABILITIES_OUTPUT in names else names[0]
        # A model names what it predicts: an output "prediction" is a forward return.
        self.target: Target = RETURN if self.output_name == PREDICTION_OUTPUT else DIRECTION

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(n,) float64: P(up) of a direction model, the predicted return of a return model."""
        return self._run(x)

    def predict_proba(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(n,) float64 P(up) for ``(n, n_features)`` rows (window 1) or
        ``(n, window, n_features)`` windows; ``InvalidInputError`` for any other shape, or
        when the model predicts returns."""
        if self.target != DIRECTION:
            raise InvalidInputError(f"{self.path}: predicts {self.target}s, not P(up)")
        return self._run(x)

    def _run(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        rows = as_model_input(x, self.n_features, self.window)
        (out,) = self._session.run([self.output_name], {self.input_name: rows})
        arr: npt.NDArray[Any] = np.asarray(out)
        if arr.ndim == 2 and arr.shape[1] == 2:
            arr = arr[:, 1]
        elif arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        elif arr.ndim != 1:
            raise InvalidInputError(
                f"{self.path}: output {self.output_name!r} has shape {arr.shape}; "
                "expected [N, 2], [N, 1] or [N]"
            )
        return arr.astype(np.float64)

    def predict_latest(self, feature_rows: npt.ArrayLike) -> float:
        """P(up) of the LAST of ``feature_rows`` (``(rows, n_features)``, oldest first).

        Needs at least ``window`` rows (only the last ``window`` are used) and
        finite values in them; raises ``InvalidInputError`` naming the problem
        otherwise. This is live scoring's entry point: pass the newest feature
        rows of a symbol, whatever the model's window.
        """
        rows = np.asarray(feature_rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise InvalidInputError(
                f"feature rows must have shape (rows, {self.n_features}), got {rows.shape}"
            )
        if len(rows) < self.window:
            raise InvalidInputError(
                f"the model needs the last {self.window} feature rows, got {len(rows)}"
            )
        latest = rows[len(rows) - self.window :]
        if (first := first_non_finite(latest)) is not None:
            row, col = first
            raise InvalidInputError(
                f"feature row {len(rows) - self.window + row} (of {len(rows)}) has a "
                f"non-finite value in feature {col}: {latest[row, col]}"
            )
        batch = latest if self.window == 1 else latest[None, :, :]
        return float(self._run(batch)[0])


def max_abs_diff(model: FittedModel, scorer: OnnxScorer, x: npt.ArrayLike) -> float:
    """Largest |native - ONNX| prediction (P(up) or return) over the model inputs ``x``
    (inf if either is non-finite)."""
    rows = as_model_input(x, scorer.n_features, scorer.window)
    if len(rows) == 0:
        raise InvalidInputError("parity needs at least one feature row, got 0")
    diff = np.abs(model.predict(rows) - scorer.predict(rows))
    return float(np.max(np.where(np.isfinite(diff), diff, np.inf)))


def check_parity(model: FittedModel, onnx_path: Path, x: npt.ArrayLike, tolerance: float) -> float:
    """Max |native - ONNX| P(up) on ``x`` for an already exported model.

    Returns the difference; raises ``ParityError`` (carrying it) above ``tolerance``.
    """
    diff = max_abs_diff(model, OnnxScorer(onnx_path), x)
    if not diff <= tolerance:
        raise ParityError(model.trainer, diff, tolerance)
    return diff
