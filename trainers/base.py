"""The trainer extension point: one protocol, one explicit name -> factory map.

A trainer turns a chronologically split ``Dataset`` (``trainers.dataset``)
plus a ``TrainingMonitor`` into a ``FittedModel`` that predicts P(up) and
exports itself to ONNX. Every trainer validates its input with
``validate_dataset`` so that all of them reject bad data the same way, with
the same message.

The map holds small factories that import their backend on first use, so that
importing this module (the daemon does) never pulls xgboost or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from monitors.base import TrainingMonitor
from trainers.dataset import Dataset
from trainers.errors import InvalidInputError, UnknownTrainerError

PRESETS: Final = ("tiny", "lightweight", "deep")
"""Size presets every trainer offers: ``tiny`` for tests (about a second on 2 cores),
``lightweight`` (the default) for a few thousand bars, ``deep`` for long histories."""


class FittedModel(Protocol):
    """A trained model: P(up) for model inputs, and its own ONNX export.

    ``window`` is 1 for tabular models, whose input is ``(n, n_features)`` rows;
    a sequence model's input is ``(n, window, n_features)`` windows (build them
    with ``Dataset.inputs`` or ``trainers.dataset.sequence_windows``).
    ``predict_proba`` casts to float32 and returns an (n,) float64 array of
    P(up); it raises ``InvalidInputError`` for a wrong shape. ``export_onnx``
    writes one self-contained ONNX file with one float32 input of that shape
    (dynamic batch axis) whose output gives the same probabilities; the caller
    checks parity (``trainers.onnx_io``).
    """

    trainer: str
    params: Mapping[str, Any]
    n_params: int
    n_features: int
    window: int

    def predict_proba(self, x: npt.NDArray[Any], /) -> npt.NDArray[np.float64]: ...

    def export_onnx(self, path: Path) -> None: ...


class Trainer(Protocol):
    """Fits one kind of model; constructed with its hyperparameters as keywords.

    ``fit`` reports every epoch / boosting round to ``monitor`` and obeys it
    (STOP ends training keeping the best model; ABORT raises
    ``TrainingAborted``). The same data and ``seed`` give the same model. It
    raises ``InsufficientDataError`` or ``InvalidInputError`` (via
    ``validate_dataset``) for data it cannot train on. Constructors raise
    ``InvalidInputError`` naming a bad or unknown hyperparameter.
    """

    name: str

    def fit(self, data: Dataset, monitor: TrainingMonitor, seed: int) -> FittedModel: ...


def resolve_params(
    trainer: str,
    presets: Mapping[str, Mapping[str, Any]],
    preset: str,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The preset's hyperparameters updated with ``overrides``; unknown names are errors.

    A misspelt keyword must fail loudly: silently training with the preset's
    value instead is the kind of mistake nobody notices in a metrics table.
    """
    if preset not in presets:
        raise InvalidInputError(
            f"{trainer}: unknown preset {preset!r}; valid presets: {', '.join(presets)}"
        )
    base = presets[preset]
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise InvalidInputError(
            f"{trainer}: unknown parameter(s) {', '.join(unknown)}; "
            f"valid: preset, {', '.join(sorted(base))}"
        )
    return {**base, **overrides}


def require(name: str, value: object, ok: bool, rule: str) -> None:
    """``InvalidInputError("<name> must be <rule>, got <value>")`` unless ``ok``."""
    if not ok:
        raise InvalidInputError(f"{name} must be {rule}, got {value!r}")


def abort_reason(monitor: TrainingMonitor) -> str:
    """Why a monitor aborted: its latest warning, for the ``TrainingAborted`` message."""
    warnings = monitor.warnings
    return warnings[-1].message if warnings else "the monitor returned ABORT"


# Backends load on first use: importing this module must not pull xgboost or torch.
def _naive(**params: Any) -> Trainer:
    from trainers.naive import NaiveTrainer  # noqa: PLC0415

    return NaiveTrainer(**params)


def _xgboost(**params: Any) -> Trainer:
    from trainers.xgboost import XGBoostTrainer  # noqa: PLC0415

    return XGBoostTrainer(**params)


def _lstm(**params: Any) -> Trainer:
    from trainers.lstm import LSTMTrainer  # noqa: PLC0415

    return LSTMTrainer(**params)


def _tcn(**params: Any) -> Trainer:
    from trainers.tcn import TCNTrainer  # noqa: PLC0415

    return TCNTrainer(**params)


def _attention_lstm(**params: Any) -> Trainer:
    from trainers.attention_lstm import AttentionLSTMTrainer  # noqa: PLC0415

    return AttentionLSTMTrainer(**params)


def _cnn_lstm(**params: Any) -> Trainer:
    from trainers.cnn_lstm import CNNLSTMTrainer  # noqa: PLC0415

    return CNNLSTMTrainer(**params)


def _mlp(**params: Any) -> Trainer:
    from trainers.mlp import MLPTrainer  # noqa: PLC0415

    return MLPTrainer(**params)


TRAINERS: Final[Mapping[str, Callable[..., Trainer]]] = MappingProxyType(
    {
        "naive": _naive,
        "xgboost": _xgboost,
        "lstm": _lstm,
        "tcn": _tcn,
        "attention_lstm": _attention_lstm,
        "cnn_lstm": _cnn_lstm,
        "mlp": _mlp,
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
