"""CNN-LSTM: a causal convolution extracts local patterns, an LSTM reads their sequence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainers.torch_base import TorchTrainer
from trainers.torch_layers import CausalConv1d, stacked_lstm


class CNNLSTMNet(nn.Module):
    """Causal Conv1d -> ReLU -> dropout -> LSTM -> last state -> linear logit."""

    def __init__(
        self,
        n_features: int,
        *,
        conv_channels: int,
        kernel_size: int,
        hidden: int,
        layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv = CausalConv1d(n_features, conv_channels, kernel_size)
        self.drop = nn.Dropout(dropout)
        self.lstm = stacked_lstm(conv_channels, hidden, layers, dropout)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)  # (N, T, C)
        out, _ = self.lstm(self.drop(local))
        logits: torch.Tensor = self.head(self.drop(out[:, -1])).squeeze(-1)
        return logits


class CNNLSTMTrainer(TorchTrainer):
    """CNN-LSTM on windows of feature rows (``trainers.torch_base``)."""

    name = "cnn_lstm"
    network = CNNLSTMNet
    arch_presets: Mapping[str, Mapping[str, Any]] = {
        "tiny": {"conv_channels": 16, "kernel_size": 3, "hidden": 16, "layers": 1},
        "lightweight": {"conv_channels": 32, "kernel_size": 3, "hidden": 32, "layers": 1},
        "deep": {"conv_channels": 64, "kernel_size": 5, "hidden": 64, "layers": 2},
    }
