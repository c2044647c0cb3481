"""Backend specifics of return targets: what loss each trainer reports, label scaling, and
the ``prediction`` output helper. The contract every trainer shares is in test_conformance."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from monitors.base import Action, NullMonitor
from tests.unit.trainers.test_conformance import RecordingMonitor, return_dataset
from trainers.dataset import Dataset, Part
from trainers.errors import InvalidInputError
from trainers.onnx_graph import with_prediction_output
from trainers.onnx_io import PREDICTION_OUTPUT
from trainers.table import make_trainer


@pytest.fixture(scope="module")
def data() -> Dataset:
    return return_dataset(900, seed=2, strength=0.5)


def _standardised_mse(model, data: Dataset, part: Part, scale: float) -> float:
    x = data.inputs(part, model.window)
    return float(np.mean(((model.predict(x) - data.y(part)) / scale) ** 2))


def test_xgboost_reports_mse_of_standardised_returns(data):
    """Each round's losses are the MSE of the labels divided by their training std (the
    square of xgboost's rmse), those of the model kept at that round; no accuracy."""
    monitor = RecordingMonitor(Action.STOP, act_at=2)
    model = make_trainer("xgboost", preset="tiny", early_stopping_rounds=50).fit(
        data, monitor, seed=0
    )
    assert model.params["n_rounds"] == 3
    scale = model.params["label_scale"]
    assert scale == pytest.approx(float(np.std(data.y_train)), rel=1e-6)
    _, train_loss, val_loss = monitor.steps[-1]
    assert train_loss == pytest.approx(_standardised_mse(model, data, "train", scale), rel=1e-4)
    assert val_loss == pytest.approx(_standardised_mse(model, data, "val", scale), rel=1e-4)
    assert monitor.extras[-1] == {"lr": 0.1}


def test_xgboost_return_early_stopping_keeps_best_round(data):
    """Early stopping on validation MSE cuts the regressor back to its best round."""
    monitor = RecordingMonitor()
    model = make_trainer("xgboost", n_estimators=300, early_stopping_rounds=5).fit(
        data, monitor, seed=0
    )
    val_losses = [s[2] for s in monitor.steps]
    assert len(val_losses) < 300
    assert model.params["n_rounds"] == int(np.argmin(val_losses)) + 1


@pytest.mark.parametrize("name", ["xgboost", "mlp"])
def test_scaled_labels_scale_the_prediction(name, data):
    """Labels are standardised inside the fit, so returns ten times larger give predictions
    ten times larger: the presets mean the same at any return scale."""
    tenfold = dataclasses.replace(data, labels=data.labels * 10.0)
    a, b = (
        make_trainer(name, preset="tiny").fit(d, NullMonitor(), seed=0) for d in (data, tenfold)
    )
    x = data.inputs("test", a.window)
    np.testing.assert_allclose(b.predict(x), 10.0 * a.predict(x), rtol=1e-3, atol=1e-6)


def test_torch_reports_mse_of_standardised_returns_and_keeps_the_best_epoch(data):
    """A torch return model's best validation loss is the standardised MSE of the returned
    model, whose weights are that epoch's."""
    monitor = RecordingMonitor()
    model = make_trainer("mlp", preset="tiny").fit(data, monitor, seed=0)
    scale = model.params["label_scale"]
    best = min(s[2] for s in monitor.steps)
    assert best == pytest.approx(_standardised_mse(model, data, "val", scale), rel=1e-4)
    assert model.params["best_epoch"] == int(np.argmin([s[2] for s in monitor.steps]))


def test_random_forest_reports_mse_in_training_variances(data):
    """Each step's losses are the forest's MSE divided by the training labels' variance."""
    monitor = RecordingMonitor()
    model = make_trainer("random_forest", preset="tiny").fit(data, monitor, seed=0)
    variance = float(np.var(data.y_train))
    _, train_loss, val_loss = monitor.steps[-1]
    assert train_loss == pytest.approx(_standardised_mse(model, data, "train", variance**0.5))
    assert val_loss == pytest.approx(_standardised_mse(model, data, "val", variance**0.5))
    assert monitor.extras[-1] == {}


def test_random_forest_rejects_class_weight_for_returns(data):
    """class_weight is a direction option: a return fit with one fails naming it."""
    trainer = make_trainer("random_forest", preset="tiny", class_weight="balanced")
    with pytest.raises(InvalidInputError, match="class_weight must be None for a return target"):
        trainer.fit(data, NullMonitor(), seed=0)


def test_naive_predicts_the_training_mean_return(data):
    """The naive return model is the float32 training mean; its training loss is 1."""
    monitor = RecordingMonitor()
    model = make_trainer("naive").fit(data, monitor, seed=0)
    mean = float(np.float32(np.mean(data.y_train)))
    assert model.params == {"mean_return": mean}
    np.testing.assert_array_equal(model.predict(data.X_test), np.full(len(data.y_test), mean))
    assert monitor.steps[0][1] == pytest.approx(1.0)


def _identity_model(output: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], [output])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def test_with_prediction_output_scales_and_renames():
    """The helper makes ``source`` x ``scale`` the one output, named prediction."""
    model = with_prediction_output(_identity_model("variable"), "variable", 0.5)
    assert [o.name for o in model.graph.output] == [PREDICTION_OUTPUT]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[2.0], [-4.0]], dtype=np.float32)
    np.testing.assert_array_equal(session.run(None, {"input": x})[0], [[1.0], [-2.0]])
    with pytest.raises(ValueError, match="no output 'nope'; outputs: variable"):
        with_prediction_output(_identity_model("variable"), "nope")
