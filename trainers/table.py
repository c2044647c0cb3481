"""Every trainer by name: the one table a new trainer is added to.

Entries name the backend module and class as text, imported on first use, so
importing this table (settings validation does) never pulls xgboost or torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from trainers.base import Trainer
from trainers.errors import UnknownTrainerError

TRAINERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "naive": "trainers.naive:NaiveTrainer",
        "persistence": "trainers.persistence:PersistenceTrainer",
        "xgboost": "trainers.xgboost:XGBoostTrainer",
        "random_forest": "trainers.random_forest:RandomForestTrainer",
        "lstm": "trainers.lstm:LSTMTrainer",
        "tcn": "trainers.tcn:TCNTrainer",
        "attention_lstm": "trainers.attention_lstm:AttentionLSTMTrainer",
        "cnn_lstm": "trainers.cnn_lstm:CNNLSTMTrainer",
        "transformer": "trainers.transformer:TransformerTrainer",
        "mlp": "trainers.mlp:MLPTrainer",
    }
)
"""Trainer name -> ``module:Class``. Adding a trainer means one module and one line here."""


def trainer_class(name: str) -> type[Trainer]:
    """The class registered as ``name``; ``UnknownTrainerError`` lists the valid names."""
    try:
        target = TRAINERS[name]
    except KeyError:
        raise UnknownTrainerError(name, TRAINERS) from None
    module, _, cls = target.partition(":")
    found: type[Trainer] = getattr(importlib.import_module(module), cls)
    return found


def make_trainer(name: str, **params: Any) -> Trainer:
    """Build the trainer registered as ``name`` with its hyperparameters."""
    return trainer_class(name)(**params)


def trainer_backends(names: Sequence[str]) -> list[str]:
    """The backend modules of ``names``, for a worker pool to import once up front."""
    return [TRAINERS[n].partition(":")[0] for n in names if n in TRAINERS]
