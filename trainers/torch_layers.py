"""Network layers shared by more than one torch trainer."""

from __future__ import annotations

import torch
from torch import nn


class CausalConv1d(nn.Conv1d):
    """A Conv1d over ``(N, C, T)`` padded on the left only: output t sees inputs <= t."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__(c_in, c_out, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = super().forward(nn.functional.pad(x, (self.left_pad, 0)))
        return out
