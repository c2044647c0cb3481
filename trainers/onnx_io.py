"""Scoring ONNX models with onnxruntime, and the native-vs-ONNX parity check.

The same ``OnnxScorer`` serves the training-time parity check and live
scoring, so a model is judged by exactly the code path that will run it.
"""

from __future__ import annotations

import threading
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
        # Measured on one-row calls (xgboost, 1 thread): turning off spinning, the memory
        # arena, or graph optimisations beyond the default changed nothing; there is no
        # thread pool to spin at one thread.
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
        # predict_latest's one-row path: its input bound once, so a call copies the rows in
        # and runs (p50 -16% for xgboost, -9% for a tcn). The lock guards the buffer; a caller that
        # finds it taken uses session.run instead of waiting.
        one = (1, self.n_features) if self.window == 1 else (1, self.window, self.n_features)
        self._one = np.zeros(one, np.float32)
        self._one_rows = self._one.reshape(self.window, self.n_features)  # a view of it
        self._binding = self._session.io_binding()
        self._binding.bind_cpu_input(self.input_name, self._one)
        self._binding.bind_output(self.output_name)
        self._one_lock = threading.Lock()

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
        return self._output(out)

    def _output(self, out: Any) -> npt.NDArray[np.float64]:
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
        """The prediction (P(up), or a return model's return) for the LAST of ``feature_rows``
        (``(rows, n_features)``, oldest first).

        Needs at least ``window`` rows (only the last ``window`` are used) and
        finite values in them; raises ``InvalidInputError`` naming the problem
        otherwise. This is live scoring's entry point: pass the newest feature
        rows of a symbol, whatever the model's window.
        """
        fast = self._predict_one(feature_rows)
        if fast is not None:
            return fast
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

    def _predict_one(self, feature_rows: npt.ArrayLike) -> float | None:
        """``predict_latest`` through the bound input buffer; None when the slow path must
        answer: not a float array of the right shape, a non-finite value (the slow path
        names it), or the buffer in use by another thread."""
        x = feature_rows
        if (
            not isinstance(x, np.ndarray)
            or x.dtype.kind != "f"
            or x.ndim != 2
            or x.shape[1] != self.n_features
            or len(x) < self.window
            or not self._one_lock.acquire(blocking=False)
        ):
            return None
        try:
            # The same float32 rounding as np.asarray(x, dtype=np.float32).
            np.copyto(self._one_rows, x[len(x) - self.window :], casting="unsafe")
            if not np.isfinite(self._one_rows).all():
                return None
            self._session.run_with_iobinding(self._binding)
            (out,) = self._binding.copy_outputs_to_cpu()
        finally:
            self._one_lock.release()
        return float(self._output(out)[0])


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
