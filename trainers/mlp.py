"""A small multilayer perceptron over the flattened feature window.

Its window defaults to 1: the feature function already carries lagged returns
and rolling statistics, so the MLP is the tabular neural baseline beside
xgboost. Set ``window`` above 1 to give it the flattened window instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainers.torch_base import TorchTrainer


class MLPNet(nn.Module):
    """Flatten -> ``layers`` x (linear, ReLU, dropout) of ``hidden`` units -> linear logit."""

    def __init__(
        self, n_features: int, *, window: int, hidden: int, layers: int, dropout: float
    ) -> None:
        super().__init__()
        n_inputs = n_features * window
        body: list[nn.Module] = [nn.Flatten()]
        for i in range(layers):
            body += [
                nn.Linear(n_inputs if i == 0 else hidden, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
            ]
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.body(x)).squeeze(-1)
        return logits


class MLPTrainer(TorchTrainer):
    """Multilayer perceptron on (flattened windows of) feature rows (``trainers.torch_base``)."""

    name = "mlp"
    network = MLPNet
    arch_presets: Mapping[str, Mapping[str, Any]] = {
        "tiny": {"window": 1, "hidden": 32, "layers": 2},
        "lightweight": {"window": 1, "hidden": 64, "layers": 2},
        "deep": {"window": 1, "hidden": 128, "layers": 3},
    }
