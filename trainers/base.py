"""The trainer extension point: the protocols a trainer and its model satisfy, and the
helpers every trainer shares (hyperparameter resolution, checks, abort reasons).

A trainer turns a chronologically split ``Dataset`` (``trainers.dataset``)
plus a ``TrainingMonitor`` into a ``FittedModel`` that predicts P(up) and
exports itself to ONNX. Trainers are found by name in ``trainers.table``;
this module imports none of them, so backends depend on it and never the reverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

import numpy as np
import numpy.typing as npt

from monitors.base import TrainingMonitor
from trainers.dataset import Dataset
from trainers.errors import InvalidInputError

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

    def predict(self, x: npt.NDArray[Any], /) -> npt.NDArray[np.float64]:
        """What the model predicts for its data's target: P(up) for ``direction``
        (``predict_proba``), the forward return for ``return`` (whose export names its
        output ``prediction``, ``trainers.onnx_io.PREDICTION_OUTPUT``)."""
        ...

    def export_onnx(self, path: Path) -> None: ...


class Trainer(Protocol):
    """Fits one kind of model; constructed with its hyperparameters as keywords.

    ``fit`` reports every epoch / boosting round to ``monitor`` and obeys it
    (STOP ends training keeping the best model; ABORT raises
    ``TrainingAborted``). The same data and ``seed`` give the same model. It
    raises ``InsufficientDataError`` or ``InvalidInputError`` (via
    ``validate_dataset``) for data it cannot train on. Constructors raise
    ``InvalidInputError`` naming a bad or unknown hyperparameter.

    ``unit_test_params`` are keywords that make the trainer fit in about a
    second on a few hundred rows; the conformance suite
    (tests/unit/trainers/test_conformance.py) runs every trainer with them.
    """

    name: str
    unit_test_params: ClassVar[Mapping[str, Any]]

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
