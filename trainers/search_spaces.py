"""What hyperparameter tuning may change, per trainer: pure data, no optuna.

Keys are each trainer's real keyword names (``trainers.base.resolve_params``
rejects anything else), so a tuned value goes straight into
``TrainConfig.trainer_params``. The sizes a preset fixes for speed (trees,
boosting rounds, epochs) are not searched: early stopping already picks how
much of them a model uses, and searching them would mostly buy slower trials.
Settings validation imports this module, so it must stay free of optuna and of
every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from trainers.errors import InvalidInputError, UnknownTrainerError
from trainers.table import TRAINERS


@dataclass(frozen=True, slots=True)
class IntRange:
    """Integers ``low..high`` inclusive, log-uniform when ``log``."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True, slots=True)
class FloatRange:
    """Reals in ``[low, high]``, log-uniform when ``log``."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True, slots=True)
class Choice:
    """One of ``options`` (JSON scalars: they are stored in the study and in metadata)."""

    options: tuple[str | int | float | None, ...]


Dimension = IntRange | FloatRange | Choice
SearchSpace = Mapping[str, Dimension]

_TORCH_TRAINING: Final[SearchSpace] = {
    "lr": FloatRange(1e-4, 1e-2, log=True),
    "weight_decay": FloatRange(1e-5, 1e-1, log=True),
    "dropout": FloatRange(0.0, 0.5),
    "batch_size": Choice((32, 64, 128, 256)),
}
_WINDOW: Final[SearchSpace] = {"window": Choice((16, 32, 64))}
_LSTM: Final[SearchSpace] = {"hidden": Choice((16, 32, 64)), "layers": IntRange(1, 2)}

SEARCH_SPACES: Final[Mapping[str, SearchSpace]] = MappingProxyType(
    {
        "xgboost": {
            "max_depth": IntRange(2, 6),
            "learning_rate": FloatRange(0.01, 0.3, log=True),
            "min_child_weight": FloatRange(1.0, 50.0, log=True),
            "subsample": FloatRange(0.5, 1.0),
            "colsample_bytree": FloatRange(0.5, 1.0),
            "reg_lambda": FloatRange(0.1, 20.0, log=True),
            "reg_alpha": FloatRange(1e-3, 10.0, log=True),
            "gamma": FloatRange(0.0, 1.0),
        },
        "random_forest": {
            "max_depth": IntRange(3, 10),
            "min_samples_leaf": IntRange(10, 100, log=True),
            "max_features": FloatRange(0.1, 1.0),
            "max_samples": FloatRange(0.3, 1.0),
            "class_weight": Choice((None, "balanced")),
        },
        "lstm": {**_TORCH_TRAINING, **_WINDOW, **_LSTM},
        "attention_lstm": {**_TORCH_TRAINING, **_WINDOW, **_LSTM},
        "cnn_lstm": {
            **_TORCH_TRAINING,
            **_WINDOW,
            **_LSTM,
            "conv_channels": Choice((8, 16, 32, 64)),
            "kernel_size": Choice((3, 5)),
        },
        "tcn": {
            **_TORCH_TRAINING,
            **_WINDOW,
            "channels": Choice((8, 16, 32)),
            "levels": IntRange(2, 5),
            "kernel_size": Choice((2, 3, 5)),
        },
        # d_model is a multiple of every heads option: the trainer requires divisibility.
        "transformer": {
            **_TORCH_TRAINING,
            **_WINDOW,
            "d_model": Choice((16, 32, 64)),
            "heads": Choice((2, 4)),
            "layers": IntRange(1, 2),
            "ff_dim": Choice((32, 64, 128)),
        },
        # An MLP sees one feature row (window 1 is part of its architecture).
        "mlp": {**_TORCH_TRAINING, "hidden": Choice((32, 64, 128, 256)), "layers": IntRange(1, 4)},
    }
)
"""Trainer name -> its search space. The naive baselines have no hyperparameters."""


def search_space(trainer: str) -> SearchSpace:
    """The search space of ``trainer``.

    Raises ``UnknownTrainerError`` (listing the valid names) for a name not in
    ``trainers.table.TRAINERS`` and ``InvalidInputError`` for a trainer with
    nothing to tune (the naive baselines), naming the tunable ones.
    """
    if trainer not in TRAINERS:
        raise UnknownTrainerError(trainer, TRAINERS)
    try:
        return SEARCH_SPACES[trainer]
    except KeyError:
        raise InvalidInputError(
            f"{trainer}: nothing to tune (it has no hyperparameters); "
            f"tunable trainers: {', '.join(sorted(SEARCH_SPACES))}"
        ) from None


def describe(space: SearchSpace) -> dict[str, object]:
    """A space as JSON (name -> kind and bounds or options), e.g. to hash it."""
    out: dict[str, object] = {}
    for name, d in sorted(space.items()):
        if isinstance(d, Choice):
            out[name] = {"choice": list(d.options)}
        else:
            out[name] = {type(d).__name__: [d.low, d.high], "log": d.log}
    return out
