"""The training-time monitor a candidate runs under: every rule's threshold and response.

``MonitorConfig`` holds them (operators set them with ``CTD_TRAINING_MONITOR``,
and they are part of every run's recorded config); ``build_monitor`` joins the
enabled rules of ``monitors.rules`` into one composite.

The defaults are tuned to stay silent on healthy runs (XGBoost and small
torch models on seeded synthetic markets) while a learning rate 100x too high
is stopped within a few steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from monitors.base import CompositeMonitor, Response, TrainingMonitor, response_action
from monitors.rules import (
    DivergenceMonitor,
    ExplodingGradientMonitor,
    NonFiniteLossMonitor,
    OverfittingMonitor,
    StallMonitor,
)


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Every training-time threshold and response. ``None`` turns a rule off.

    Divergence, either of two rules, judged after ``divergence_warmup`` steps
    (which only set the best):

    - the *watched* loss (validation when the trainer reports one, else
      training) above ``divergence_factor`` x the lower of its best so far and
      ``divergence_baseline_loss`` (ln 2, the log loss of a model that always
      says 0.5). The baseline catches a run that starts and stays far above
      knowing nothing (a learning rate 100x too high: log loss 5-10 from the
      first epoch) though it "improves"; None for a loss other than log loss;
    - the *training* loss rising by more than ``divergence_min_rise``
      (relative) on ``divergence_patience`` consecutive steps. A rising
      validation loss under a falling training loss is overfitting, which
      early stopping handles; a rising training loss means the optimiser fails.

    Overfitting: train - val accuracy (``extra`` keys ``train_accuracy`` and
    ``val_accuracy``, fractions) above ``overfit_max_accuracy_gap``, or val /
    train loss above ``overfit_max_loss_ratio``, measured at the best
    validation step so far (the model early stopping keeps), from the
    ``overfit_min_steps``-th step on. The gate ``monitors.gates.train_val_gap_gate``
    rejects an overfit model at the end; this rule warns early.

    Stall: no validation-loss improvement larger than ``stall_min_delta`` for
    ``stall_patience`` steps -> STOP, without a warning (normal early stopping).

    Exploding gradients: ``extra["grad_norm"]`` (largest pre-clipping norm of
    the step's batches) above ``grad_norm_max``.

    Measured with these defaults on seeded synthetic markets: no warning in 60
    healthy runs (XGBoost, and small stand-in MLP / LSTM nets on the shared
    torch loop, on 3,000-4,000 bars; LSTMs also on 1,000; pre-clipping
    gradient norms at most ~2). Learning rates 100x too high (XGBoost, MLP)
    stop at step 3. On ~1,000 bars XGBoost and MLP runs do warn of
    overfitting, as does an MLP far too big for its data: their kept model's
    train-val gap is 0.15-0.4.
    """

    non_finite_action: Response = "abort"
    divergence_factor: float | None = 3.0
    divergence_baseline_loss: float | None = math.log(2.0)
    divergence_patience: int | None = 5
    divergence_min_rise: float = 0.01
    divergence_warmup: int = 3
    divergence_action: Response = "stop"
    overfit_max_accuracy_gap: float | None = 0.15
    overfit_max_loss_ratio: float | None = 1.5
    overfit_min_steps: int = 10
    overfit_action: Response = "warn"
    stall_patience: int | None = 30
    stall_min_delta: float = 0.0
    grad_norm_max: float | None = 10.0
    grad_norm_action: Response = "warn"

    def __post_init__(self) -> None:
        for name in (
            "non_finite_action",
            "divergence_action",
            "overfit_action",
            "grad_norm_action",
        ):
            try:
                response_action(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        _check("divergence_factor", self.divergence_factor, lambda v: v > 1, "> 1")
        _check("divergence_baseline_loss", self.divergence_baseline_loss, lambda v: v > 0, "> 0")
        _check("divergence_patience", self.divergence_patience, lambda v: v >= 1, ">= 1")
        _check("divergence_min_rise", self.divergence_min_rise, lambda v: v >= 0, ">= 0")
        _check("divergence_warmup", self.divergence_warmup, lambda v: v >= 0, ">= 0")
        _check("overfit_max_accuracy_gap", self.overfit_max_accuracy_gap, lambda v: v >= 0, ">= 0")
        _check("overfit_max_loss_ratio", self.overfit_max_loss_ratio, lambda v: v >= 1, ">= 1")
        _check("overfit_min_steps", self.overfit_min_steps, lambda v: v >= 1, ">= 1")
        _check("stall_patience", self.stall_patience, lambda v: v >= 1, ">= 1")
        _check("stall_min_delta", self.stall_min_delta, lambda v: v >= 0, ">= 0")
        _check("grad_norm_max", self.grad_norm_max, lambda v: v > 0, "> 0")


def _check(name: str, value: float | None, ok: Callable[[float], bool], need: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be {need}, got {value!r}")


def build_monitor(config: MonitorConfig) -> TrainingMonitor:
    """One composite of the non-finite check and every rule ``config`` enables.

    A rule's keywords are its ``MonitorConfig`` fields without their prefix
    (``divergence_factor`` -> ``DivergenceMonitor(factor=...)``).
    """
    c = config
    monitors: list[TrainingMonitor] = [NonFiniteLossMonitor(c.non_finite_action)]
    if c.divergence_factor is not None or c.divergence_patience is not None:
        monitors.append(DivergenceMonitor(**_prefixed(c, "divergence_")))
    if c.overfit_max_accuracy_gap is not None or c.overfit_max_loss_ratio is not None:
        monitors.append(OverfittingMonitor(**_prefixed(c, "overfit_")))
    if c.stall_patience is not None:
        monitors.append(StallMonitor(**_prefixed(c, "stall_")))
    if c.grad_norm_max is not None:
        monitors.append(ExplodingGradientMonitor(c.grad_norm_max, c.grad_norm_action))
    return CompositeMonitor(monitors)


def _prefixed(config: MonitorConfig, prefix: str) -> dict[str, Any]:
    return {
        f.name.removeprefix(prefix): getattr(config, f.name)
        for f in fields(config)
        if f.name.startswith(prefix)
    }


def default_monitor(config: MonitorConfig | None = None) -> TrainingMonitor:
    """Every rule of ``config`` (default: ``MonitorConfig()``) as one monitor.

    Callable with no argument, so it serves as a per-candidate monitor factory.
    """
    return build_monitor(config if config is not None else MonitorConfig())
