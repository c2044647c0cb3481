"""OnnxScorer output handling and the parity check, against real onnxruntime sessions."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
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
    n_features = N_FEATURES
    window = 1

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.params: Mapping[str, Any] = {"offset": offset}

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return expected(np.asarray(x)) + self.offset

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x)

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
    with pytest.raises(ParityError, match="shifted: ONNX predictions differ") as info:
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


# --- sequence models: [N, window, n_features] inputs ---------------------------------

WINDOW = 4


def window_model(path: Path, dims: list[str | int] | None = None) -> Path:
    """P(up) = sigmoid(mean over the window of x @ WEIGHTS): every window row matters."""
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["logit_t"]),  # [N, W, 1]
        helper.make_node("ReduceMean", ["logit_t"], ["logit"], axes=[1], keepdims=0),
        helper.make_node("Sigmoid", ["logit"], ["p_up"]),
    ]
    graph = helper.make_graph(
        nodes,
        "window_sigmoid",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, dims or ["N", WINDOW, N_FEATURES]
            )
        ],
        [helper.make_tensor_value_info("p_up", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, [N_FEATURES, 1], WEIGHTS.tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def window_expected(windows: np.ndarray) -> np.ndarray:
    logits = (windows.astype(np.float32) @ WEIGHTS).mean(axis=1).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logits))


SERIES = np.random.default_rng(1).normal(size=(10, N_FEATURES)).astype(np.float32)


def test_scorer_reads_window_from_a_rank_3_input(tmp_path):
    """A [N, window, n_features] input sets window and n_features; windows score as a batch."""
    scorer = OnnxScorer(window_model(tmp_path / "w.onnx"))
    assert (scorer.window, scorer.n_features) == (WINDOW, N_FEATURES)
    batch = np.stack([SERIES[i : i + WINDOW] for i in range(5)])
    np.testing.assert_allclose(scorer.predict_proba(batch), window_expected(batch), atol=1e-6)


def test_tabular_scorer_has_window_one(tmp_path):
    """A [N, n_features] input is a tabular model: window 1."""
    assert OnnxScorer(sigmoid_model(tmp_path / "m.onnx", ["N", 1])).window == 1


def test_window_scorer_rejects_rows(tmp_path):
    """Feeding 2-D rows to a sequence model names the window shape it needs."""
    scorer = OnnxScorer(window_model(tmp_path / "w.onnx"))
    with pytest.raises(InvalidInputError, match=rf"shape \(n, {WINDOW}, {N_FEATURES}\)"):
        scorer.predict_proba(SERIES)


@pytest.mark.parametrize(
    "dims", [["N", "W", N_FEATURES], ["N", WINDOW, N_FEATURES, 1]], ids=["dynamic", "rank4"]
)
def test_scorer_rejects_unusable_inputs(tmp_path, dims):
    """Inputs whose window or width is not fixed, or of another rank, are refused at load."""
    if len(dims) == 4:
        path = tmp_path / "r4.onnx"
        graph = helper.make_graph(
            [helper.make_node("Identity", ["input"], ["p_up"])],
            "rank4",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
            [helper.make_tensor_value_info("p_up", TensorProto.FLOAT, dims)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
        onnx.save(model, str(path))
    else:
        path = window_model(tmp_path / "dyn.onnx", dims)
    with pytest.raises(InvalidInputError, match=r"input must be .* with fixed sizes"):
        OnnxScorer(path)


def test_predict_latest_scores_the_last_window(tmp_path):
    """predict_latest uses exactly the last `window` rows: older rows, even NaN, are ignored."""
    scorer = OnnxScorer(window_model(tmp_path / "w.onnx"))
    rows = SERIES.copy()
    rows[0, 1] = np.nan
    expected = window_expected(SERIES[None, -WINDOW:])[0]
    assert scorer.predict_latest(rows) == pytest.approx(expected, abs=1e-6)
    assert scorer.predict_latest(rows[-WINDOW:]) == scorer.predict_latest(rows)


def test_predict_latest_on_a_tabular_model_scores_the_last_row(tmp_path):
    """For window 1, predict_latest is P(up) of the last row alone."""
    scorer = OnnxScorer(sigmoid_model(tmp_path / "m.onnx", ["N", 1]))
    assert scorer.predict_latest(ROWS) == pytest.approx(expected(ROWS[-1:])[0], abs=1e-6)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (SERIES[: WINDOW - 1], f"needs the last {WINDOW} feature rows, got {WINDOW - 1}"),
        (SERIES[:, :2], rf"shape \(rows, {N_FEATURES}\)"),
        (SERIES[0], rf"shape \(rows, {N_FEATURES}\)"),
        (
            np.where(np.arange(10)[:, None] == 8, np.inf, SERIES),
            r"feature row 8 \(of 10\) has a non-finite value in feature 0: inf",
        ),
    ],
    ids=["too-few", "too-narrow", "1-D", "non-finite"],
)
def test_predict_latest_rejects_unusable_rows(tmp_path, rows, message):
    """Too few rows, the wrong width or a non-finite value in the window is a clear error."""
    scorer = OnnxScorer(window_model(tmp_path / "w.onnx"))
    with pytest.raises(InvalidInputError, match=message):
        scorer.predict_latest(rows)


class WindowModel:
    """A native sequence model whose probabilities match window_model's exactly."""

    trainer = "window"
    n_params = 3
    n_features = N_FEATURES
    window = WINDOW
    params: Mapping[str, Any] = {}

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return window_expected(np.asarray(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x)

    def export_onnx(self, path: Path) -> None:
        window_model(path)


def test_check_parity_on_windows(tmp_path):
    """Parity of a sequence model is measured on windows, with the same tolerance rule."""
    model = WindowModel()
    path = tmp_path / "w.onnx"
    model.export_onnx(path)
    batch = np.stack([SERIES[i : i + WINDOW] for i in range(6)])
    assert check_parity(model, path, batch, tolerance=1e-4) < 1e-6


# --- predict_latest's one-row path (bound input buffer) ------------------------------


def scorers(tmp_path: Path) -> list[OnnxScorer]:
    naive = tmp_path / "naive.onnx"
    NaiveModel(0.25, N_FEATURES).export_onnx(naive)
    return [
        OnnxScorer(sigmoid_model(tmp_path / "m.onnx", ["N", 1])),
        OnnxScorer(sigmoid_model(tmp_path / "flat.onnx", ["N"])),
        OnnxScorer(naive),
        OnnxScorer(window_model(tmp_path / "w.onnx")),
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, object])
def test_predict_latest_equals_a_batch_of_one_bit_for_bit(tmp_path, dtype):
    """The bound-buffer path gives exactly predict_proba's value on the same last window,
    for every output shape, window and input dtype (the slow path takes the others)."""
    series = (np.random.default_rng(2).normal(size=(40, N_FEATURES)) * 3).astype(dtype)
    for scorer in scorers(tmp_path):
        w = scorer.window
        for end in range(w, len(series) + 1):
            rows = series[:end]
            window = np.asarray(rows[end - w :], dtype=np.float32)
            batch = window if w == 1 else window[None]
            assert scorer.predict_latest(rows) == scorer.predict_proba(batch)[0]


def test_predict_latest_from_many_threads_gives_each_its_own_answer(tmp_path):
    """Threads racing for the bound buffer each get their rows' value (the losers take
    session.run)."""
    scorer = OnnxScorer(window_model(tmp_path / "w.onnx"))
    series = np.random.default_rng(3).normal(size=(400, N_FEATURES))
    want = [scorer.predict_latest(series[: i + WINDOW]) for i in range(len(series) - WINDOW)]

    def score(offset: int) -> list[float]:
        return [
            scorer.predict_latest(series[: i + WINDOW])
            for i in range(offset, len(series) - WINDOW, 4)
        ]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(score, range(4)))
    for offset, got in enumerate(results):
        assert got == want[offset::4]


def test_predict_latest_rejects_a_window_beyond_float32(tmp_path):
    """A float64 value that is infinite in float32 is refused, as the cast makes it."""
    scorer = OnnxScorer(sigmoid_model(tmp_path / "m.onnx", ["N", 1]))
    rows = ROWS.copy()
    rows[-1, 2] = 1e39
    with (
        pytest.warns(RuntimeWarning, match="overflow"),
        pytest.raises(InvalidInputError, match="non-finite value in feature 2: inf"),
    ):
        scorer.predict_latest(rows)
