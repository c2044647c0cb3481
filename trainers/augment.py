"""Training-set augmentation for small data: noise, time shift, feature dropout.

Opt-in (``TrainConfig.augment``) and applied by trainers to their TRAINING
samples only: validation and test rows are what the gates judge, and judging
on synthetic rows would flatter the model. How many copies are added depends
on how little data there is (``multiplier``): a model trained on a few hundred
bars needs the regularisation; one trained on thousands does not.

Each augmented copy of a sample gets, in this order:

- time shift: the history part of a window (every row but the latest) moves
  ``s`` rows into the past, ``s`` uniform in ``0 .. max_shift``, the oldest row
  repeated to fill. The latest row, whose alignment with the label is the
  signal, is kept. Tabular samples (window 1) have no history: no shift.
- feature dropout: each feature is replaced, over the whole window, by its
  training mean with probability ``feature_dropout``.
- gaussian noise: ``noise_scale`` x the feature's training std, per value.

Labels are copied unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from trainers.errors import InvalidInputError

Float32Array = npt.NDArray[np.float32]


def multiplier(n_samples: int) -> int:
    """Total samples / original samples: 3 under 200 training samples, 2 under 300, else 1."""
    if n_samples < 200:
        return 3
    if n_samples < 300:
        return 2
    return 1


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """Strengths of the three augmentations (defaults are mild on purpose)."""

    noise_scale: float = 0.05
    feature_dropout: float = 0.1
    max_shift: int = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_scale) and self.noise_scale >= 0):
            raise InvalidInputError(f"noise_scale must be finite and >= 0, got {self.noise_scale}")
        if not 0 <= self.feature_dropout < 1:
            raise InvalidInputError(
                f"feature_dropout must be in [0, 1), got {self.feature_dropout}"
            )
        if self.max_shift < 0:
            raise InvalidInputError(f"max_shift must be >= 0, got {self.max_shift}")


def augment_training(
    x: Float32Array,
    y: npt.NDArray[Any],
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
) -> tuple[Float32Array, npt.NDArray[Any]]:
    """The training samples followed by ``multiplier(len(x)) - 1`` augmented copies of them.

    ``x`` is ``(n, n_features)`` rows or ``(n, window, n_features)`` windows.
    With a multiplier of 1 the inputs are returned as they are. Never mutates
    ``x`` or ``y``; the result depends only on the inputs and ``rng``'s state.
    """
    if x.ndim not in (2, 3) or len(x) != len(y):
        raise InvalidInputError(
            f"augment needs (n, F) or (n, W, F) samples with n labels, got {x.shape} and {y.shape}"
        )
    copies = multiplier(len(x)) - 1
    if copies == 0:
        return x, y
    config = config or AugmentConfig()
    windows = x if x.ndim == 3 else x[:, None, :]
    flat = windows.reshape(-1, windows.shape[-1])
    mean = flat.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = flat.std(axis=0, dtype=np.float64).astype(np.float32)
    augmented = [_augmented_copy(windows, mean, std, rng, config) for _ in range(copies)]
    out = np.concatenate([windows, *augmented]).reshape(-1, *x.shape[1:])
    return out, np.concatenate([y] * (copies + 1))


def _augmented_copy(
    windows: Float32Array,
    mean: Float32Array,
    std: Float32Array,
    rng: np.random.Generator,
    config: AugmentConfig,
) -> Float32Array:
    n, window, n_features = windows.shape
    out = windows.copy()
    if window > 1 and config.max_shift > 0:
        shift = np.asarray(rng.integers(0, config.max_shift + 1, size=n), dtype=np.intp)
        history = np.arange(window - 1)[None, :] - shift[:, None]
        out[:, :-1] = windows[np.arange(n)[:, None], np.maximum(history, 0)]
    dropped = rng.random((n, n_features)) < config.feature_dropout
    out = np.where(dropped[:, None, :], mean, out)
    noise = rng.standard_normal(out.shape, dtype=np.float32) * (config.noise_scale * std)
    result: Float32Array = (out + noise).astype(np.float32)
    return result
