"""The trainer extension point: one protocol, one explicit name -> factory map.

A trainer turns a chronologically split ``Dataset`` plus a ``TrainingMonitor``
into a ``FittedModel`` that predicts P(up) and exports itself to ONNX. Every
trainer validates its input with ``validate_dataset`` so that all of them
reject bad data the same way, with the same message.

The map holds small factories that import their backend on first use, so that
importing this module (the daemon does) never pulls xgboost or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from monitors.base import TrainingMonitor
from trainers.errors import InsufficientDataError, InvalidInputError, UnknownTrainerError
from trainers.splits import Split

Float32Array = npt.NDArray[np.float32]

MIN_TRAIN_ROWS: Final = 20
"""Fewer training rows than this cannot fit anything worth gating."""
MIN_EVAL_ROWS: Final = 5
"""Validation and test splits need at least this many rows for a metric to mean anything."""


@dataclass(frozen=True, slots=True)
class Dataset:
    """Train / validation / test rows of one symbol, already split in time order.

    Features are float32 because ONNX models run on float32: training on the
    same float32 values lets native and ONNX predictions see identical inputs.
    Labels are 0 (down) / 1 (up). Trainers never mutate these arrays.
    """

    X_train: Float32Array
    y_train: npt.NDArray[Any]
    X_val: Float32Array
    y_val: npt.NDArray[Any]
    X_test: Float32Array
    y_test: npt.NDArray[Any]

    @classmethod
    def from_split(cls, x: npt.ArrayLike, y: npt.ArrayLike, split: Split) -> Dataset:
        """The rows of ``split`` as copies, features as contiguous float32."""
        features = np.asarray(x, dtype=np.float32)
        labels = np.asarray(y)

        def part(s: slice) -> tuple[Float32Array, npt.NDArray[Any]]:
            return np.ascontiguousarray(features[s]), labels[s].copy()

        return cls(*part(split.train), *part(split.val), *part(split.test))

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1]) if self.X_train.ndim == 2 else 0


def validate_dataset(data: Dataset) -> None:
    """Raise unless ``data`` is fit to train on; the message names the bad array and value.

    Raises ``InvalidInputError`` for wrong dtypes or shapes, non-finite features,
    labels outside {0, 1} or a training set with a single class, and
    ``InsufficientDataError`` for too few rows.
    """
    n_features = _validate_part("train", data.X_train, data.y_train, MIN_TRAIN_ROWS, None)
    _validate_part("val", data.X_val, data.y_val, MIN_EVAL_ROWS, n_features)
    _validate_part("test", data.X_test, data.y_test, MIN_EVAL_ROWS, n_features)
    if len(np.unique(data.y_train)) < 2:
        raise InvalidInputError(
            f"y_train has a single class ({data.y_train[0]!r}): nothing to learn a direction from"
        )


def _validate_part(split: str, x: object, y: object, min_rows: int, n_features: int | None) -> int:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        shape = getattr(x, "shape", type(x).__name__)
        raise InvalidInputError(f"X_{split} must be a 2-D array (rows, features), got {shape}")
    if x.dtype != np.float32:
        raise InvalidInputError(
            f"X_{split} must be float32 (ONNX runs float32), got {x.dtype}; "
            "build it with Dataset.from_split or cast with np.float32"
        )
    if x.shape[1] < 1:
        raise InvalidInputError(f"X_{split} has no feature columns")
    if n_features is not None and x.shape[1] != n_features:
        raise InvalidInputError(f"X_{split} has {x.shape[1]} features, X_train has {n_features}")
    if not isinstance(y, np.ndarray) or y.ndim != 1:
        shape = getattr(y, "shape", type(y).__name__)
        raise InvalidInputError(f"y_{split} must be a 1-D array of labels, got {shape}")
    if len(y) != len(x):
        raise InvalidInputError(f"y_{split} has {len(y)} labels for {len(x)} rows of X_{split}")
    if len(x) < min_rows:
        raise InsufficientDataError(f"the {split} split", len(x), min_rows)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(
            f"X_{split} has {int(bad.sum())} non-finite values "
            f"(first at row {row}, feature {col}: {x[row, col]})"
        )
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise InvalidInputError(f"y_{split} must hold numeric labels 0/1, got dtype {y.dtype}")
    wrong = (y != 0) & (y != 1)
    if wrong.any():
        first = int(np.argmax(wrong))
        raise InvalidInputError(
            f"y_{split} labels must be 0 or 1; got {y[first]!r} at row {first} "
            f"({int(wrong.sum())} bad labels)"
        )
    return int(x.shape[1])


def as_feature_rows(x: npt.ArrayLike, n_features: int) -> Float32Array:
    """``x`` as a float32 (n, n_features) array for scoring, or ``InvalidInputError``."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise InvalidInputError(f"feature rows must have shape (n, {n_features}), got {arr.shape}")
    return arr


def abort_reason(monitor: TrainingMonitor) -> str:
    """Why a monitor aborted: its latest warning, for the ``TrainingAborted`` message."""
    warnings = monitor.warnings
    return warnings[-1].message if warnings else "the monitor returned ABORT"


class FittedModel(Protocol):
    """A trained model: P(up) for feature rows, and its own ONNX export.

    ``predict_proba`` takes an (n, n_features) array (cast to float32 inside)
    and returns an (n,) float64 array of P(up); it raises ``InvalidInputError``
    for a wrong shape. ``export_onnx`` writes one self-contained ONNX file with
    a float32 input ``[N, n_features]`` (dynamic batch axis) whose outputs give
    the same probabilities; the caller checks parity (``trainers.onnx_io``).
    """

    trainer: str
    params: Mapping[str, Any]
    n_params: int

    def predict_proba(self, x: npt.NDArray[Any], /) -> npt.NDArray[np.float64]: ...

    def export_onnx(self, path: Path) -> None: ...


class Trainer(Protocol):
    """Fits one kind of model; constructed with its hyperparameters as keywords.

    ``fit`` reports every epoch / boosting round to ``monitor`` and obeys it
    (STOP ends training keeping the best model; ABORT raises
    ``TrainingAborted``). The same data and ``seed`` give the same model. It
    raises ``InsufficientDataError`` or ``InvalidInputError`` (via
    ``validate_dataset``) for data it cannot train on.
    """

    name: str

    def fit(self, data: Dataset, monitor: TrainingMonitor, seed: int) -> FittedModel: ...


def _naive(**params: Any) -> Trainer:
    from trainers.naive import NaiveTrainer  # noqa: PLC0415 - backends load on first use

    return NaiveTrainer(**params)


def _xgboost(**params: Any) -> Trainer:
    from trainers.xgboost import XGBoostTrainer  # noqa: PLC0415 - backends load on first use

    return XGBoostTrainer(**params)


TRAINERS: Final[Mapping[str, Callable[..., Trainer]]] = MappingProxyType(
    {
        "naive": _naive,
        "xgboost": _xgboost,
    }
)
"""Every trainer by name. Adding a trainer means adding one line here."""


def make_trainer(name: str, **params: Any) -> Trainer:
    """Build the trainer registered as ``name``; ``UnknownTrainerError`` lists the valid names."""
    try:
        factory = TRAINERS[name]
    except KeyError:
        raise UnknownTrainerError(name, TRAINERS) from None
    return factory(**params)
