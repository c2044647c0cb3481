"""LSTM over the feature window; the last hidden state predicts the next bar's direction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainers.torch_base import TorchTrainer


class LSTMNet(nn.Module):
    """``layers`` stacked LSTM layers of ``hidden`` units -> dropout -> linear logit."""

    def __init__(self, n_features: int, *, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        # torch applies between-layer dropout only when there is more than one layer.
        self.lstm = nn.LSTM(
            n_features, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        logits: torch.Tensor = self.head(self.drop(out[:, -1])).squeeze(-1)
        return logits


class LSTMTrainer(TorchTrainer):
    """Long short-term memory network on windows of feature rows (``trainers.torch_base``)."""

    name = "lstm"
    network = LSTMNet
    arch_presets: Mapping[str, Mapping[str, Any]] = {
        "tiny": {"hidden": 16, "layers": 1},
        "lightweight": {"hidden": 32, "layers": 1},
        "deep": {"hidden": 64, "layers": 2},
    }
