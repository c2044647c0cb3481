"""The training-time rules: non-finite loss, divergence, overfitting, stall, exploding gradients.

Each rule is a small ``TrainingMonitor`` (``monitors.base``); ``monitors.training``
holds their thresholds (``MonitorConfig``) and joins the enabled ones. Conventions
shared by every rule:

- a rule fires when its measure is strictly above its threshold; a value
  exactly at the threshold is tolerated;
- a rule warns at most once per run (the warning carries the step where it
  first fired), so a long run cannot flood metrics and metadata;
- after firing with response "stop" or "abort" a rule returns that action on
  every later step; with "warn" the run goes on;
- NaN / infinite inputs are skipped by every rule but the non-finite check, which owns them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

from monitors.base import Action, Extra, MonitorWarning, Response, response_action

# Rounded before comparing so "exactly at the threshold" means what it says in binary floats.
_DIGITS = 12


class _OnceRule:
    """Bookkeeping shared by the warning rules: one warning per run, sticky stop / abort.

    A rule judges each step in ``_judge``; once it fired, later steps return its
    action without judging, unless it ``follows`` a warning (keeps measuring
    after firing with "warn", to report the worst value).
    """

    kind: str
    follows = False

    def __init__(self, action: Response) -> None:
        self._action = response_action(action)
        self._warning: MonitorWarning | None = None

    def on_step(
        self,
        step: int,
        train_loss: float,
        val_loss: float | None,
        extra: Mapping[str, float] | None = None,
    ) -> Action:
        if self.fired and (self._action is not Action.CONTINUE or not self.follows):
            return self._action
        return self._judge(step, train_loss, val_loss, extra or {})

    def _judge(self, step: int, train: float, val: float | None, extra: Extra) -> Action:
        raise NotImplementedError

    @property
    def fired(self) -> bool:
        return self._warning is not None

    def _fire(self, step: int, message: str, value: float) -> Action:
        self._warning = MonitorWarning(self.kind, step, message, value)
        return self._action

    @property
    def warnings(self) -> Sequence[MonitorWarning]:
        return () if self._warning is None else (self._warning,)


class NonFiniteLossMonitor(_OnceRule):
    """Fires on the first NaN or infinite loss or ``extra`` metric: nothing after it can be
    trusted. With "stop" or "abort" every later step returns that action too; with "warn"
    later steps continue silently."""

    kind = "non_finite"

    def __init__(self, action: Response = "abort") -> None:
        super().__init__(action)

    def _judge(self, step: int, train: float, val: float | None, extra: Extra) -> Action:
        values = {"train loss": train, "val loss": val}
        values |= {f"metric {key}": value for key, value in extra.items()}
        for name, value in values.items():
            if value is not None and not math.isfinite(value):
                return self._fire(step, f"{name} is {value} at step {step}", value)
        return Action.CONTINUE


class DivergenceMonitor(_OnceRule):
    """Loss far above its best, or training loss rising step after step (see ``MonitorConfig``)."""

    kind = "divergence"

    def __init__(
        self,
        *,
        factor: float | None = 3.0,
        baseline_loss: float | None = math.log(2.0),
        patience: int | None = 5,
        min_rise: float = 0.01,
        warmup: int = 3,
        action: Response = "stop",
    ) -> None:
        super().__init__(action)
        self.factor = factor
        self.baseline_loss = baseline_loss
        self.patience = patience
        self.min_rise = min_rise
        self.warmup = warmup
        self._seen = 0
        self._best = math.inf
        self._best_step = -1
        self._previous_train: float | None = None
        self._rises = 0
        self._rise_start: float | None = None

    def _judge(self, step: int, train: float, val: float | None, extra: Extra) -> Action:
        watched, name = (val, "val") if val is not None else (train, "train")
        if not (math.isfinite(watched) and math.isfinite(train)):
            return Action.CONTINUE
        self._seen += 1
        judged = self._seen > self.warmup
        previous, self._previous_train = self._previous_train, train
        if previous is not None and train > previous * (1.0 + self.min_rise):
            self._rises += 1
            self._rise_start = previous if self._rises == 1 else self._rise_start
        else:
            self._rises, self._rise_start = 0, None
        if watched < self._best:
            self._best, self._best_step = watched, step
        if not judged:
            return Action.CONTINUE
        if self.factor is not None:
            reference = f"its best {self._best:.4g} (step {self._best_step})"
            base = self._best
            if self.baseline_loss is not None and self.baseline_loss < base:
                reference = f"the uninformed baseline {self.baseline_loss:.4g}"
                base = self.baseline_loss
            ratio = round(watched / base, _DIGITS) if base > 0 else 0.0
            if ratio > self.factor:
                return self._fire(
                    step,
                    f"{name} loss {watched:.4g} at step {step} is {ratio:.2f}x {reference}, "
                    f"above {self.factor:g}x",
                    watched,
                )
        if self.patience is not None and self._rises >= self.patience:
            return self._fire(
                step,
                f"train loss rose {self._rises} steps in a row by more than "
                f"{self.min_rise:.0%} each, from {self._rise_start:.4g} to {train:.4g} "
                f"at step {step}",
                train,
            )
        return Action.CONTINUE


class OverfittingMonitor(_OnceRule):
    """Train-val gap (accuracy points, loss ratio) of the model a run would keep: warn once.

    The gap is measured at the step with the best validation loss so far (the
    current step when there is no validation loss): that is the model early
    stopping keeps and the gate later judges, so the warning foretells a gate
    rejection. Past the optimum the live gap keeps widening on any run, healthy
    or not, and those weights are thrown away. Judged from the ``min_steps``-th
    step on. The warning keeps the step where it first fired and, as the run
    goes on, the worst value of that measure (``value``).
    """

    kind = "overfitting"
    follows = True

    def __init__(
        self,
        *,
        max_accuracy_gap: float | None = 0.15,
        max_loss_ratio: float | None = 1.5,
        min_steps: int = 10,
        action: Response = "warn",
    ) -> None:
        super().__init__(action)
        self.max_accuracy_gap = max_accuracy_gap
        self.max_loss_ratio = max_loss_ratio
        self.min_steps = min_steps
        self._seen = 0
        self._best_val = math.inf
        self._kept: dict[str, float] = {}  # measures at the best step so far
        self._kept_step = -1
        self._measure: str | None = None  # "accuracy" or "loss", once fired
        self._first_step = -1
        self._worst = -math.inf
        self._worst_step = -1

    def _judge(self, step: int, train: float, val: float | None, extra: Extra) -> Action:
        self._seen += 1
        if val is None or (math.isfinite(val) and val < self._best_val):
            self._best_val = math.inf if val is None else val
            self._kept = self._measures(train, val, extra)
            self._kept_step = step
        if self._measure is not None:  # fired with "warn": follow the worst value
            value = self._kept.get(self._measure)
            if value is not None and value > self._worst:
                self._worst, self._worst_step = value, self._kept_step
                self._warning = MonitorWarning(self.kind, self._first_step, self._message(), value)
            return Action.CONTINUE
        if self._seen < self.min_steps:
            return Action.CONTINUE
        for measure, limit in (
            ("accuracy", self.max_accuracy_gap),
            ("loss", self.max_loss_ratio),
        ):
            value = self._kept.get(measure)
            if value is not None and limit is not None and value > limit:
                self._measure, self._first_step = measure, step
                self._worst, self._worst_step = value, self._kept_step
                return self._fire(step, self._message(), value)
        return Action.CONTINUE

    @staticmethod
    def _measures(
        train_loss: float, val_loss: float | None, extra: Mapping[str, float]
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        train_acc, val_acc = extra.get("train_accuracy"), extra.get("val_accuracy")
        if train_acc is not None and val_acc is not None:
            gap = train_acc - val_acc
            if math.isfinite(gap):
                out["accuracy"] = round(gap, _DIGITS)
        if val_loss is not None and train_loss > 0:
            ratio = val_loss / train_loss
            if math.isfinite(ratio):
                out["loss"] = round(ratio, _DIGITS)
        return out

    def _message(self) -> str:
        if self._measure == "accuracy":
            what, limit, worst = (
                "train-val accuracy gap",
                f"{self.max_accuracy_gap:.3f}",
                f"{self._worst:.3f}",
            )
        else:
            what, limit, worst = (
                "val/train loss ratio",
                f"{self.max_loss_ratio:.2f}",
                f"{self._worst:.2f}",
            )
        return (
            f"{what} of the best-validation model above {limit} from step {self._first_step}; "
            f"worst {worst} (model of step {self._worst_step})"
        )


class StallMonitor:
    """Early stopping: STOP once validation loss has not improved for ``patience`` steps.

    Improving means falling below the best by more than ``min_delta``. Runs
    without a validation loss are never stopped by this rule. Never warns.
    """

    def __init__(self, patience: int = 30, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self._best = math.inf
        self._since_best = 0

    def on_step(
        self,
        step: int,
        train_loss: float,
        val_loss: float | None,
        extra: Mapping[str, float] | None = None,
    ) -> Action:
        if val_loss is None or not math.isfinite(val_loss):
            return Action.CONTINUE
        if val_loss < self._best - self.min_delta:
            self._best, self._since_best = val_loss, 0
        else:
            self._since_best += 1
        return Action.STOP if self._since_best >= self.patience else Action.CONTINUE

    @property
    def warnings(self) -> Sequence[MonitorWarning]:
        return ()


class ExplodingGradientMonitor(_OnceRule):
    """``extra["grad_norm"]`` (torch, before clipping) above ``max_norm``: warn once."""

    kind = "exploding_gradients"

    def __init__(self, max_norm: float = 10.0, action: Response = "warn") -> None:
        super().__init__(action)
        self.max_norm = max_norm

    def _judge(self, step: int, train: float, val: float | None, extra: Extra) -> Action:
        norm = extra.get("grad_norm")
        if norm is not None and math.isfinite(norm) and norm > self.max_norm:
            return self._fire(
                step, f"gradient norm {norm:.4g} above {self.max_norm:g} at step {step}", norm
            )
        return Action.CONTINUE


WARNING_KINDS: Final = tuple(
    rule.kind
    for rule in (
        NonFiniteLossMonitor,
        DivergenceMonitor,
        OverfittingMonitor,
        ExplodingGradientMonitor,
    )
)
"""Every kind of warning a training run can carry (metrics create each series at 0)."""
