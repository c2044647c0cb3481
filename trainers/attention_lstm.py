"""LSTM with additive attention over its time steps.

A plain LSTM predicts from its last hidden state only; attention lets the
model weigh every step of the window (a shock ten bars ago, say) and combine
that context with the last state.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.torch_base import TorchTrainer
from trainers.torch_layers import LSTM_PRESETS, stacked_lstm


class AttentionLSTMNet(nn.Module):
    """LSTM -> softmax attention over steps -> [context, last state] -> linear logit."""

    def __init__(self, n_features: int, *, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.lstm = stacked_lstm(n_features, hidden, layers, dropout)
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # (N, T, H)
        weights = torch.softmax(self.score(out), dim=1)  # (N, T, 1)
        context = (weights * out).sum(dim=1)
        both = torch.cat([context, out[:, -1]], dim=1)
        logits: torch.Tensor = self.head(self.drop(both)).squeeze(-1)
        return logits


class AttentionLSTMTrainer(TorchTrainer):
    """Attention-LSTM on windows of feature rows (``trainers.torch_base``)."""

    name = "attention_lstm"
    network = AttentionLSTMNet
    arch_presets = LSTM_PRESETS
