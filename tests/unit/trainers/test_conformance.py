# Over 400 lines: one contract run over every trainer, with its shared datasets and fakes.
"""Conformance checks run over every registered trainer, plus xgboost and baseline specifics."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
import pytest

from monitors.base import Action, CompositeMonitor, MonitorWarning, NullMonitor
from monitors.rules import NonFiniteLossMonitor
from monitors.training import default_monitor
from trainers.base import FittedModel
from trainers.dataset import Dataset
from trainers.errors import (
    InsufficientDataError,
    InvalidInputError,
    TrainingAborted,
    UnknownTrainerError,
)
from trainers.features import training_matrix
from trainers.metrics import classification_metrics
from trainers.onnx_io import PREDICTION_OUTPUT, OnnxScorer, check_parity, max_abs_diff
from trainers.synthetic import MarketSpec, generate_bars, planted_return_bars
from trainers.table import TRAINERS, make_trainer, trainer_class
from trainers.targets import RETURN
from trainers.torch_base import TorchTrainer

TORCH_TRAINERS = tuple(n for n in sorted(TRAINERS) if issubclass(trainer_class(n), TorchTrainer))
DIRECTION_ONLY = ("persistence",)
"""Trainers that reject a return target (persistence needs the label horizon it never sees)."""
RETURN_TRAINERS = tuple(sorted(set(TRAINERS) - set(DIRECTION_ONLY)))


def dataset(n_bars: int, *, seed: int, strength: float) -> Dataset:
    bars = generate_bars(MarketSpec("TEST", seed, signal_strength=strength), n_bars)
    m = training_matrix(bars)
    return m.dataset(val_fraction=0.15, test_fraction=0.15)


def small(name: str, **extra: Any):
    """The trainer with its own small unit-test parameters (``Trainer.unit_test_params``)."""
    return make_trainer(name, **trainer_class(name).unit_test_params, **extra)


class RecordingMonitor:
    """Records every step and its extra keys; returns a fixed action from step ``act_at`` on."""

    def __init__(self, action: Action = Action.CONTINUE, act_at: int = 0) -> None:
        self.steps: list[tuple[int, float, float | None]] = []
        self.extras: list[dict[str, float]] = []
        self.action, self.act_at = action, act_at

    def on_step(self, step, train_loss, val_loss, extra=None):
        self.steps.append((step, train_loss, val_loss))
        self.extras.append(dict(extra or {}))
        if self.action is not Action.CONTINUE and step >= self.act_at:
            return self.action
        return Action.CONTINUE

    @property
    def warnings(self):
        return ()


@pytest.fixture(scope="module")
def data() -> Dataset:
    return dataset(900, seed=3, strength=1.0)


@pytest.fixture(scope="module")
def pristine(data) -> dict[str, Any]:
    """Copies of every Dataset field, taken before any trainer saw it."""
    return {f.name: _copy(getattr(data, f.name)) for f in dataclasses.fields(data)}


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else value


@pytest.fixture(scope="module")
def fitted(data, pristine) -> Callable[[str], tuple[FittedModel, RecordingMonitor]]:
    """One fit per trainer (seed 0, recorded), shared by the checks that only read it."""
    cache: dict[str, tuple[FittedModel, RecordingMonitor]] = {}

    def get(name: str) -> tuple[FittedModel, RecordingMonitor]:
        if name not in cache:
            monitor = RecordingMonitor()
            cache[name] = (small(name).fit(data, monitor, seed=0), monitor)
        return cache[name]

    return get


def test_every_trainer_supplies_small_unit_test_params():
    """Every registered trainer names small parameters the conformance suite can fit with."""
    for name in TRAINERS:
        params = trainer_class(name).unit_test_params
        assert isinstance(params, Mapping), name
        make_trainer(name, **params)  # valid keywords


# --- conformance: every trainer -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_fit_predicts_probabilities(name, data, fitted):
    """A fitted model returns one float64 P(up) in [0, 1] per test row and describes itself."""
    model, _ = fitted(name)
    proba = model.predict_proba(data.inputs("test", model.window))
    assert proba.shape == (len(data.y_test),)
    assert proba.dtype == np.float64
    assert np.all((proba >= 0) & (proba <= 1))
    assert model.trainer == name
    assert model.n_params >= 1
    assert model.n_features == data.n_features
    assert model.window >= 1
    assert isinstance(model.params, Mapping)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_onnx_export_has_parity(name, data, fitted, tmp_path):
    """The ONNX export takes the model's input shape and reproduces it within 1e-4 at any batch."""
    model, _ = fitted(name)
    path = tmp_path / "model.onnx"
    model.export_onnx(path)
    x = data.inputs("test", model.window)
    assert check_parity(model, path, x, tolerance=1e-4) <= 1e-4
    scorer = OnnxScorer(path)
    assert (scorer.n_features, scorer.window) == (data.n_features, model.window)
    for rows in (x[:1], x[:7]):
        np.testing.assert_allclose(scorer.predict_proba(rows), model.predict_proba(rows), atol=1e-4)
    # Live scoring feeds trailing feature rows; the last one's P(up) is the last window's.
    stop = data.split.test.stop
    latest = scorer.predict_latest(data.features[stop - model.window - 3 : stop])
    assert latest == pytest.approx(float(scorer.predict_proba(x[-1:])[0]), abs=1e-7)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_same_seed_same_result(name, data, fitted):
    """A second fit with the same data and seed gives identical predictions and metrics."""
    first, _ = fitted(name)
    again = small(name).fit(data, NullMonitor(), seed=0)
    x = data.inputs("test", first.window)
    p1, p2 = first.predict_proba(x), again.predict_proba(x)
    assert np.array_equal(p1, p2)
    assert classification_metrics(data.y_test, p1) == classification_metrics(data.y_test, p2)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_does_not_mutate_inputs(name, data, pristine, fitted):
    """Fitting and predicting leave every Dataset array unchanged."""
    model, _ = fitted(name)
    model.predict_proba(data.inputs("val", model.window))
    for field, original in pristine.items():
        current = getattr(data, field)
        if isinstance(original, np.ndarray):
            assert np.array_equal(current, original), field
        else:
            assert current == original, field


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_reports_steps_to_monitor(name, fitted):
    """Every step reaches the monitor in order with finite losses and train/val accuracies."""
    _, monitor = fitted(name)
    assert [s[0] for s in monitor.steps] == list(range(len(monitor.steps)))
    for (_, train_loss, val_loss), extra in zip(monitor.steps, monitor.extras, strict=True):
        assert math.isfinite(train_loss)
        assert val_loss is not None
        assert math.isfinite(val_loss)
        assert 0.0 <= extra["train_accuracy"] <= 1.0
        assert 0.0 <= extra["val_accuracy"] <= 1.0
    if name in TORCH_TRAINERS:
        assert all(e["grad_norm"] > 0 and e["lr"] > 0 for e in monitor.extras)
    if name == "xgboost":
        assert all(e["lr"] == 0.1 for e in monitor.extras)  # the tiny preset's learning rate


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_monitor_abort_raises(name, data):
    """A monitor's ABORT ends the fit with TrainingAborted naming the trainer and step."""
    with pytest.raises(TrainingAborted) as info:
        small(name).fit(data, RecordingMonitor(Action.ABORT), seed=0)
    assert info.value.trainer == name
    assert info.value.step == 0


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_predict_rejects_wrong_width(name, data, fitted):
    """Inputs with the wrong number of features raise InvalidInputError naming the shape."""
    model, _ = fitted(name)
    x = data.inputs("test", model.window)[..., :-1]
    expected = (
        rf"shape \(n, {data.n_features}\)"
        if model.window == 1
        else rf"shape \(n, {model.window}, {data.n_features}\)"
    )
    with pytest.raises(InvalidInputError, match=expected):
        model.predict_proba(x)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_trainer_documents_itself(name):
    """Every trainer class carries a docstring and its registry name."""
    trainer = small(name)
    assert trainer.name == name
    assert type(trainer).__doc__


@pytest.mark.parametrize("name", sorted(set(TRAINERS) - {"naive"}))
def test_rejects_unknown_parameter_and_preset(name):
    """A misspelt hyperparameter or preset fails at construction, listing the valid ones."""
    with pytest.raises(InvalidInputError, match=rf"{name}: unknown parameter\(s\) hiden; valid: "):
        make_trainer(name, hiden=3)
    with pytest.raises(InvalidInputError, match=r"unknown preset 'huge'; valid presets: tiny, "):
        make_trainer(name, preset="huge")


def _with(data: Dataset, **changes: Any) -> Dataset:
    return dataclasses.replace(data, **changes)


def _split(data: Dataset, **parts: slice) -> Dataset:
    return _with(data, split=dataclasses.replace(data.split, **parts))


def _nan_at(x: np.ndarray, row: int, col: int) -> np.ndarray:
    x = x.copy()
    x[row, col] = np.nan
    return x


def _label_at(y: np.ndarray, row: int, value: float) -> np.ndarray:
    y = y.copy()
    y[row] = value
    return y


BAD_INPUTS: dict[str, tuple[Callable[[Dataset], Dataset], type[Exception], str]] = {
    "too few train rows": (
        lambda d: _split(d, train=slice(0, 5)),
        InsufficientDataError,
        "train split: have 5",
    ),
    "too few test rows": (
        lambda d: _split(d, test=slice(d.split.test.start, d.split.test.start + 2)),
        InsufficientDataError,
        "test split: have 2",
    ),
    "NaN feature": (
        lambda d: _with(d, features=_nan_at(d.features, d.split.val.start + 3, 2)),
        InvalidInputError,
        r"features have 1 non-finite values \(first at row \d+ in the val split, feature 2: nan",
    ),
    "1-D features": (
        lambda d: _with(d, features=d.features[:, 0].copy()),
        InvalidInputError,
        "features must be a 2-D array",
    ),
    "3-D features": (
        lambda d: _with(d, features=d.features[:, :, None].copy()),
        InvalidInputError,
        "features must be a 2-D array",
    ),
    "label count differs": (
        lambda d: _with(d, labels=d.labels[:-1]),
        InvalidInputError,
        "labels has .* entries for .* feature rows",
    ),
    "label 2": (
        lambda d: _with(d, labels=_label_at(d.labels, d.split.val.start + 4, 2.0)),
        InvalidInputError,
        r"labels must be 0 or 1; got 2.0 at row \d+ in the val split",
    ),
    "float64 features": (
        lambda d: _with(d, features=d.features.astype(np.float64)),
        InvalidInputError,
        "features must be float32",
    ),
    "single class": (
        lambda d: _with(d, labels=np.zeros_like(d.labels)),
        InvalidInputError,
        "the train split has a single class",
    ),
    "split past the rows": (
        lambda d: _split(d, test=slice(d.split.test.start, len(d.labels) + 10)),
        InvalidInputError,
        r"split.test .* is outside the \d+ feature rows",
    ),
    "parts out of order": (
        lambda d: _split(d, val=slice(d.split.train.start, d.split.train.start + 50)),
        InvalidInputError,
        "split parts must be in time order",
    ),
}


@pytest.mark.parametrize("name", sorted(TRAINERS))
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_rejects_bad_input(name, case, data):
    """Every trainer rejects the same bad input with the same error naming the problem."""
    corrupt, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        small(name).fit(corrupt(data), default_monitor(), seed=0)


# --- planted signal: every trainer learns it -------------------------------------------


@pytest.fixture(scope="module")
def signal_data() -> Dataset:
    return dataset(4000, seed=1, strength=1.0)


# Persistence is a fixed rule and this signal mean reversion; test_persistence.py plants momentum.
@pytest.mark.parametrize("name", sorted(set(TRAINERS) - {"naive", "persistence"}))
def test_beats_naive_on_planted_signal(name, signal_data):
    """On bars with a planted AR(1) signal every trainer clearly beats the naive baseline."""
    d = signal_data
    model = small(name).fit(d, default_monitor(), seed=0)
    naive = make_trainer("naive").fit(d, default_monitor(), seed=0)
    acc = classification_metrics(d.y_test, model.predict_proba(d.inputs("test", model.window)))
    base = classification_metrics(d.y_test, naive.predict_proba(d.X_test))
    assert acc["accuracy"] is not None
    assert base["accuracy"] is not None
    assert acc["accuracy"] > base["accuracy"] + 0.05


# --- return target: every trainer but the direction-only ones ----------------------------


def return_dataset(n_bars: int, *, seed: int, strength: float) -> Dataset:
    """Bars whose next 1-bar log return is linear in the last one (``ret_1``), as returns."""
    bars = planted_return_bars(n_bars, horizon=1, strength=strength, seed=seed)
    m = training_matrix(bars, target=RETURN, horizon=1)
    return m.dataset(val_fraction=0.15, test_fraction=0.15)


@pytest.fixture(scope="module")
def return_data() -> Dataset:
    return return_dataset(1200, seed=1, strength=0.5)


@pytest.fixture(scope="module")
def fitted_return(return_data) -> Callable[[str], tuple[FittedModel, RecordingMonitor]]:
    """One return fit per trainer (seed 0, recorded), shared by the checks that only read it."""
    cache: dict[str, tuple[FittedModel, RecordingMonitor]] = {}

    def get(name: str) -> tuple[FittedModel, RecordingMonitor]:
        if name not in cache:
            monitor = RecordingMonitor()
            cache[name] = (small(name).fit(return_data, monitor, seed=0), monitor)
        return cache[name]

    return get


@pytest.mark.parametrize("name", RETURN_TRAINERS)
def test_return_fit_predicts_returns_not_probabilities(name, return_data, fitted_return):
    """A return model predicts one finite float64 return per row and refuses P(up)."""
    model, _ = fitted_return(name)
    x = return_data.inputs("test", model.window)
    predicted = model.predict(x)
    assert predicted.shape == (len(return_data.y_test),)
    assert predicted.dtype == np.float64
    assert np.isfinite(predicted).all()
    assert np.abs(predicted).max() < 0.1  # returns (std ~0.01), not probabilities
    with pytest.raises(InvalidInputError, match="predicts returns, not P\\(up\\)"):
        model.predict_proba(x)


@pytest.mark.parametrize("name", RETURN_TRAINERS)
def test_return_onnx_export_is_one_prediction_with_parity(
    name, return_data, fitted_return, tmp_path
):
    """The export's one output is ``prediction`` [N, 1]: scored as a return model, within the
    parity gate's 1e-4 of ``predict`` at any batch, and live scoring reads it."""
    model, _ = fitted_return(name)
    path = tmp_path / "model.onnx"
    model.export_onnx(path)
    scorer = OnnxScorer(path)
    assert (scorer.target, scorer.output_name) == (RETURN, PREDICTION_OUTPUT)
    (output,) = onnx.load(str(path)).graph.output
    assert output.name == PREDICTION_OUTPUT
    assert output.type.tensor_type.shape.dim[1].dim_value == 1  # [N, 1]
    x = return_data.inputs("test", model.window)
    assert max_abs_diff(model, scorer, x) <= 1e-4
    assert max_abs_diff(model, scorer, x[:1]) <= 1e-4
    stop = return_data.split.test.stop
    latest = scorer.predict_latest(return_data.features[stop - model.window - 3 : stop])
    assert latest == pytest.approx(float(scorer.predict(x[-1:])[0]), abs=1e-9)


@pytest.mark.parametrize("name", RETURN_TRAINERS)
def test_return_same_seed_same_result(name, return_data, fitted_return):
    """A second return fit with the same data and seed predicts identically."""
    first, _ = fitted_return(name)
    again = small(name).fit(return_data, NullMonitor(), seed=0)
    x = return_data.inputs("test", first.window)
    assert np.array_equal(first.predict(x), again.predict(x))


@pytest.mark.parametrize("name", RETURN_TRAINERS)
def test_return_reports_steps_to_monitor(name, fitted_return):
    """Every step reaches the monitor in order with finite train and val losses, and no
    accuracy: a return has none."""
    _, monitor = fitted_return(name)
    assert [s[0] for s in monitor.steps] == list(range(len(monitor.steps)))
    for (_, train_loss, val_loss), extra in zip(monitor.steps, monitor.extras, strict=True):
        assert math.isfinite(train_loss)
        assert val_loss is not None
        assert math.isfinite(val_loss)
        assert not {"train_accuracy", "val_accuracy"} & set(extra)
    if name in TORCH_TRAINERS:
        assert all(e["grad_norm"] > 0 and e["lr"] > 0 for e in monitor.extras)


@pytest.mark.parametrize("name", sorted(set(RETURN_TRAINERS) - {"naive"}))
def test_return_beats_zero_on_planted_signal(name, return_data, fitted_return):
    """On bars with a planted AR(1) return every return model's test RMSE clearly beats
    predicting zero (the best predictor's is ~0.87 of it)."""
    model, _ = fitted_return(name)
    y = return_data.y_test
    predicted = model.predict(return_data.inputs("test", model.window))
    rmse, zero = np.sqrt(np.mean((predicted - y) ** 2)), np.sqrt(np.mean(y**2))
    assert rmse < 0.95 * zero


@pytest.mark.parametrize("name", DIRECTION_ONLY)
def test_direction_only_trainer_rejects_return_target(name, return_data):
    """A trainer without a return model says so, naming the target, before training."""
    with pytest.raises(InvalidInputError, match=f"{name} predicts direction only"):
        small(name).fit(return_data, RecordingMonitor(), seed=0)


BAD_RETURNS: dict[str, tuple[Callable[[Dataset], Dataset], str]] = {
    "NaN return": (
        lambda d: _with(d, labels=_label_at(d.labels, d.split.val.start + 4, math.nan)),
        r"return labels must be finite; got nan at row \d+ in the val split",
    ),
    "integer returns": (
        lambda d: _with(d, labels=(d.labels > 0).astype(np.int64)),
        "return labels must be floats",
    ),
    "constant returns": (
        lambda d: _with(d, labels=np.full_like(d.labels, 0.001)),
        "the train split's returns are all 0.001",
    ),
}


@pytest.mark.parametrize("name", RETURN_TRAINERS)
@pytest.mark.parametrize("case", sorted(BAD_RETURNS))
def test_rejects_bad_returns(name, case, return_data):
    """Every return trainer rejects the same bad return labels with the same error."""
    corrupt, message = BAD_RETURNS[case]
    with pytest.raises(InvalidInputError, match=message):
        small(name).fit(corrupt(return_data), default_monitor(), seed=0)


# --- registry -----------------------------------------------------------------------


def test_unknown_trainer_lists_valid_names():
    """An unknown trainer name raises UnknownTrainerError listing every valid name."""
    with pytest.raises(UnknownTrainerError) as info:
        make_trainer("lightgbm")
    assert str(info.value) == (
        "unknown trainer 'lightgbm'; valid names: "
        "attention_lstm, cnn_lstm, lstm, mlp, naive, persistence, random_forest, tcn, "
        "transformer, xgboost"
    )
    assert isinstance(info.value, KeyError)


def test_registry_is_read_only():
    """The name -> trainer map cannot be changed at run time."""
    with pytest.raises(TypeError):
        TRAINERS["x"] = TRAINERS["naive"]  # type: ignore[index]


# --- xgboost --------------------------------------------------------------------------


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


def test_xgboost_reports_true_accuracies(data):
    """The accuracies xgboost reports per round are those of its predictions at that round."""
    monitor = RecordingMonitor(Action.STOP, act_at=2)
    model = make_trainer("xgboost", early_stopping_rounds=50).fit(data, monitor, seed=0)
    assert model.params["n_rounds"] == 3  # STOP at round 2 keeps rounds 0..2 (no early stop)
    last = monitor.extras[-1]
    for part in ("train", "val"):
        acc = classification_metrics(data.y(part), model.predict_proba(data.inputs(part, 1)))[
            "accuracy"
        ]
        assert last[f"{part}_accuracy"] == pytest.approx(acc, abs=1e-6)


def test_xgboost_seed_changes_subsampling(data):
    """Different seeds give different models (row/column subsampling is seeded)."""
    a, b = (make_trainer("xgboost", n_estimators=60).fit(data, NullMonitor(), s) for s in (0, 1))
    assert not np.array_equal(a.predict_proba(data.X_test), b.predict_proba(data.X_test))


def test_xgboost_presets_set_capacity():
    """Presets grow from tiny to deep, and explicit keywords override the preset's value."""
    tiny, light, deep = (
        make_trainer("xgboost", preset=p).params for p in ("tiny", "lightweight", "deep")
    )
    assert tiny["n_estimators"] < light["n_estimators"] < deep["n_estimators"]
    assert tiny["max_depth"] < light["max_depth"] < deep["max_depth"]
    assert make_trainer("xgboost", preset="deep", max_depth=2).params["max_depth"] == 2


@pytest.mark.parametrize(
    ("param", "value", "rule"),
    [
        ("n_estimators", 0, "an integer >= 1"),
        ("early_stopping_rounds", 0, "an integer >= 1"),
        ("n_jobs", 0, "an integer >= 1"),
        ("learning_rate", 0.0, r"in \(0, 1\]"),
        ("subsample", 1.5, r"in \(0, 1\]"),
        ("reg_lambda", -1.0, ">= 0"),
    ],
)
def test_xgboost_rejects_bad_params(param, value, rule):
    """Nonsense hyperparameters fail at construction with the parameter's name and value."""
    with pytest.raises(InvalidInputError, match=rf"{param} must be {rule}, got {value}"):
        make_trainer("xgboost", **{param: value})


def test_naive_reports_its_accuracy(data):
    """The baseline reports the accuracy of always predicting its majority class."""
    monitor = RecordingMonitor()
    model = make_trainer("naive").fit(data, monitor, seed=0)
    up = model.params["p_up"] >= 0.5
    assert monitor.extras[0]["val_accuracy"] == pytest.approx(float(np.mean(data.y_val == up)))


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
