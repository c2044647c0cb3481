"""OnnxScorer output handling and the parity check, against real onnxruntime sessions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trainers.errors import InvalidInputError, ParityError
from trainers.naive import NaiveModel
from trainers.onnx_io import OnnxScorer, check_parity

N_FEATURES = 3
WEIGHTS = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def sigmoid_model(path: Path, output_shape: list[str | int]) -> Path:
    """P(up) = sigmoid(x @ WEIGHTS), emitted as [N, 1] or, reshaped, as [N]."""
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
    ]
    if output_shape == ["N"]:
        nodes.append(helper.make_node("Reshape", ["p", "flat"], ["p_up"]))
    else:
        nodes.append(helper.make_node("Identity", ["p"], ["p_up"]))
    graph = helper.make_graph(
        nodes,
        "sigmoid",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("p_up", TensorProto.FLOAT, output_shape)],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, [N_FEATURES, 1], WEIGHTS.tolist()),
            helper.make_tensor("flat", TensorProto.INT64, [1], [-1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def expected(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x.astype(np.float32) @ WEIGHTS).astype(np.float64)))


ROWS = np.random.default_rng(0).normal(size=(16, N_FEATURES))


@pytest.mark.parametrize("shape", [["N", 1], ["N"]])
def test_scorer_reads_single_probability_outputs(tmp_path, shape):
    """An [N, 1] or [N] output is taken as P(up) itself, returned as (n,) float64."""
    scorer = OnnxScorer(sigmoid_model(tmp_path / "m.onnx", shape))
    proba = scorer.predict_proba(ROWS)
    assert proba.shape == (len(ROWS),)
    assert proba.dtype == np.float64
    np.testing.assert_allclose(proba, expected(ROWS), atol=1e-6)
    assert scorer.n_features == N_FEATURES
    assert (scorer.input_name, scorer.output_name) == ("input", "p_up")


def test_scorer_reads_column_one_of_two_probabilities(tmp_path):
    """A [N, 2] 'probabilities' output gives P(up) from its second column."""
    path = tmp_path / "naive.onnx"
    NaiveModel(0.25, N_FEATURES).export_onnx(path)
    scorer = OnnxScorer(path, intra_op_threads=2)
    np.testing.assert_array_equal(scorer.predict_proba(ROWS), np.full(len(ROWS), 0.25))
    assert scorer.output_name == "probabilities"


def test_scorer_casts_input_to_float32(tmp_path):
    """float64 rows score exactly like the same rows cast to float32 by the caller."""
    scorer = OnnxScorer(sigmoid_model(tmp_path / "m.onnx", ["N", 1]))
    np.testing.assert_array_equal(
        scorer.predict_proba(ROWS), scorer.predict_proba(ROWS.astype(np.float32))
    )


@pytest.mark.parametrize("bad", [np.zeros((4, N_FEATURES + 1)), np.zeros(N_FEATURES)])
def test_scorer_rejects_wrong_shape(tmp_path, bad):
    """Rows of the wrong width or rank raise InvalidInputError naming the expected shape."""
    scorer = OnnxScorer(sigmoid_model(tmp_path / "m.onnx", ["N", 1]))
    with pytest.raises(InvalidInputError, match=r"shape \(n, 3\)"):
        scorer.predict_proba(bad)


class ShiftedModel:
    """A native model whose probabilities are the ONNX ones plus a fixed offset."""

    trainer = "shifted"
    n_params = 3

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.params: Mapping[str, Any] = {"offset": offset}

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return expected(np.asarray(x)) + self.offset

    def export_onnx(self, path: Path) -> None:
        sigmoid_model(path, ["N", 1])


def test_check_parity_returns_max_abs_diff(tmp_path):
    """Within tolerance, check_parity returns the largest native-vs-ONNX difference."""
    model = ShiftedModel(3e-5)
    path = tmp_path / "m.onnx"
    model.export_onnx(path)
    assert check_parity(model, path, ROWS, tolerance=1e-4) == pytest.approx(3e-5, abs=1e-6)


def test_check_parity_raises_above_tolerance(tmp_path):
    """Above tolerance, ParityError carries the trainer, the difference and the tolerance."""
    model = ShiftedModel(0.01)
    path = tmp_path / "m.onnx"
    model.export_onnx(path)
    with pytest.raises(ParityError, match="shifted: ONNX probabilities differ") as info:
        check_parity(model, path, ROWS, tolerance=1e-4)
    assert info.value.max_abs_diff == pytest.approx(0.01, abs=1e-6)
    assert info.value.tolerance == 1e-4


def test_check_parity_non_finite_native_fails(tmp_path):
    """A NaN native probability is infinitely far from parity, never silently equal."""
    model = ShiftedModel(float("nan"))
    path = tmp_path / "m.onnx"
    model.export_onnx(path)
    with pytest.raises(ParityError) as info:
        check_parity(model, path, ROWS, tolerance=1e-4)
    assert info.value.max_abs_diff == float("inf")


def test_check_parity_needs_rows(tmp_path):
    """Parity on zero rows proves nothing and is refused."""
    model = ShiftedModel(0.0)
    path = tmp_path / "m.onnx"
    model.export_onnx(path)
    with pytest.raises(InvalidInputError, match="at least one feature row"):
        check_parity(model, path, ROWS[:0], tolerance=1e-4)
