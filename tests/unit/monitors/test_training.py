# Over 400 lines: 31 tests, the boundaries of every training-time rule beside each other.
"""Training-time monitors: each rule's boundaries, responses, and silence on healthy curves."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from monitors.base import Action, MonitorWarning, NullMonitor, TrainingMonitor
from monitors.rules import (
    DivergenceMonitor,
    ExplodingGradientMonitor,
    NonFiniteLossMonitor,
    OverfittingMonitor,
    StallMonitor,
)
from monitors.training import MonitorConfig, build_monitor, default_monitor

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Step:
    step: int
    train_loss: float
    val_loss: float | None
    extra: Mapping[str, float] = field(default_factory=dict)


class CurveRecorder:
    """Records every step a trainer reports and passes it on, so a real curve can be replayed.

    Wrap the monitor a trainer gets (``CurveRecorder(default_monitor())``), train,
    then ``replay`` the recorded curve through any other monitor or config.
    """

    def __init__(self, inner: TrainingMonitor | None = None) -> None:
        self.inner: TrainingMonitor = inner if inner is not None else NullMonitor()
        self.steps: list[Step] = []

    def on_step(self, step, train_loss, val_loss, extra=None) -> Action:
        self.steps.append(Step(step, train_loss, val_loss, dict(extra or {})))
        return self.inner.on_step(step, train_loss, val_loss, extra or {})

    @property
    def warnings(self) -> Sequence[MonitorWarning]:
        return self.inner.warnings

    def replay(self, monitor: TrainingMonitor) -> list[Action]:
        return [monitor.on_step(s.step, s.train_loss, s.val_loss, s.extra) for s in self.steps]


def feed(monitor: TrainingMonitor, steps: Iterable[Step]) -> list[Action]:
    return [monitor.on_step(s.step, s.train_loss, s.val_loss, s.extra) for s in steps]


def losses(train: Sequence[float], val: Sequence[float | None] | None = None) -> list[Step]:
    vals = val if val is not None else [None] * len(train)
    return [Step(i, t, v) for i, (t, v) in enumerate(zip(train, vals, strict=True))]


def healthy_run(seed: int, n_steps: int = 60) -> list[Step]:
    """A simulated healthy run: losses fall and flatten, val bottoms out, small noisy gap."""
    rng = np.random.default_rng(seed)
    floor = rng.uniform(0.60, 0.66)
    steps = []
    for i in range(n_steps):
        train = floor + (LN2 - floor) * math.exp(-i / 12) + rng.normal(0, 0.002)
        val = LN2 - 0.02 * (1 - math.exp(-i / 8)) + 0.0004 * max(0, i - 25) + rng.normal(0, 0.003)
        train_acc = 0.5 + 0.12 * (1 - math.exp(-i / 10)) + rng.normal(0, 0.01)
        val_acc = 0.5 + 0.06 * (1 - math.exp(-i / 8)) + rng.normal(0, 0.02)
        extra = {
            "train_accuracy": train_acc,
            "val_accuracy": val_acc,
            "grad_norm": abs(rng.normal(0.5, 0.2)),
            "lr": 1e-3,
        }
        steps.append(Step(i, train, val, extra))
    return steps


# --- config and factory -------------------------------------------------------------------


def test_default_config_is_frozen_and_picklable():
    """MonitorConfig survives pickling (it travels to worker processes) and cannot be mutated."""
    config = MonitorConfig(divergence_factor=4.0, overfit_action="stop")
    assert pickle.loads(pickle.dumps(config)) == config  # noqa: S301 - bytes made just above
    with pytest.raises(AttributeError):
        config.divergence_factor = 5.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("divergence_factor", 1.0),
        ("divergence_patience", 0),
        ("divergence_warmup", -1),
        ("divergence_baseline_loss", 0.0),
        ("overfit_max_accuracy_gap", -0.1),
        ("overfit_max_loss_ratio", 0.9),
        ("overfit_min_steps", 0),
        ("stall_patience", 0),
        ("grad_norm_max", math.nan),
        ("overfit_action", "explode"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field_name, value):
    """An out-of-range threshold or unknown response raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field_name):
        MonitorConfig(**{field_name: value})


def test_default_monitor_is_a_no_argument_factory():
    """default_monitor() builds a fresh, silent monitor each call (the pipeline's factory)."""
    first, second = default_monitor(), default_monitor()
    assert first is not second
    assert first.warnings == ()
    assert first.on_step(0, LN2, LN2, {}) is Action.CONTINUE


def test_default_monitor_honours_config():
    """A rule set to None is off: with stall_patience None a flat validation loss never stops."""
    flat = losses([0.6] * 50, [0.7] * 50)
    assert Action.STOP in feed(default_monitor(MonitorConfig(stall_patience=3)), flat)
    assert set(feed(default_monitor(MonitorConfig(stall_patience=None)), flat)) == {Action.CONTINUE}


def test_every_rule_enabled_by_default():
    """build_monitor(MonitorConfig()) contains every rule: each kind can fire through it."""
    monitor = build_monitor(MonitorConfig(overfit_min_steps=1, divergence_warmup=0))
    monitor.on_step(0, 0.6, 0.7, {"grad_norm": 50.0, "train_accuracy": 0.9, "val_accuracy": 0.5})
    monitor.on_step(1, 0.6, 5.0, {})
    monitor.on_step(2, math.nan, 5.0, {})
    kinds = {w.kind for w in monitor.warnings}
    assert kinds == {"exploding_gradients", "overfitting", "divergence", "non_finite"}


# --- conformance over every rule ----------------------------------------------------------

RULES: dict[str, Callable[[], TrainingMonitor]] = {
    "non_finite": NonFiniteLossMonitor,
    "divergence": DivergenceMonitor,
    "overfitting": OverfittingMonitor,
    "stall": StallMonitor,
    "exploding_gradients": ExplodingGradientMonitor,
    "default": default_monitor,
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_starts_empty_and_continues_on_a_healthy_first_step(name):
    """Before any step a rule has no warnings; a healthy first step continues silently."""
    monitor = RULES[name]()
    assert tuple(monitor.warnings) == ()
    extra = {"train_accuracy": 0.55, "val_accuracy": 0.53, "grad_norm": 0.4}
    assert monitor.on_step(0, LN2, LN2, extra) is Action.CONTINUE
    assert tuple(monitor.warnings) == ()


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_rule_never_raises_on_non_finite_input(name, bad):
    """Non-finite losses and metrics never raise; only the non-finite rule reacts to them."""
    monitor = RULES[name]()
    extra = {"train_accuracy": bad, "val_accuracy": bad, "grad_norm": bad}
    actions = [monitor.on_step(i, bad, bad, extra) for i in range(12)]
    expect_abort = name in {"non_finite", "default"}
    assert (Action.ABORT in actions) is expect_abort
    assert all(w.kind == "non_finite" for w in monitor.warnings)


# --- non-finite -------------------------------------------------------------------------


def test_non_finite_metric_in_extra_aborts_naming_it():
    """A NaN extra metric aborts like a NaN loss, and the warning names the metric."""
    monitor = NonFiniteLossMonitor()
    assert monitor.on_step(0, 0.6, 0.7, {"grad_norm": 0.3}) is Action.CONTINUE
    assert monitor.on_step(1, 0.6, 0.7, {"grad_norm": math.nan}) is Action.ABORT
    (warning,) = monitor.warnings
    assert (warning.kind, warning.step) == ("non_finite", 1)
    assert "grad_norm" in warning.message


def test_non_finite_warns_once_and_keeps_its_response():
    """With "warn" later NaNs continue without new warnings; with "stop" STOP sticks."""
    warn = NonFiniteLossMonitor("warn")
    assert feed(warn, losses([math.nan, math.nan, 0.6])) == [Action.CONTINUE] * 3
    assert [w.step for w in warn.warnings] == [0]
    stop = NonFiniteLossMonitor("stop")
    assert feed(stop, losses([math.nan, 0.6, 0.6])) == [Action.STOP] * 3
    assert len(stop.warnings) == 1


# --- divergence -------------------------------------------------------------------------


def test_divergence_factor_boundary_is_strict():
    """A loss exactly factor x its best is tolerated; just above it stops with a warning."""
    at = DivergenceMonitor(factor=3.0, baseline_loss=None, patience=None, warmup=0)
    assert feed(at, losses([1.0, 3.0], [1.0, 3.0])) == [Action.CONTINUE, Action.CONTINUE]
    above = DivergenceMonitor(factor=3.0, baseline_loss=None, patience=None, warmup=0)
    assert feed(above, losses([1.0, 3.0001], [1.0, 3.0001])) == [Action.CONTINUE, Action.STOP]
    (warning,) = above.warnings
    assert (warning.kind, warning.step, warning.value) == ("divergence", 1, 3.0001)


def test_divergence_watches_val_loss_when_present_else_train():
    """The factor rule reads the validation loss if reported, the training loss otherwise."""
    with_val = DivergenceMonitor(baseline_loss=None, patience=None, warmup=0)
    assert Action.STOP not in feed(with_val, losses([0.5, 5.0], [0.7, 0.7]))
    train_only = DivergenceMonitor(baseline_loss=None, patience=None, warmup=0)
    assert feed(train_only, losses([0.5, 5.0])) == [Action.CONTINUE, Action.STOP]
    assert "train loss" in train_only.warnings[0].message


def test_divergence_is_not_judged_during_warmup():
    """The first ``warmup`` steps only set the best; the rule fires at the first judged step."""
    monitor = DivergenceMonitor(baseline_loss=None, patience=None, warmup=2)
    actions = feed(monitor, losses([1.0, 9.0, 9.0, 9.0], [1.0, 9.0, 9.0, 9.0]))
    assert actions == [Action.CONTINUE, Action.CONTINUE, Action.STOP, Action.STOP]
    assert monitor.warnings[0].step == 2


def test_divergence_baseline_catches_a_loss_that_starts_far_too_high():
    """A run at log loss 5-10 from its first step is stopped though its loss 'improves'."""
    val = [9.0, 7.0, 6.0, 5.5, 5.0]
    monitor = DivergenceMonitor()
    actions = feed(monitor, losses(val, val))
    assert actions.index(Action.STOP) == 3  # the first step after the 3-step warm-up
    assert "baseline" in monitor.warnings[0].message
    without = DivergenceMonitor(baseline_loss=None)
    assert Action.STOP not in feed(without, losses(val, val))


def test_rising_train_loss_boundary():
    """Five rises of more than 1% in a row stop; four do not, and a rise of exactly 1% resets."""
    four = [1.0, 1.02, 1.04, 1.06, 1.08, 1.08]
    monitor = DivergenceMonitor(factor=None, patience=5, warmup=0)
    assert Action.STOP not in feed(monitor, losses(four))
    five = [1.0, 1.02, 1.04, 1.06, 1.08, 1.10]
    monitor = DivergenceMonitor(factor=None, patience=5, warmup=0)
    assert feed(monitor, losses(five))[-1] is Action.STOP
    assert monitor.warnings[0].step == 5
    exact = [1.0, 1.02, 1.04, 1.06, 1.06 * 1.01, 1.10]  # the 1% step is not a rise
    monitor = DivergenceMonitor(factor=None, patience=5, warmup=0)
    assert Action.STOP not in feed(monitor, losses(exact))


def test_rising_validation_loss_alone_is_not_divergence():
    """Val loss creeping up under a falling train loss is overfitting, not divergence."""
    train = [0.69 * 0.97**i for i in range(30)]
    val = [0.69 * 1.02**i for i in range(30)]  # +2% per step, 1.8x after 30 steps
    monitor = DivergenceMonitor()
    assert set(feed(monitor, losses(train, val))) == {Action.CONTINUE}


def test_geometric_divergence_is_stopped_within_a_few_steps():
    """Geometrically growing losses (learning rate 100x too high) stop by step 4, with a warning."""
    val = [LN2 * 1.8**i for i in range(20)]
    monitor = default_monitor()
    actions = feed(monitor, losses(val, val))
    first_stop = actions.index(Action.STOP)
    assert first_stop <= 4
    assert all(a is Action.STOP for a in actions[first_stop:])  # sticky
    (warning,) = [w for w in monitor.warnings if w.kind == "divergence"]
    assert warning.step == first_stop


@pytest.mark.parametrize(
    ("response", "action"), [("warn", Action.CONTINUE), ("abort", Action.ABORT)]
)
def test_divergence_response_is_configurable(response, action):
    """divergence_action picks what the trainer is told; the warning is recorded either way."""
    monitor = default_monitor(MonitorConfig(divergence_action=response))
    val = [LN2 * 2.0**i for i in range(8)]
    actions = feed(monitor, losses(val, val))
    assert action in actions and Action.STOP not in actions
    assert [w.kind for w in monitor.warnings] == ["divergence"]


# --- overfitting ------------------------------------------------------------------------


def overfit_run(n: int = 40) -> list[Step]:
    """Train accuracy climbs to 0.95, val accuracy stays at 0.5, val loss still edges down."""
    return [
        Step(
            i,
            LN2 * (1 - 0.6 * i / n),
            LN2 - 0.0005 * i,
            {"train_accuracy": 0.5 + 0.45 * i / (n - 1), "val_accuracy": 0.5},
        )
        for i in range(n)
    ]


def test_overfitting_warns_once_with_first_step_and_worst_gap():
    """A widening gap warns once, at the step it first crossed, and keeps the worst gap."""
    monitor = OverfittingMonitor(max_loss_ratio=None)
    actions = feed(monitor, overfit_run())
    assert set(actions) == {Action.CONTINUE}
    (warning,) = monitor.warnings
    # Train accuracy 0.5 + 0.45 i / 39 is exactly 0.65 (gap 0.15, tolerated) at step 13.
    assert warning.kind == "overfitting"
    assert warning.step == 14
    assert warning.value == pytest.approx(0.45)
    assert "step 39" in warning.message


def test_overfitting_gap_boundary_is_strict():
    """A gap of exactly 0.15 is tolerated; 0.151 warns."""

    def run(train_acc: float) -> OverfittingMonitor:
        monitor = OverfittingMonitor(min_steps=1)
        monitor.on_step(0, 0.6, 0.65, {"train_accuracy": train_acc, "val_accuracy": 0.5})
        return monitor

    assert run(0.65).warnings == ()  # 0.65 - 0.5 is 0.15000000000000002 in binary
    assert [w.value for w in run(0.651).warnings] == [pytest.approx(0.151)]


def test_overfitting_not_judged_before_min_steps():
    """A large gap from the first step is reported only at the min_steps-th step."""
    monitor = OverfittingMonitor(min_steps=5)
    extra = {"train_accuracy": 0.9, "val_accuracy": 0.5}
    for i in range(5):
        monitor.on_step(i, 0.6, 0.65 - 0.01 * i, extra)
        assert (len(monitor.warnings) == 1) is (i == 4)


def test_overfitting_ignores_gap_past_the_best_validation_step():
    """Once val loss rises, the widening gap of discarded weights does not warn."""
    steps = [
        Step(
            i,
            LN2 * 0.98**i,
            LN2 - 0.01 * min(i, 5) + 0.01 * max(0, i - 5),
            {"train_accuracy": 0.52 + 0.02 * i, "val_accuracy": 0.52},
        )
        for i in range(30)
    ]
    monitor = OverfittingMonitor()
    feed(monitor, steps)
    assert monitor.warnings == ()


def test_overfitting_loss_ratio_boundary():
    """val/train loss exactly 1.5 is tolerated; above it warns with the ratio as value."""
    at = OverfittingMonitor(min_steps=1, max_accuracy_gap=None)
    at.on_step(0, 0.4, 0.6)
    assert at.warnings == ()
    above = OverfittingMonitor(min_steps=1, max_accuracy_gap=None)
    above.on_step(0, 0.4, 0.61)
    assert [w.value for w in above.warnings] == [pytest.approx(1.525)]
    assert "loss ratio" in above.warnings[0].message


def test_overfitting_stop_response():
    """With overfit_action "stop" the first crossing stops the run and STOP sticks."""
    monitor = OverfittingMonitor(action="stop", max_loss_ratio=None)
    actions = feed(monitor, overfit_run())
    first = actions.index(Action.STOP)
    assert all(a is Action.STOP for a in actions[first:])


# --- stall ------------------------------------------------------------------------------


def test_stall_stops_after_patience_steps_without_warning():
    """Three steps without improvement stop at the third; stall never warns."""
    monitor = StallMonitor(patience=3)
    actions = feed(monitor, losses([0.6] * 5, [0.70, 0.69, 0.69, 0.695, 0.69]))
    assert actions == [Action.CONTINUE] * 4 + [Action.STOP]
    assert monitor.warnings == ()


def test_stall_improvement_resets_and_min_delta_counts():
    """An improvement resets the count; one smaller than min_delta does not."""
    monitor = StallMonitor(patience=2)
    assert Action.STOP not in feed(monitor, losses([0.6] * 6, [0.7, 0.7, 0.69, 0.69, 0.68, 0.68]))
    strict = StallMonitor(patience=2, min_delta=0.02)
    actions = feed(strict, losses([0.6] * 3, [0.7, 0.69, 0.685]))
    assert actions[-1] is Action.STOP


def test_stall_needs_a_validation_loss():
    """Without a validation loss the stall rule never stops a run."""
    monitor = StallMonitor(patience=1)
    assert set(feed(monitor, losses([0.6] * 10))) == {Action.CONTINUE}


# --- exploding gradients -----------------------------------------------------------------


def test_gradient_norm_boundary_and_once():
    """A norm exactly at the limit is tolerated; above it warns once with its step and value."""
    monitor = ExplodingGradientMonitor(max_norm=10.0)
    norms = [1.0, 10.0, 12.5, 40.0, 3.0]
    actions = [monitor.on_step(i, 0.6, 0.7, {"grad_norm": g}) for i, g in enumerate(norms)]
    assert set(actions) == {Action.CONTINUE}
    (warning,) = monitor.warnings
    assert (warning.kind, warning.step, warning.value) == ("exploding_gradients", 2, 12.5)


def test_missing_grad_norm_is_ignored():
    """Trainers without gradients (XGBoost) never trigger the gradient rule."""
    monitor = ExplodingGradientMonitor()
    assert set(feed(monitor, losses([0.6] * 5, [0.7] * 5))) == {Action.CONTINUE}
    assert monitor.warnings == ()


# --- whole-monitor behaviour ---------------------------------------------------------------


def test_healthy_runs_raise_nothing():
    """Twelve seeded simulated healthy runs pass the default monitor with zero warnings."""
    warnings: list[MonitorWarning] = []
    for seed in range(12):
        monitor = default_monitor()
        actions = feed(monitor, healthy_run(seed))
        warnings.extend(monitor.warnings)
        assert Action.ABORT not in actions
    assert warnings == []


def test_curve_recorder_replays_a_run_exactly():
    """A recorded curve replayed through a fresh monitor gives the same actions and warnings."""
    recorder = CurveRecorder(default_monitor())
    val = [LN2 * 1.8**i for i in range(8)]
    live = feed(recorder, losses(val, val))
    replayed_monitor = default_monitor()
    assert recorder.replay(replayed_monitor) == live
    assert replayed_monitor.warnings == recorder.warnings
    assert len(recorder.steps) == 8


def test_warnings_serialise_to_json_ready_dicts():
    """Every warning kind serialises with kind, step, message and a JSON-safe value."""
    monitor = default_monitor(MonitorConfig(overfit_min_steps=1, divergence_warmup=0))
    monitor.on_step(0, 0.6, 0.7, {"grad_norm": 50.0, "train_accuracy": 0.9, "val_accuracy": 0.5})
    monitor.on_step(1, 0.6, math.inf, {})
    dicts = [w.to_dict() for w in monitor.warnings]
    assert {d["kind"] for d in dicts} == {"exploding_gradients", "overfitting", "non_finite"}
    assert all(set(d) == {"kind", "step", "message", "value"} for d in dicts)
    assert next(d for d in dicts if d["kind"] == "non_finite")["value"] is None
