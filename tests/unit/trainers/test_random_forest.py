"""The random forest trainer: planted signal, regularisation, staged growth, ONNX file, params."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from monitors.base import Action, NullMonitor
from tests.unit.trainers.test_conformance import RecordingMonitor, dataset
from trainers.dataset import Dataset
from trainers.errors import InvalidInputError
from trainers.features import training_matrix
from trainers.metrics import classification_metrics
from trainers.onnx_io import OnnxScorer, max_abs_diff
from trainers.random_forest import PRESETS
from trainers.synthetic import planted_bars
from trainers.table import make_trainer


@pytest.fixture(scope="module")
def data() -> Dataset:
    return dataset(900, seed=3, strength=1.0)


def planted(n_bars: int, *, seed: int, accuracy: float) -> Dataset:
    m = training_matrix(planted_bars(n_bars, seed=seed, accuracy=accuracy))
    return m.dataset(val_fraction=0.15, test_fraction=0.15)


def accuracy(data: Dataset, model, part: str) -> float:
    value = classification_metrics(data.y(part), model.predict_proba(data.inputs(part, 1)))
    assert value["accuracy"] is not None
    return value["accuracy"]


def tiny(**params):
    return make_trainer("random_forest", preset="tiny", **params)


def test_importing_the_pipeline_and_settings_loads_no_scikit_learn():
    """The trainer map names the forest as text: the daemon's settings and pipeline load
    neither scikit-learn nor skl2onnx until a forest is trained."""
    code = (
        "import sys, trainers.pipeline, trainers.table, daemon.settings;"
        "print(sorted(m for m in ('sklearn', 'skl2onnx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_learns_a_planted_signal():
    """On bars whose sign repeats with probability 0.65 the forest calls the next bar nearly as
    well as the planted rule, far above the majority class."""
    d = planted(4000, seed=2, accuracy=0.65)
    model = tiny().fit(d, NullMonitor(), seed=0)
    naive = make_trainer("naive").fit(d, NullMonitor(), seed=0)
    # Measured 0.639 vs naive 0.525; the test split's ~600 rows give a standard error ~0.02.
    assert accuracy(d, model, "test") > accuracy(d, naive, "test") + 0.05
    assert accuracy(d, model, "test") > 0.58


def test_lightweight_forest_stays_within_the_gap_gate_on_noise():
    """On a random walk the default preset's train-val gap stays below the gate's 0.20: the
    presets regularise enough that noise is rejected as no better than naive, not as overfit."""
    d = planted(3000, seed=5, accuracy=0.5)
    model = make_trainer("random_forest").fit(d, NullMonitor(), seed=0)
    assert accuracy(d, model, "train") - accuracy(d, model, "val") < 0.20  # measured 0.14


def test_onnx_file_loads_in_the_scorer(data, tmp_path):
    """The export is a window-1 model with one [N, n_features] input named ``input`` and a
    ``probabilities`` output the live scorer reads, within 1e-5 of the forest on every row."""
    model = tiny().fit(data, NullMonitor(), seed=0)
    path = tmp_path / "forest.onnx"
    model.export_onnx(path)
    scorer = OnnxScorer(path)
    assert (scorer.window, scorer.n_features) == (1, data.n_features)
    assert (scorer.input_name, scorer.output_name) == ("input", "probabilities")
    assert max_abs_diff(model, scorer, data.features) < 1e-5  # measured ~2e-7; the gate is 1e-4
    latest = scorer.predict_latest(data.features[:10])
    assert latest == pytest.approx(float(model.predict_proba(data.features[9:10])[0]), abs=1e-5)


def test_rows_on_a_split_threshold_take_the_same_branch_in_onnx(data, tmp_path):
    """Features equal to a split threshold rounded to float32, or one float32 step either
    side, give the forest's probabilities in ONNX too (float32 thresholds there, float64 here)."""
    model = tiny().fit(data, NullMonitor(), seed=0)
    path = tmp_path / "forest.onnx"
    model.export_onnx(path)
    base = data.X_val[0]
    rows = []
    for tree in model._clf.estimators_:  # the fitted forest, read-only
        inner = tree.tree_.feature >= 0
        for feature, threshold in zip(
            tree.tree_.feature[inner], tree.tree_.threshold[inner], strict=True
        ):
            t = np.float32(threshold)
            for value in (np.nextafter(t, -np.inf), t, np.nextafter(t, np.inf)):
                row = base.copy()
                row[feature] = value
                rows.append(row)
    x = np.array(rows, dtype=np.float32)
    assert len(x) > 100
    assert max_abs_diff(model, OnnxScorer(path), x) < 1e-5


def test_growing_in_steps_gives_the_one_shot_forest(data):
    """Four warm-started steps of 10 trees give exactly the forest of one 40-tree fit."""
    model = tiny().fit(data, NullMonitor(), seed=7)
    p = PRESETS["tiny"]
    one_shot = RandomForestClassifier(
        n_estimators=p["n_estimators"],
        max_depth=p["max_depth"],
        min_samples_leaf=p["min_samples_leaf"],
        max_features=p["max_features"],
        max_samples=p["max_samples"],
        n_jobs=1,
        random_state=7,
    ).fit(data.X_train, data.y_train)
    np.testing.assert_array_equal(
        model.predict_proba(data.X_test), one_shot.predict_proba(data.X_test)[:, 1]
    )


def test_every_step_reaches_the_monitor_and_stop_keeps_the_trees_grown(data):
    """The tiny preset reports 4 steps of 10 trees; STOP at step 1 keeps those 20 trees."""
    monitor = RecordingMonitor()
    model = tiny().fit(data, monitor, seed=0)
    assert [s[0] for s in monitor.steps] == [0, 1, 2, 3]
    assert (model.params["n_trees"], model.params["n_steps"]) == (40, 4)
    stopper = RecordingMonitor(Action.STOP, act_at=1)
    stopped = tiny().fit(data, stopper, seed=0)
    assert [s[0] for s in stopper.steps] == [0, 1]
    assert (stopped.params["n_trees"], stopped.params["n_steps"]) == (20, 2)
    assert len(stopped._clf.estimators_) == 20


def test_a_last_partial_step_grows_the_remaining_trees(data):
    """n_estimators need not be a multiple of trees_per_step: the last step grows the rest."""
    monitor = RecordingMonitor()
    model = tiny(n_estimators=25).fit(data, monitor, seed=0)
    assert len(monitor.steps) == 3
    assert model.params["n_trees"] == 25


def test_reported_losses_and_accuracies_are_the_forests(data):
    """The last step reports the kept forest's own train / val log loss and accuracy."""
    monitor = RecordingMonitor()
    model = tiny().fit(data, monitor, seed=0)
    _, train_loss, val_loss = monitor.steps[-1]
    for part, loss in (("train", train_loss), ("val", val_loss)):
        metrics = classification_metrics(data.y(part), model.predict_proba(data.inputs(part, 1)))
        assert monitor.extras[-1][f"{part}_accuracy"] == pytest.approx(metrics["accuracy"])
        assert loss == pytest.approx(metrics["log_loss"])


@pytest.mark.parametrize("class_weight", ["balanced", "balanced_subsample"])
def test_class_weight_presets_fit_without_warnings(data, class_weight):
    """Class weighting works with the staged growth and warns of nothing (the same rows are
    refitted at every step, which is all scikit-learn's warm-start warning is about)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tiny(class_weight=class_weight).fit(data, NullMonitor(), seed=0)
    assert model.params["class_weight"] == class_weight


def test_seed_changes_the_forest(data):
    """Bootstraps and feature draws follow the seed."""
    a, b = (tiny().fit(data, NullMonitor(), seed=s) for s in (0, 1))
    assert not np.array_equal(a.predict_proba(data.X_test), b.predict_proba(data.X_test))


def test_presets_set_capacity_and_keywords_override():
    """Presets grow from tiny to deep, run one thread, and a keyword overrides one value."""
    params = [
        make_trainer("random_forest", preset=p).params for p in ("tiny", "lightweight", "deep")
    ]
    for key in ("n_estimators", "max_depth", "min_samples_leaf"):
        assert params[0][key] < params[1][key] < params[2][key], key
    assert all(p["n_jobs"] == 1 for p in params)
    deep = make_trainer("random_forest", preset="deep", max_depth=3)
    assert deep.params["max_depth"] == 3


def test_whole_number_shares_are_read_as_fractions():
    """max_samples=1 and max_features=1 mean all rows / all features, never one of them."""
    params = tiny(max_samples=1, max_features=1).params
    assert params["max_samples"] == 1.0
    assert isinstance(params["max_samples"], float)
    assert isinstance(params["max_features"], float)


@pytest.mark.parametrize(
    ("param", "value", "rule"),
    [
        ("n_estimators", 0, "an integer >= 1"),
        ("trees_per_step", 2.5, "an integer >= 1"),
        ("max_depth", None, "an integer >= 1"),
        ("min_samples_leaf", 0, "an integer >= 1"),
        ("n_jobs", True, "an integer >= 1"),
        ("max_features", "auto", r"'sqrt', 'log2' or a fraction in \(0, 1\]"),
        ("max_features", 0.0, r"'sqrt', 'log2' or a fraction in \(0, 1\]"),
        ("max_samples", 1.5, r"in \(0, 1\]"),
        ("max_samples", "half", r"in \(0, 1\]"),
        ("class_weight", "auto", "None, 'balanced' or 'balanced_subsample'"),
    ],
)
def test_rejects_bad_params(param, value, rule):
    """Nonsense hyperparameters fail at construction with the parameter's name and value."""
    with pytest.raises(InvalidInputError, match=rf"{param} must be {rule}, got {value!r}"):
        make_trainer("random_forest", **{param: value})
