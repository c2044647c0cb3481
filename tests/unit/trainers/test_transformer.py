"""Transformer trainer: causal attention, sinusoidal positions, exact export, parameter checks.

Fitting, ONNX parity, reproducibility and the planted AR(1) signal are checked
for it with every other trainer in test_conformance.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from monitors.base import NullMonitor
from monitors.training import default_monitor
from tests.unit.trainers.test_conformance import dataset
from trainers.dataset import Dataset
from trainers.errors import InvalidInputError
from trainers.features import training_matrix
from trainers.metrics import classification_metrics
from trainers.synthetic import planted_bars
from trainers.table import make_trainer
from trainers.transformer import TransformerNet, TransformerTrainer, sinusoidal_positions

N_FEATURES = 5


@pytest.fixture(scope="module")
def data() -> Dataset:
    return dataset(900, seed=3, strength=1.0)


def net(preset: str = "lightweight", **params: object) -> TransformerNet:
    trainer = TransformerTrainer(preset=preset, **params)
    built = trainer.build(N_FEATURES, trainer.hyper)
    assert isinstance(built, TransformerNet)
    return built


# --- causality -------------------------------------------------------------------------


@pytest.mark.parametrize("training", [False, True])
def test_step_t_is_encoded_from_steps_up_to_t_only(training):
    """Changing window steps after t leaves every encoder output up to t bit-identical
    (in eval and, under the same dropout draws, in training), and changes those after t."""
    torch.manual_seed(0)
    module = net(layers=2).train(training)  # causality must survive stacking
    window = module.mask.shape[0]
    x = torch.randn(8, window, N_FEATURES)
    for t in (0, 5, window - 2):
        later = x.clone()
        later[:, t + 1 :] += torch.randn(8, window - t - 1, N_FEATURES)
        with torch.no_grad():
            torch.manual_seed(1)
            before = module.encode(x)
            torch.manual_seed(1)
            after = module.encode(later)
        assert torch.equal(before[:, : t + 1], after[:, : t + 1]), t
        assert not torch.isclose(before[:, t + 1 :], after[:, t + 1 :]).all(), t


def test_mask_lets_each_step_attend_to_itself_and_earlier_steps():
    """The mask is 0 on and below the diagonal and -inf above it."""
    mask = net("tiny", window=4).mask
    allowed = torch.tensor([[j <= i for j in range(4)] for i in range(4)])
    assert torch.equal(mask == 0, allowed)
    assert torch.all(mask[~allowed] == -torch.inf)


def test_sinusoidal_positions_alternate_sin_and_cos_at_falling_frequencies():
    """Column 2i is sin(t / 10000^(2i/d)), column 2i+1 its cosine, for even and odd widths."""
    for d_model in (6, 7):
        table = sinusoidal_positions(5, d_model)
        assert table.shape == (5, d_model)
        assert table.dtype == torch.float32
        t = np.arange(5)[:, None]
        rate = 10000.0 ** (-np.arange(0, d_model, 2) / d_model)
        np.testing.assert_allclose(table[:, 0::2], np.sin(t * rate), atol=1e-7)
        np.testing.assert_allclose(table[:, 1::2], np.cos(t * rate)[:, : d_model // 2], atol=1e-7)


def test_positions_and_mask_are_constants_not_weights():
    """Neither the positions nor the mask is trained or saved: both follow from the shape."""
    module = net()
    names = {name for name, _ in module.named_parameters()} | set(module.state_dict())
    assert not {"positions", "mask"} & names
    assert torch.equal(module.positions, net().positions)


# --- export ----------------------------------------------------------------------------


def test_eval_runs_the_composed_layers_the_exporter_traces():
    """Eval output is bit-identical with autograd on or off: the fused fast path never runs.

    With autograd off, ``nn.TransformerEncoderLayer`` would otherwise switch to a
    fused kernel that rounds differently and that ONNX export cannot emit.
    """
    torch.manual_seed(0)
    module = net().eval()
    x = torch.randn(16, module.mask.shape[0], N_FEATURES)
    with torch.inference_mode():
        without_grad = module(x)
    with_grad = module(x).detach()
    assert torch.equal(without_grad, with_grad)


def test_exported_graph_holds_the_causal_mask_as_a_constant(data, tmp_path):
    """The ONNX graph carries the window's causal mask as a constant, not rebuilt from shapes."""
    model = make_trainer("transformer", preset="tiny", epochs=1, window=6).fit(
        data, NullMonitor(), seed=0
    )
    model.export_onnx(tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    expected = torch.nn.Transformer.generate_square_subsequent_mask(6).numpy()
    constants = [numpy_helper.to_array(t) for t in graph.initializer]
    constants += [
        numpy_helper.to_array(a.t)
        for node in graph.node
        if node.op_type == "Constant"
        for a in node.attribute
        if a.name == "value"
    ]
    assert any(c.size == 36 and np.array_equal(c.reshape(6, 6), expected) for c in constants)


# --- parameters ------------------------------------------------------------------------


def test_d_model_must_be_divisible_by_heads():
    """A width the heads cannot split evenly fails at construction naming both values."""
    message = r"d_model must be divisible by heads \(4\), got 30"
    with pytest.raises(InvalidInputError, match=message):
        make_trainer("transformer", d_model=30)
    make_trainer("transformer", d_model=28)  # 4 heads of 7


@pytest.mark.parametrize("param", ["d_model", "heads", "layers", "ff_dim", "window"])
def test_rejects_non_positive_sizes(param):
    """Every architecture size must be a positive integer, named in the error."""
    with pytest.raises(InvalidInputError, match=rf"{param} must be an integer >= 1, got 0"):
        make_trainer("transformer", **{param: 0})


# --- learning --------------------------------------------------------------------------


def test_learns_a_signal_eight_steps_back_in_its_window():
    """With r[t] = phi r[t-8] + noise, attending 8 steps back beats naive by a wide margin.

    No single feature row holds r[t-7] alone (the 5- and 10-bar returns blur it
    with four others), so the model finds this signal only through its window.
    """
    bars = planted_bars(2000, seed=3, accuracy=0.8, lag=8)
    d = training_matrix(bars).dataset(val_fraction=0.15, test_fraction=0.15)
    model = make_trainer("transformer", preset="tiny", epochs=30, patience=8).fit(
        d, default_monitor(), seed=0
    )
    naive = make_trainer("naive").fit(d, default_monitor(), seed=0)
    acc = classification_metrics(d.y_test, model.predict_proba(d.inputs("test", model.window)))
    base = classification_metrics(d.y_test, naive.predict_proba(d.X_test))
    assert acc["accuracy"] is not None
    assert base["accuracy"] is not None
    assert acc["accuracy"] > base["accuracy"] + 0.15
