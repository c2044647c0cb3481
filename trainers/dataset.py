"""The data every trainer receives: one symbol's feature matrix, labels and split.

A ``Dataset`` keeps the FULL chronological float32 feature matrix plus the
row ranges of train / validation / test, so that a sequence model can give
every row of every split a prediction: the window of row t is feature rows
``t - window + 1 .. t`` of the full matrix (past features are known at time t,
so embargo rows may serve as history; labels never cross a split). Rows at the
very start of the matrix, which have less history than a window, are
left-padded by repeating row 0: every training row is used, and live scoring,
which always has enough history, never sees padding.

Tabular models read ``X_train`` / ``X_val`` / ``X_test`` (views of the
matrix); sequence models read ``inputs(part, window)``. Either way the metrics
of every trainer are computed on exactly the same test rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from trainers.errors import InsufficientDataError, InvalidInputError
from trainers.splits import Split
from trainers.targets import DIRECTION, RETURN, Target

Float32Array = npt.NDArray[np.float32]
Part = Literal["train", "val", "test"]
PARTS: Final[tuple[Part, ...]] = ("train", "val", "test")

MIN_TRAIN_ROWS: Final = 20
"""Fewer training rows than this cannot fit anything worth gating."""
MIN_EVAL_ROWS: Final = 5
"""Validation and test splits need at least this many rows for a metric to mean anything."""


def sequence_windows(features: Float32Array, rows: slice, window: int) -> Float32Array:
    """``(n, window, n_features)``: for each row t in ``rows``, feature rows t-window+1 .. t.

    Rows before 0 repeat row 0 (left padding). The result is a new array.
    """
    start, stop, _ = rows.indices(len(features))
    index = np.arange(start, stop)[:, None] + np.arange(1 - window, 1)[None, :]
    out: Float32Array = features[np.maximum(index, 0)]
    return out


def as_model_input(x: npt.ArrayLike, n_features: int, window: int) -> Float32Array:
    """``x`` as float32 model input, or ``InvalidInputError`` naming the expected shape.

    Window 1 (tabular) models take ``(n, n_features)`` rows; sequence models
    take ``(n, window, n_features)`` windows.
    """
    arr = np.asarray(x, dtype=np.float32)
    if window == 1:
        if arr.ndim != 2 or arr.shape[1] != n_features:
            raise InvalidInputError(
                f"feature rows must have shape (n, {n_features}), got {arr.shape}"
            )
    elif arr.ndim != 3 or arr.shape[1:] != (window, n_features):
        raise InvalidInputError(
            f"feature windows must have shape (n, {window}, {n_features}), got {arr.shape}"
        )
    return arr


@dataclass(frozen=True, slots=True)
class Dataset:
    """One symbol's rows in time order and how they split; trainers never mutate it.

    ``features`` is float32 because ONNX models run on float32: training on the
    same float32 values lets native and ONNX predictions see identical inputs.
    ``labels``, one per feature row, follow ``target`` (``trainers.targets``): 0 (down)
    / 1 (up) for ``direction``, the forward log return for ``return``. Rows outside
    the three parts (the embargo gaps) are history only.
    """

    features: Float32Array
    labels: npt.NDArray[Any]
    split: Split
    target: Target = DIRECTION

    @classmethod
    def from_split(
        cls, x: npt.ArrayLike, y: npt.ArrayLike, split: Split, target: Target = DIRECTION
    ) -> Dataset:
        """Copies of ``x`` (as contiguous float32) and ``y``, split by ``split``."""
        features = np.array(x, dtype=np.float32, order="C", copy=True)
        return cls(features, np.array(y, copy=True), split, target)

    def rows(self, part: Part) -> slice:
        """The row range of ``part`` in ``features``."""
        s: slice = getattr(self.split, part)
        return s

    def inputs(self, part: Part, window: int) -> Float32Array:
        """Model input of every row of ``part``: rows for window 1, else sequence windows."""
        if window == 1:
            return self.features[self.rows(part)]
        return sequence_windows(self.features, self.rows(part), window)

    def y(self, part: Part) -> npt.NDArray[Any]:
        return self.labels[self.rows(part)]

    @property
    def X_train(self) -> Float32Array:  # noqa: N802 - the X / y convention of ML code
        return self.features[self.split.train]

    @property
    def X_val(self) -> Float32Array:  # noqa: N802
        return self.features[self.split.val]

    @property
    def X_test(self) -> Float32Array:  # noqa: N802
        return self.features[self.split.test]

    @property
    def y_train(self) -> npt.NDArray[Any]:
        return self.labels[self.split.train]

    @property
    def y_val(self) -> npt.NDArray[Any]:
        return self.labels[self.split.val]

    @property
    def y_test(self) -> npt.NDArray[Any]:
        return self.labels[self.split.test]

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1]) if self.features.ndim == 2 else 0


def validate_dataset(data: Dataset) -> None:
    """Raise unless ``data`` is fit to train on; the message names the bad array and value.

    Raises ``InvalidInputError`` for wrong dtypes or shapes, split parts out of
    order or out of range, non-finite features, labels outside {0, 1} or a
    training part with a single class, and ``InsufficientDataError`` for too
    few rows in a part.
    """
    x, y = data.features, data.labels
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        shape = getattr(x, "shape", type(x).__name__)
        raise InvalidInputError(f"features must be a 2-D array (rows, features), got {shape}")
    if x.dtype != np.float32:
        raise InvalidInputError(
            f"features must be float32 (ONNX runs float32), got {x.dtype}; "
            "build the Dataset with Dataset.from_split"
        )
    if x.shape[1] < 1:
        raise InvalidInputError("features has no columns")
    if not isinstance(y, np.ndarray) or y.ndim != 1:
        shape = getattr(y, "shape", type(y).__name__)
        raise InvalidInputError(f"labels must be a 1-D array, got {shape}")
    if len(y) != len(x):
        raise InvalidInputError(f"labels has {len(y)} entries for {len(x)} feature rows")
    _validate_split(data.split, len(x))
    if (first := first_non_finite(x)) is not None:
        row, col = first
        raise InvalidInputError(
            f"features have {int((~np.isfinite(x)).sum())} non-finite values (first at row {row} "
            f"in {_where(data.split, row)}, feature {col}: {x[row, col]})"
        )
    if data.target == RETURN:
        _validate_returns(data)
        return
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise InvalidInputError(f"labels must be numeric 0/1, got dtype {y.dtype}")
    wrong = (y != 0) & (y != 1)
    if wrong.any():
        row = int(np.argmax(wrong))
        raise InvalidInputError(
            f"labels must be 0 or 1; got {float(y[row])} at row {row} in "
            f"{_where(data.split, row)} ({int(wrong.sum())} bad labels)"
        )
    if len(np.unique(data.y_train)) < 2:
        raise InvalidInputError(
            f"the train split has a single class ({float(data.y_train[0])}): "
            "nothing to learn a direction from"
        )


def _validate_returns(data: Dataset) -> None:
    """A return target's labels: finite floats that vary on the train part."""
    y = data.labels
    if not np.issubdtype(y.dtype, np.floating):
        raise InvalidInputError(f"return labels must be floats, got dtype {y.dtype}")
    if not np.isfinite(y).all():
        row = int(np.argmax(~np.isfinite(y)))
        raise InvalidInputError(
            f"return labels must be finite; got {float(y[row])} at row {row} in "
            f"{_where(data.split, row)}"
        )
    if float(np.ptp(data.y_train)) == 0.0:
        raise InvalidInputError(
            f"the train split's returns are all {float(data.y_train[0])}: nothing to learn"
        )


def first_non_finite(x: npt.NDArray[np.floating[Any]]) -> tuple[int, int] | None:
    """(row, column) of the first NaN or infinity in a 2-D feature block, or None."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    row, col = (int(i) for i in np.argwhere(bad)[0])
    return row, col


def _validate_split(split: Split, n_rows: int) -> None:
    bounds = []
    for part in PARTS:
        s = getattr(split, part)
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise InvalidInputError(f"split.{part} must be a step-1 slice, got {s!r}")
        start, stop = s.start or 0, s.stop
        if stop is None or not 0 <= start <= stop <= n_rows:
            raise InvalidInputError(f"split.{part} {s!r} is outside the {n_rows} feature rows")
        bounds.append((start, stop))
    (_, train_stop), (val_start, val_stop), (test_start, _) = bounds
    if train_stop > val_start or val_stop > test_start:
        raise InvalidInputError(
            f"split parts must be in time order train < val < test, got {split.to_dict()}"
        )
    for part, (start, stop) in zip(PARTS, bounds, strict=True):
        need = MIN_TRAIN_ROWS if part == "train" else MIN_EVAL_ROWS
        if stop - start < need:
            raise InsufficientDataError(f"the {part} split", stop - start, need)


def _where(split: Split, row: int) -> str:
    for part in PARTS:
        s = getattr(split, part)
        if (s.start or 0) <= row < s.stop:
            return f"the {part} split"
    return "the history outside the splits"
