"""LSTM over the feature window; the last hidden state predicts the next bar's direction."""

from __future__ import annotations

import torch
from torch import nn

from trainers.torch_base import TorchTrainer
from trainers.torch_layers import LSTM_PRESETS, stacked_lstm


class LSTMNet(nn.Module):
    """``layers`` stacked LSTM layers of ``hidden`` units -> dropout -> linear logit."""

    def __init__(self, n_features: int, *, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        # torch applies between-layer dropout only when there is more than one layer.
        self.lstm = stacked_lstm(n_features, hidden, layers, dropout)
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
    arch_presets = LSTM_PRESETS
