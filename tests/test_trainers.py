"""Conformance checks run over every registered trainer, plus trainer-specific behaviour."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from monitors.base import (
    Action,
    CompositeMonitor,
    MonitorWarning,
    NonFiniteLossMonitor,
    NullMonitor,
    default_monitor,
)
from trainers.base import TRAINERS, Dataset, make_trainer
from trainers.errors import (
    InsufficientDataError,
    InvalidInputError,
    TrainingAborted,
    UnknownTrainerError,
)
from trainers.features import FEATURE_SPEC, training_matrix
from trainers.metrics import classification_metrics
from trainers.onnx_io import OnnxScorer, check_parity
from trainers.splits import chronological_split
from trainers.synthetic import MarketSpec, generate_bars

# Small settings keep the suite fast; every trainer name must appear here.
SMALL_PARAMS: Mapping[str, Mapping[str, object]] = {
    "naive": {},
    "xgboost": {"n_estimators": 60, "n_jobs": 1},
}


def dataset(n_bars: int, *, seed: int, strength: float) -> Dataset:
    bars = generate_bars(MarketSpec("TEST", seed, signal_strength=strength), n_bars)
    m = training_matrix(bars)
    split = chronological_split(
        len(m),
        val_fraction=0.15,
        test_fraction=0.15,
        embargo=FEATURE_SPEC.lookback + FEATURE_SPEC.label_horizon,
    )
    return Dataset.from_split(m.X, m.y, split)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return dataset(900, seed=3, strength=1.0)


def small(name: str):
    return make_trainer(name, **SMALL_PARAMS[name])


def test_every_trainer_has_small_params():
    """The conformance suite covers every registered trainer."""
    assert set(SMALL_PARAMS) == set(TRAINERS)


class RecordingMonitor:
    """Records every step; returns a fixed action from step ``act_at`` on."""

    def __init__(self, action: Action = Action.CONTINUE, act_at: int = 0) -> None:
        self.steps: list[tuple[int, float, float | None]] = []
        self.action, self.act_at = action, act_at

    def on_step(self, step, train_loss, val_loss, extra=None):
        self.steps.append((step, train_loss, val_loss))
        if self.action is not Action.CONTINUE and step >= self.act_at:
            return self.action
        return Action.CONTINUE

    @property
    def warnings(self):
        return ()


# --- conformance: every trainer -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_fit_predicts_probabilities(name, data):
    """A fitted model returns one float64 P(up) in [0, 1] per row and names its trainer."""
    model = small(name).fit(data, default_monitor(), seed=0)
    proba = model.predict_proba(data.X_test)
    assert proba.shape == (len(data.X_test),)
    assert proba.dtype == np.float64
    assert np.all((proba >= 0) & (proba <= 1))
    assert model.trainer == name
    assert model.n_params >= 1
    assert isinstance(model.params, Mapping)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_onnx_export_has_parity(name, data, tmp_path):
    """The ONNX export reproduces native probabilities within 1e-4 at any batch size."""
    model = small(name).fit(data, default_monitor(), seed=0)
    path = tmp_path / "model.onnx"
    model.export_onnx(path)
    assert check_parity(model, path, data.X_test, tolerance=1e-4) <= 1e-4
    scorer = OnnxScorer(path)
    assert scorer.n_features == data.n_features
    for rows in (data.X_test[:1], data.X_test[:7]):
        np.testing.assert_allclose(scorer.predict_proba(rows), model.predict_proba(rows), atol=1e-4)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_same_seed_same_result(name, data):
    """Two fits with the same data and seed give identical predictions and metrics."""
    runs = [small(name).fit(data, default_monitor(), seed=7) for _ in range(2)]
    probas = [m.predict_proba(data.X_test) for m in runs]
    assert np.array_equal(probas[0], probas[1])
    assert classification_metrics(data.y_test, probas[0]) == classification_metrics(
        data.y_test, probas[1]
    )


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_does_not_mutate_inputs(name, data):
    """Fitting and predicting leave every input array unchanged."""
    before = {f.name: getattr(data, f.name).copy() for f in dataclasses.fields(data)}
    model = small(name).fit(data, default_monitor(), seed=0)
    model.predict_proba(data.X_val)
    for field, original in before.items():
        assert np.array_equal(getattr(data, field), original), field


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_reports_steps_to_monitor(name, data):
    """Every trainer reports at least one step with finite train and val losses."""
    monitor = RecordingMonitor()
    small(name).fit(data, monitor, seed=0)
    assert monitor.steps
    step, train_loss, val_loss = monitor.steps[0]
    assert step == 0
    assert math.isfinite(train_loss)
    assert val_loss is not None
    assert math.isfinite(val_loss)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_monitor_abort_raises(name, data):
    """A monitor's ABORT ends the fit with TrainingAborted naming the trainer and step."""
    with pytest.raises(TrainingAborted) as info:
        small(name).fit(data, RecordingMonitor(Action.ABORT), seed=0)
    assert info.value.trainer == name
    assert info.value.step == 0


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_predict_rejects_wrong_width(name, data):
    """Scoring rows with the wrong number of features raises a clear InvalidInputError."""
    model = small(name).fit(data, default_monitor(), seed=0)
    with pytest.raises(InvalidInputError, match=rf"shape \(n, {data.n_features}\)"):
        model.predict_proba(data.X_test[:, :-1])


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_trainer_documents_itself(name):
    """Every trainer class carries a docstring and its registry name."""
    trainer = small(name)
    assert trainer.name == name
    assert type(trainer).__doc__


def _replace(data: Dataset, **changes: object) -> Dataset:
    return dataclasses.replace(data, **changes)  # type: ignore[arg-type]


def _with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[3, 2] = np.nan
    return x


BAD_INPUTS: dict[str, tuple[Callable[[Dataset], Dataset], type[Exception], str]] = {
    "too few train rows": (
        lambda d: _replace(d, X_train=d.X_train[:5], y_train=d.y_train[:5]),
        InsufficientDataError,
        "train split: have 5",
    ),
    "too few test rows": (
        lambda d: _replace(d, X_test=d.X_test[:2], y_test=d.y_test[:2]),
        InsufficientDataError,
        "test split: have 2",
    ),
    "NaN feature": (
        lambda d: _replace(d, X_val=_with_nan(d.X_val)),
        InvalidInputError,
        "X_val has 1 non-finite values",
    ),
    "1-D features": (
        lambda d: _replace(d, X_train=d.X_train[:, 0].copy()),
        InvalidInputError,
        "X_train must be a 2-D array",
    ),
    "feature count differs": (
        lambda d: _replace(d, X_test=d.X_test[:, :-1].copy()),
        InvalidInputError,
        "X_test has .* features, X_train has",
    ),
    "label count differs": (
        lambda d: _replace(d, y_train=d.y_train[:-1]),
        InvalidInputError,
        "y_train has .* labels for .* rows",
    ),
    "label 2": (
        lambda d: _replace(d, y_val=np.where(np.arange(len(d.y_val)) == 4, 2.0, d.y_val)),
        InvalidInputError,
        "y_val labels must be 0 or 1; got np.float64\\(2.0\\) at row 4",
    ),
    "float64 features": (
        lambda d: _replace(d, X_train=d.X_train.astype(np.float64)),
        InvalidInputError,
        "X_train must be float32",
    ),
    "single class": (
        lambda d: _replace(d, y_train=np.zeros_like(d.y_train)),
        InvalidInputError,
        "y_train has a single class",
    ),
}


@pytest.mark.parametrize("name", sorted(TRAINERS))
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_rejects_bad_input(name, case, data):
    """Every trainer rejects the same bad input with the same error naming the problem."""
    corrupt, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        small(name).fit(corrupt(data), default_monitor(), seed=0)


# --- registry -----------------------------------------------------------------------


def test_unknown_trainer_lists_valid_names():
    """An unknown trainer name raises UnknownTrainerError listing every valid name."""
    with pytest.raises(UnknownTrainerError) as info:
        make_trainer("lightgbm")
    assert str(info.value) == "unknown trainer 'lightgbm'; valid names: naive, xgboost"
    assert isinstance(info.value, KeyError)


def test_registry_is_read_only():
    """The name -> trainer map cannot be changed at run time."""
    with pytest.raises(TypeError):
        TRAINERS["x"] = TRAINERS["naive"]  # type: ignore[index]


# --- xgboost --------------------------------------------------------------------------


def test_xgboost_beats_naive_on_planted_signal():
    """On learnable bars xgboost's test accuracy clearly beats the naive baseline's."""
    d = dataset(2500, seed=1, strength=1.0)
    xgb = make_trainer("xgboost", n_estimators=150).fit(d, default_monitor(), seed=0)
    naive = make_trainer("naive").fit(d, default_monitor(), seed=0)
    acc_xgb = classification_metrics(d.y_test, xgb.predict_proba(d.X_test))["accuracy"]
    acc_naive = classification_metrics(d.y_test, naive.predict_proba(d.X_test))["accuracy"]
    assert acc_xgb is not None
    assert acc_naive is not None
    assert acc_xgb > acc_naive + 0.05


def test_xgboost_monitor_stop_ends_boosting(data):
    """A monitor's STOP ends boosting at that round and keeps at most the rounds seen."""
    monitor = RecordingMonitor(Action.STOP, act_at=4)
    model = make_trainer("xgboost", n_estimators=200).fit(data, monitor, seed=0)
    assert [s[0] for s in monitor.steps] == [0, 1, 2, 3, 4]
    assert model.params["n_rounds"] <= 5


def test_xgboost_early_stopping_keeps_best_round(data):
    """Early stopping cuts the model back to its best validation round."""
    monitor = RecordingMonitor()
    model = make_trainer("xgboost", n_estimators=300, early_stopping_rounds=5).fit(
        data, monitor, seed=0
    )
    val_losses = [s[2] for s in monitor.steps if s[2] is not None]
    assert len(val_losses) < 300
    assert model.params["n_rounds"] == int(np.argmin(val_losses)) + 1


def test_xgboost_seed_changes_subsampling(data):
    """Different seeds give different models (row/column subsampling is seeded)."""
    a, b = (make_trainer("xgboost", n_estimators=60).fit(data, NullMonitor(), s) for s in (0, 1))
    assert not np.array_equal(a.predict_proba(data.X_test), b.predict_proba(data.X_test))


@pytest.mark.parametrize(
    ("param", "value"), [("n_estimators", 0), ("early_stopping_rounds", 0), ("n_jobs", 0)]
)
def test_xgboost_rejects_bad_params(param, value):
    """Nonsense hyperparameters fail at construction with the parameter's name and value."""
    with pytest.raises(InvalidInputError, match=f"{param} must be >= 1, got {value}"):
        make_trainer("xgboost", **{param: value})


# --- monitor protocol as trainers rely on it -----------------------------------------


@pytest.mark.parametrize("loss", [math.nan, math.inf])
def test_non_finite_loss_aborts_with_warning(loss):
    """A NaN/inf train or val loss aborts and leaves one 'non_finite' warning."""
    for train, val in ((loss, 0.5), (0.5, loss)):
        monitor = NonFiniteLossMonitor()
        assert monitor.on_step(0, 0.69, 0.69) is Action.CONTINUE
        assert monitor.on_step(1, train, val) is Action.ABORT
        (warning,) = monitor.warnings
        assert (warning.kind, warning.step) == ("non_finite", 1)
        assert warning.to_dict()["value"] is None  # JSON has no NaN


def test_composite_strongest_action_wins_and_warnings_concatenate():
    """CompositeMonitor returns the strongest action and every member's warnings."""
    first, second = NonFiniteLossMonitor(), NonFiniteLossMonitor()
    stopper = RecordingMonitor(Action.STOP)
    composite = CompositeMonitor([first, stopper, second])
    assert composite.on_step(0, 0.6, 0.6) is Action.STOP
    assert composite.on_step(1, math.nan, 0.6) is Action.ABORT
    assert [w.kind for w in composite.warnings] == ["non_finite", "non_finite"]
    assert len(stopper.steps) == 2  # every member saw every step


def test_null_monitor_never_interferes():
    """NullMonitor continues through anything and never warns."""
    monitor = NullMonitor()
    assert monitor.on_step(0, math.nan, None) is Action.CONTINUE
    assert monitor.warnings == ()


def test_monitor_warning_to_dict():
    """A warning serialises with its kind, step, message and finite value."""
    warning = MonitorWarning("overfit", 12, "gap 0.3", 0.3)
    assert warning.to_dict() == {"kind": "overfit", "step": 12, "message": "gap 0.3", "value": 0.3}
