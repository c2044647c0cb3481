"""Transformer encoder over the feature window, masked so that each step sees only its past.

Where the LSTMs carry the past through one state and the TCN through a fixed
receptive field, self-attention lets every step of the window weigh every
earlier step directly, with the weights depending on the data. Rows are
projected to ``d_model`` and given sinusoidal positions; a causal mask keeps
each step to itself and earlier steps; the last step's representation
predicts the next bar's direction.

Positions are sinusoidal, not learned: they add no weights to fit from a few
thousand windows (a learned table would add ``window x d_model``), they are
the same for every seed and every retrain, and they export as one constant.

The presets are one encoder layer up to ``lightweight`` and two in ``deep``,
like the LSTM's, at somewhat more weights than the LSTM preset of the same name
(9,153 against 6,305 for lightweight on 15 features). On one CPU thread an
epoch costs more than the LSTM's, and the exported attention carries many
small reshape nodes, so single-row ONNX latency is above the recurrent
models' (``bench/zoo.py``).

Exported with exactly the computation that trains: the causal mask is a
constant buffer applied as such (a constant in the ONNX graph), and the
fused inference kernel ("fast path") of ``nn.TransformerEncoderLayer`` is
never taken (see ``_gelu``), so native eval and the ONNX graph run the same
composed operations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainers.base import require
from trainers.torch_base import TorchTrainer


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU as a plain function, which keeps ``nn.TransformerEncoderLayer`` off its fast path.

    The layer's documented fast-path conditions include "activation is relu or
    gelu" (the torch objects); any other callable disables it. In eval mode
    under ``inference_mode`` (``predict_proba``, validation) the fast path runs
    the fused ``_transformer_encoder_layer_fwd`` kernel, which rounds
    differently from the composed ops the exporter traces (about 1e-6 here)
    and which the exporter cannot emit if it is traced. Off the fast path,
    training, native eval and ONNX all run one computation. The process-wide
    switch ``torch.backends.mha.set_fastpath_enabled`` would do it too, for
    every model in the process.
    """
    return nn.functional.gelu(x)


def sinusoidal_positions(window: int, d_model: int) -> torch.Tensor:
    """``(window, d_model)`` encodings of Vaswani et al.: sin on even, cos on odd columns."""
    position = torch.arange(window, dtype=torch.float64)[:, None]
    rate = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * -math.log(1e4) / d_model)
    table = torch.zeros(window, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: d_model // 2])
    return table.float()


class TransformerNet(nn.Module):
    """Linear projection + sinusoidal positions -> ``layers`` causal pre-norm encoder layers
    (``heads`` heads, ``ff_dim`` GELU feed-forward) -> LayerNorm -> last step -> linear logit."""

    positions: torch.Tensor
    mask: torch.Tensor

    def __init__(
        self,
        n_features: int,
        *,
        window: int,
        d_model: int,
        heads: int,
        layers: int,
        ff_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.project = nn.Linear(n_features, d_model)
        # Non-persistent: functions of the shape, not state; still constants of the export.
        self.register_buffer("positions", sinusoidal_positions(window, d_model), persistent=False)
        # Float mask, -inf above the diagonal: step t attends to steps <= t.
        mask = nn.Transformer.generate_square_subsequent_mask(window)
        self.register_buffer("mask", mask, persistent=False)
        self.drop = nn.Dropout(dropout)
        # Pre-norm (norm_first) layers train stably without a warm-up schedule.
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            ff_dim,
            dropout,
            activation=_gelu,
            batch_first=True,
            norm_first=True,
        )
        # No nested tensors: they only pay with padding masks, and there is no padding here.
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(d_model, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, window, n_features)`` -> ``(N, window, d_model)``; step t depends on steps <= t."""
        h = self.drop(self.project(x) + self.positions)
        # is_causal=False: the mask itself is applied. The True hint would let attention drop
        # the mask and rebuild one from shapes, and None compares the mask with a causal one
        # on every call, a tensor -> bool the exporter's tracer cannot record.
        out: torch.Tensor = self.encoder(h, mask=self.mask, is_causal=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.drop(self.encode(x)[:, -1])).squeeze(-1)
        return logits


class TransformerTrainer(TorchTrainer):
    """Causal Transformer encoder on windows of feature rows (``trainers.torch_base``).

    Besides the shared keywords: ``d_model`` (width, divisible by ``heads``),
    ``heads``, ``layers`` and ``ff_dim`` (feed-forward width).
    """

    name = "transformer"
    network = TransformerNet
    arch_presets: Mapping[str, Mapping[str, Any]] = {
        "tiny": {"window": 16, "d_model": 16, "heads": 2, "layers": 1, "ff_dim": 32},
        "lightweight": {"window": 32, "d_model": 32, "heads": 4, "layers": 1, "ff_dim": 64},
        "deep": {"window": 64, "d_model": 64, "heads": 4, "layers": 2, "ff_dim": 128},
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        d_model, heads = self.hyper["d_model"], self.hyper["heads"]
        require("d_model", d_model, d_model % heads == 0, f"divisible by heads ({heads})")
