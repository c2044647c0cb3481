"""PyTorch trainers: windows, early stopping, schedule, presets, devices and ONNX shapes."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from monitors.base import Action, NullMonitor
from tests.unit.trainers.test_conformance import TORCH_TRAINERS, RecordingMonitor, dataset
from trainers.dataset import Dataset, sequence_windows
from trainers.errors import InvalidInputError
from trainers.metrics import classification_metrics
from trainers.table import make_trainer
from trainers.torch_layers import CausalConv1d


@pytest.fixture(scope="module")
def data() -> Dataset:
    return dataset(900, seed=3, strength=1.0)


@pytest.fixture(scope="module")
def noise() -> Dataset:
    return dataset(900, seed=4, strength=0.0)


def test_importing_the_pipeline_loads_neither_torch_nor_xgboost():
    """The daemon imports the pipeline and trainer map without paying for torch or xgboost."""
    code = (
        "import sys, trainers.pipeline, trainers.table, trainers.onnx_io;"
        "print(sorted(m for m in ('torch', 'xgboost') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# --- windows ---------------------------------------------------------------------------


def test_window_of_row_t_is_rows_up_to_t_left_padded_with_row_0():
    """Row t's window holds rows t-W+1..t oldest first; before row 0 it repeats row 0."""
    features = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 2), dtype=np.float32)
    windows = sequence_windows(features, slice(0, 10), 4)
    assert windows.shape == (10, 4, 2)
    np.testing.assert_array_equal(windows[6, :, 0], [3, 4, 5, 6])
    np.testing.assert_array_equal(windows[1, :, 0], [0, 0, 0, 1])
    np.testing.assert_array_equal(windows[0, :, 1], [0, 0, 0, 0])


def test_val_and_test_windows_reach_into_history_not_the_future(data):
    """Every val/test row gets a window of real rows ending at itself, never a later row."""
    for part in ("val", "test"):
        rows = data.rows(part)
        windows = data.inputs(part, 16)
        assert len(windows) == rows.stop - rows.start
        np.testing.assert_array_equal(windows[:, -1], data.features[rows])
        np.testing.assert_array_equal(windows[0], data.features[rows.start - 15 : rows.start + 1])


@pytest.mark.parametrize("name", ["lstm", "tcn", "attention_lstm", "cnn_lstm", "transformer"])
def test_prediction_depends_only_on_its_window(name, data):
    """Changing a row after t or older than the window leaves P(up) at t unchanged."""
    model = make_trainer(name, preset="tiny", epochs=2).fit(data, NullMonitor(), seed=0)
    w = model.window
    features = data.features.copy()
    t = data.split.test.start + 40
    before = model.predict_proba(sequence_windows(features, slice(t, t + 1), w))
    features[t + 1 :] += 5.0
    features[: t - w + 1] -= 5.0
    after = model.predict_proba(sequence_windows(features, slice(t, t + 1), w))
    assert np.array_equal(before, after)
    features[t - w + 1] += 5.0  # the oldest row inside the window does matter
    inside = model.predict_proba(sequence_windows(features, slice(t, t + 1), w))
    assert not np.array_equal(before, inside)


def test_causal_convolution_never_sees_later_steps():
    """A causal convolution's output at step t ignores inputs after t."""
    torch.manual_seed(0)
    conv = CausalConv1d(2, 3, kernel_size=3, dilation=2)
    x = torch.randn(1, 2, 10)
    later = x.clone()
    later[:, :, 6:] += 10.0
    with torch.no_grad():
        a, b = conv(x), conv(later)
    assert a.shape == (1, 3, 10)
    assert torch.equal(a[:, :, :6], b[:, :, :6])
    assert not torch.equal(a[:, :, 6:], b[:, :, 6:])


# --- the training loop -----------------------------------------------------------------


def _val_log_loss(model, d: Dataset) -> float:
    metrics = classification_metrics(d.y_val, model.predict_proba(d.inputs("val", model.window)))
    assert metrics["log_loss"] is not None
    return metrics["log_loss"]


def test_early_stopping_restores_the_best_epoch(noise):
    """Training stops `patience` epochs after the best val loss and keeps that epoch's weights."""
    monitor = RecordingMonitor()
    model = make_trainer("lstm", preset="tiny", epochs=60, patience=2).fit(noise, monitor, seed=0)
    val_losses = [s[2] for s in monitor.steps]
    best = int(np.argmin(val_losses))
    assert model.params["best_epoch"] == best
    assert model.params["epochs_run"] == len(val_losses) == best + 1 + 2 < 60
    assert _val_log_loss(model, noise) == pytest.approx(val_losses[best], abs=1e-5)


def test_monitor_stop_keeps_best_weights_seen(data):
    """STOP ends training at that epoch, keeping the best epoch seen so far."""
    monitor = RecordingMonitor(Action.STOP, act_at=2)
    model = make_trainer("tcn", preset="tiny").fit(data, monitor, seed=0)
    assert [s[0] for s in monitor.steps] == [0, 1, 2]
    assert model.params["epochs_run"] == 3
    best = min(s[2] for s in monitor.steps if s[2] is not None)
    assert _val_log_loss(model, data) == pytest.approx(best, abs=1e-5)


def test_learning_rate_halves_on_plateau(noise):
    """The learning rate never rises and halves once val loss stops improving."""
    monitor = RecordingMonitor()
    make_trainer("mlp", preset="tiny", epochs=20, patience=20, lr=0.01).fit(noise, monitor, seed=0)
    lrs = [e["lr"] for e in monitor.extras]
    assert lrs[0] == 0.01
    assert all(b <= a for a, b in itertools.pairwise(lrs))
    assert 0.005 in lrs


def test_grad_norm_is_measured_before_clipping(data):
    """The reported gradient norm is the raw one, above a clipping threshold it was cut to."""
    monitor = RecordingMonitor()
    make_trainer("mlp", preset="tiny", epochs=3, grad_clip=1e-3).fit(data, monitor, seed=0)
    assert all(e["grad_norm"] > 1e-3 for e in monitor.extras)


def test_threads_param_sets_torch_threads(data):
    """A fit runs torch on the requested number of intra-op threads."""
    previous = torch.get_num_threads()
    try:
        make_trainer("mlp", preset="tiny", epochs=1, threads=2).fit(data, NullMonitor(), seed=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_fitted_params_record_what_ran(data):
    """Fitted params name the preset, device, seed and epoch counts of the run."""
    model = make_trainer("mlp", preset="tiny", epochs=2).fit(data, NullMonitor(), seed=5)
    p = model.params
    assert (p["preset"], p["device"], p["device_used"], p["seed"]) == ("tiny", "auto", "cpu", 5)
    assert p["epochs"] == 2
    assert p["epochs_run"] == 2
    assert p["train_samples"] == len(data.y_train)


# --- presets and parameters -----------------------------------------------------------


@pytest.mark.parametrize("name", TORCH_TRAINERS)
def test_presets_grow_from_tiny_to_deep(name):
    """Each architecture's presets grow in parameter count, and keywords override a preset."""
    sizes = []
    for preset in ("tiny", "lightweight", "deep"):
        trainer = make_trainer(name, preset=preset)
        net = trainer.build(17, trainer.hyper)
        sizes.append(sum(p.numel() for p in net.parameters()))
    assert sizes[0] < sizes[1] < sizes[2]
    assert make_trainer(name, preset="deep", window=8).params["window"] == 8


@pytest.mark.parametrize(
    ("param", "value", "rule"),
    [
        ("window", 0, "an integer >= 1"),
        ("epochs", 0, "an integer >= 1"),
        ("batch_size", 2.5, "an integer >= 1"),
        ("lr", 0.0, "> 0"),
        ("weight_decay", -0.1, ">= 0"),
        ("dropout", 1.0, r"in \[0, 1\)"),
        ("grad_clip", 0.0, "> 0"),
        ("threads", 0, "an integer >= 1"),
        ("device", "tpu", "one of auto, cpu, cuda"),
    ],
)
def test_rejects_bad_params(param, value, rule):
    """Out-of-range settings fail at construction naming the parameter and value."""
    with pytest.raises(InvalidInputError, match=rf"{param} must be {rule}, got {value!r}"):
        make_trainer("lstm", **{param: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(data):
    """Asking for CUDA where there is none fails with an error saying so."""
    with pytest.raises(InvalidInputError, match="CUDA is not available"):
        make_trainer("mlp", preset="tiny", device="cuda").fit(data, NullMonitor(), seed=0)


# --- ONNX shapes -----------------------------------------------------------------------


def _input_dims(path) -> list[int | str]:
    (graph_input,) = onnx.load(str(path)).graph.input
    return [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]


def test_sequence_model_onnx_input_is_batch_window_features(data, tmp_path):
    """A sequence model exports a [N, window, n_features] input with a dynamic batch axis."""
    model = make_trainer("lstm", preset="tiny", epochs=1, window=12).fit(data, NullMonitor(), 0)
    model.export_onnx(tmp_path / "m.onnx")
    assert _input_dims(tmp_path / "m.onnx") == ["N", 12, data.n_features]


def test_windowed_mlp_flattens_its_window(data, tmp_path):
    """An MLP given a window above 1 takes windows and exports [N, window, n_features]."""
    model = make_trainer("mlp", preset="tiny", epochs=2, window=4).fit(data, NullMonitor(), 0)
    assert model.window == 4
    proba = model.predict_proba(data.inputs("test", 4))
    assert proba.shape == (len(data.y_test),)
    model.export_onnx(tmp_path / "m.onnx")
    assert _input_dims(tmp_path / "m.onnx") == ["N", 4, data.n_features]


def test_tabular_mlp_onnx_input_is_batch_features(data, tmp_path):
    """The default MLP (window 1) exports [N, n_features] like every tabular model."""
    model = make_trainer("mlp", preset="tiny", epochs=1).fit(data, NullMonitor(), 0)
    model.export_onnx(tmp_path / "m.onnx")
    assert _input_dims(tmp_path / "m.onnx") == ["N", data.n_features]
    assert math.isfinite(float(model.predict_proba(data.X_test[:1])[0]))
