"""The persistence baseline: the rule it fits, its edge cases, and its exact ONNX graph.

The conformance suite (test_conformance.py) covers what every trainer shares;
these tests pin what is particular to this one.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from monitors.base import Action, NullMonitor
from trainers.dataset import Dataset
from trainers.errors import InvalidInputError
from trainers.features import FEATURE_SPEC, training_matrix
from trainers.metrics import classification_metrics
from trainers.onnx_io import OnnxScorer
from trainers.persistence import (
    MAX_P_SAME,
    RET_1_COLUMN,
    PersistenceModel,
    PersistenceTrainer,
    p_same_direction,
)
from trainers.splits import Split
from trainers.synthetic import planted_bars
from trainers.table import make_trainer

N_FEATURES = len(FEATURE_SPEC.names)


def planted(
    n_bars: int, *, seed: int, accuracy: float | None = None, phi: float | None = None
) -> Dataset:
    bars = planted_bars(n_bars, seed=seed, accuracy=accuracy, phi=phi)
    return training_matrix(bars).dataset(val_fraction=0.15, test_fraction=0.15)


def fit(data: Dataset) -> PersistenceModel:
    return PersistenceTrainer().fit(data, NullMonitor(), seed=0)


def hand_made(last_returns: np.ndarray, labels: np.ndarray) -> Dataset:
    """A dataset whose 40 training rows carry ``last_returns`` / ``labels``; random elsewhere."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, N_FEATURES)).astype(np.float32)
    y = (rng.random(60) < 0.5).astype(np.float64)
    x[:40, RET_1_COLUMN], y[:40] = last_returns, labels
    split = Split(train=slice(0, 40), val=slice(40, 50), test=slice(50, 60), embargo=0)
    return Dataset.from_split(x, y, split)


def test_predicts_the_last_direction_with_the_planted_accuracy():
    """On a planted persistent series the model calls the last bar's direction, and its test
    accuracy is exactly the rule's hit rate, within 5 standard errors of the planted 0.65."""
    data = planted(20_000, seed=5, accuracy=0.65)
    model = fit(data)
    last = data.X_test[:, RET_1_COLUMN]
    assert np.all(last != 0)  # continuous returns: every bar has a direction
    proba = model.predict_proba(data.X_test)
    assert np.array_equal(proba > 0.5, last > 0)

    hits = float(np.mean((last > 0) == (data.y_test == 1)))
    assert classification_metrics(data.y_test, proba)["accuracy"] == pytest.approx(hits, abs=1e-12)
    n_test, n_train = len(data.y_test), len(data.y_train)
    assert abs(hits - 0.65) < 5 * math.sqrt(0.65 * 0.35 / n_test)
    assert abs(model.params["p_same"] - 0.65) < 5 * math.sqrt(0.65 * 0.35 / n_train)
    naive = make_trainer("naive").fit(data, NullMonitor(), seed=0)
    majority = classification_metrics(data.y_test, naive.predict_proba(data.X_test))["accuracy"]
    assert majority is not None
    assert hits > majority + 0.1


def test_reversal_is_not_persistence():
    """On a mean-reverting series q is clipped to 0.5: a coin on every bar with a direction."""
    data = planted(4000, seed=6, phi=-0.4)
    model = fit(data)
    assert model.params["p_same"] == 0.5
    assert np.all(model.predict_proba(data.X_test) == 0.5)


def test_p_same_counts_rows_with_a_direction_and_flat_rows_get_the_positive_rate():
    """q is the share of up/down rows whose label follows them; flat rows (0.0, -0.0) get
    the training positive rate, rounded to float32."""
    # 8 up rows (6 then up), 4 down rows (3 then down), 28 flat rows, all labelled up.
    last = np.array([0.01] * 8 + [-0.01] * 4 + [0.0] * 20 + [-0.0] * 8)
    labels = np.array([1] * 6 + [0] * 2 + [0] * 3 + [1] + [1] * 28, dtype=np.float64)
    model = fit(hand_made(last, labels))
    assert model.params == {"p_same": 0.75, "p_up_flat": float(np.float32(35 / 40))}
    rows = np.zeros((4, N_FEATURES), dtype=np.float32)
    rows[:, RET_1_COLUMN] = [0.5, -0.5, 0.0, -0.0]
    assert model.predict_proba(rows).tolist() == [0.75, 0.25, model.p_up_flat, model.p_up_flat]


def test_p_same_direction_bounds():
    """No directional row gives a coin; a perfectly persistent history stays below 1."""
    y = np.array([1.0, 0.0, 1.0])
    assert p_same_direction(np.zeros(3, dtype=np.float32), y) == 0.5
    assert p_same_direction(np.array([1.0, -1.0, 2.0], dtype=np.float32), y) == MAX_P_SAME
    assert p_same_direction(np.array([-1.0, 1.0, -2.0], dtype=np.float32), y) == 0.5


class StepRecorder:
    """A monitor that keeps every step's arguments and never interferes."""

    warnings = ()

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, float | None, dict[str, float]]] = []

    def on_step(self, step, train_loss, val_loss, extra=None):
        self.steps.append((step, train_loss, val_loss, dict(extra or {})))
        return Action.CONTINUE


def test_reports_the_rules_accuracies_to_the_monitor():
    """The one monitor step carries the fitted rule's train and validation accuracies."""
    data = planted(3000, seed=7, accuracy=0.6)
    monitor = StepRecorder()
    model = PersistenceTrainer().fit(data, monitor, seed=0)
    ((step, _, _, extra),) = monitor.steps
    assert step == 0
    for part in ("train", "val"):
        proba = model.predict_proba(data.inputs(part, 1))
        expected = classification_metrics(data.y(part), proba)["accuracy"]
        assert extra[f"{part}_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_presets_and_augment_change_nothing():
    """Every preset, with or without augmentation, fits the same rule."""
    data = planted(2000, seed=8, accuracy=0.6)
    params = {
        repr(kw): make_trainer("persistence", **kw).fit(data, NullMonitor(), seed=3).params
        for kw in ({}, {"preset": "tiny", "augment": True}, {"preset": "deep"})
    }
    assert len({tuple(sorted(p.items())) for p in params.values()}) == 1


def test_rejects_data_without_the_feature_spec_columns():
    """A dataset whose columns are not FEATURE_SPEC's fails naming the column it would read."""
    data = planted(2000, seed=9, accuracy=0.6)
    narrow = Dataset.from_split(data.features[:, :5], data.labels, data.split)
    with pytest.raises(InvalidInputError, match=r"reads ret_1 at column 0 .* got 5 feature"):
        fit(narrow)


# --- ONNX --------------------------------------------------------------------------


def awkward_rows(n: int, seed: int) -> np.ndarray:
    """Random feature rows whose ret_1 mixes ordinary returns with every edge a sign test has."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_FEATURES)).astype(np.float32) * 0.01
    edges = np.array(
        [0.0, -0.0, 1e-45, -1e-45, np.inf, -np.inf, np.nan, 3e38, -3e38], dtype=np.float32
    )
    x[: len(edges), RET_1_COLUMN] = edges
    zeros = np.arange(len(edges), n, 3)
    x[zeros, RET_1_COLUMN] = rng.choice(np.array([0.0, -0.0], dtype=np.float32), len(zeros))
    return x


@pytest.mark.parametrize(
    "model",
    [
        PersistenceModel(0.6123456789, 0.4876543219, N_FEATURES),
        PersistenceModel(MAX_P_SAME, 1e-7, N_FEATURES),
        PersistenceModel(0.5, 0.5, N_FEATURES),
    ],
    ids=["typical", "extreme", "coin"],
)
def test_onnx_equals_predict_proba_bit_for_bit(model, tmp_path):
    """The ONNX graph's P(up) equals predict_proba exactly, for zeros of both signs,
    denormals, infinities and NaN (which, like zero, has no direction)."""
    path = tmp_path / "persistence.onnx"
    model.export_onnx(path)
    x = awkward_rows(2000, seed=1)
    onnx_proba = OnnxScorer(path).predict_proba(x)
    native = model.predict_proba(x)
    assert np.array_equal(onnx_proba, native)
    flat = ~((x[:, RET_1_COLUMN] > 0) | (x[:, RET_1_COLUMN] < 0))
    assert flat.sum() > 600
    assert np.all(native[flat] == model.p_up_flat)


def test_onnx_graph_is_servable(tmp_path):
    """The export passes the checker at opset 15 / IR 8, takes [N, n_features] float rows,
    gives [N, 2] rows summing to 1, and live scoring reads it like any model."""
    data = planted(3000, seed=10, accuracy=0.6)
    model = fit(data)
    path = tmp_path / "persistence.onnx"
    model.export_onnx(path)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 15)]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, inp.shape, out.name) == ("input", ["N", N_FEATURES], "probabilities")
    (both,) = session.run(None, {"input": data.X_test})
    assert both.shape == (len(data.X_test), 2)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, atol=1e-6)

    scorer = OnnxScorer(path)
    assert (scorer.n_features, scorer.window) == (N_FEATURES, 1)
    assert scorer.predict_proba(data.X_test[:0]).shape == (0,)
    stop = data.split.test.stop
    latest = scorer.predict_latest(data.features[stop - 4 : stop])
    assert latest == model.predict_proba(data.features[stop - 1 : stop])[0]
