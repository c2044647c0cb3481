"""Network layers shared by more than one torch trainer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

LSTM_PRESETS: Mapping[str, Mapping[str, Any]] = {
    "tiny": {"hidden": 16, "layers": 1},
    "lightweight": {"hidden": 32, "layers": 1},
    "deep": {"hidden": 64, "layers": 2},
}
"""Sizes of a recurrent trainer's ``stacked_lstm`` for each preset."""


def stacked_lstm(n_inputs: int, hidden: int, layers: int, dropout: float) -> nn.LSTM:
    """A batch-first LSTM; dropout only between stacked layers (torch rejects it on one)."""
    return nn.LSTM(n_inputs, hidden, layers, batch_first=True, dropout=dropout * (layers > 1))


class CausalConv1d(nn.Conv1d):
    """A Conv1d over ``(N, C, T)`` padded on the left only: output t sees inputs <= t."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__(c_in, c_out, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = super().forward(nn.functional.pad(x, (self.left_pad, 0)))
        return out
