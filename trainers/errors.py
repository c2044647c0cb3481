"""Errors raised by trainers, features and the training pipeline.

Hierarchy::

    TrainingError(Exception)
    ├── InsufficientDataError(TrainingError, ValueError)  too few rows for features/split/fit
    ├── InvalidInputError(TrainingError, ValueError)      NaN/inf features, wrong shapes, bad labels
    ├── UnknownTrainerError(TrainingError, KeyError)      a trainer name not in the registry map
    ├── TrainingAborted(TrainingError)                    a monitor aborted the run
    ├── ParityError(TrainingError)                        ONNX output differs from native output
    ├── MetadataError(TrainingError, ValueError)          metadata.json of unknown schema or shape
    └── MissingExtraError(TrainingError, ImportError)     an optional extra is not installed
"""

from __future__ import annotations

from collections.abc import Iterable


class TrainingError(Exception):
    """Base class of every error a training run can raise on purpose."""


class InsufficientDataError(TrainingError, ValueError):
    def __init__(self, what: str, have: int, need: int) -> None:
        self.what, self.have, self.need = what, have, need
        super().__init__(f"not enough data for {what}: have {have}, need at least {need}")


class InvalidInputError(TrainingError, ValueError):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class UnknownTrainerError(TrainingError, KeyError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name, self.known = name, sorted(known)
        super().__init__(f"unknown trainer {name!r}; valid names: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class TrainingAborted(TrainingError):
    def __init__(self, trainer: str, step: int, reason: str) -> None:
        self.trainer, self.step, self.reason = trainer, step, reason
        super().__init__(f"{trainer} aborted at step {step}: {reason}")


class ParityError(TrainingError):
    def __init__(self, trainer: str, max_abs_diff: float, tolerance: float) -> None:
        self.trainer, self.max_abs_diff, self.tolerance = trainer, max_abs_diff, tolerance
        super().__init__(
            f"{trainer}: ONNX predictions differ from native by {max_abs_diff:.3g} "
            f"(tolerance {tolerance:.3g})"
        )


class MetadataError(TrainingError, ValueError):
    """A metadata.json that cannot be read as a model's metadata (``trainers.metadata``)."""

    def __init__(self, source: object, problem: str) -> None:
        self.source, self.problem = str(source), problem
        super().__init__(f"{source}: {problem}")


class MissingExtraError(TrainingError, ImportError):
    """A feature needs an optional extra that is not installed; the message says how to get it."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package, self.extra, self.feature = package, extra, feature
        super().__init__(
            f"{feature} needs {package}, which is not installed: pip install 'ctd[{extra}]'"
        )
