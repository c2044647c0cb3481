"""Temporal convolutional network: stacked dilated causal convolutions with residuals.

Dilations double per level (1, 2, 4, ...), so the receptive field,
``1 + 2 (kernel_size - 1)(2^levels - 1)`` rows, covers the window with few
layers; causal (left-only) padding means an output never sees a later row.
The presets give it about the parameter count of the LSTM preset of the same
name. Convolutions parallelise over time, which pays on a GPU or many cores;
on one CPU thread and these small sizes an LSTM trains faster
(``bench/zoo.py`` prints the ratio).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainers.torch_base import TorchTrainer
from trainers.torch_layers import CausalConv1d


class TemporalBlock(nn.Module):
    """Two dilated causal convolutions with ReLU and dropout, plus a residual connection."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            CausalConv1d(c_in, c_out, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout1d(dropout),
            CausalConv1d(c_out, c_out, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout1d(dropout),
        )
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.relu(self.body(x) + self.skip(x))
        return out


class TCNNet(nn.Module):
    """``levels`` temporal blocks of ``channels`` -> the last time step -> linear logit."""

    def __init__(
        self, n_features: int, *, channels: int, levels: int, kernel_size: int, dropout: float
    ) -> None:
        super().__init__()
        blocks = [
            TemporalBlock(n_features if i == 0 else channels, channels, kernel_size, 2**i, dropout)
            for i in range(levels)
        ]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(x.transpose(1, 2))  # (N, T, F) -> (N, C, T)
        logits: torch.Tensor = self.head(features[:, :, -1]).squeeze(-1)
        return logits


class TCNTrainer(TorchTrainer):
    """Temporal convolutional network on windows of feature rows (``trainers.torch_base``)."""

    name = "tcn"
    network = TCNNet
    arch_presets: Mapping[str, Mapping[str, Any]] = {
        "tiny": {"channels": 8, "levels": 3, "kernel_size": 3},
        "lightweight": {"channels": 16, "levels": 4, "kernel_size": 3},
        "deep": {"channels": 32, "levels": 5, "kernel_size": 3},
    }
