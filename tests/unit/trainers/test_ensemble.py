"""The ensemble candidate: one composed ONNX graph, weights from validation only, gated like any."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monitors.base import NullMonitor
from monitors.gates import GateConfig
from trainers.baselines import Yardstick, choose_yardstick, fit_yardsticks
from trainers.candidate import CandidateRun, run_candidate
from trainers.config import TrainConfig
from trainers.dataset import Dataset
from trainers.ensemble import METHODS, STACKING_RIDGE, fit_combiner, run_ensemble
from trainers.errors import InvalidInputError
from trainers.features import training_matrix
from trainers.metrics import classification_metrics
from trainers.onnx_compose import Combiner, Member, compose
from trainers.onnx_io import OnnxScorer
from trainers.pipeline import train_symbol
from trainers.synthetic import MarketSpec, generate_bars, planted_return_bars

# Members must pass their gates to join; on ~1,000 bars tiny models pass or fail the
# statistical gates by luck, so the unit fixture relaxes them (the pipeline test keeps them).
LENIENT = GateConfig(
    require_beat_baseline=False, max_train_val_gap=1.0, max_val_test_diff=1.0, min_test_rows=1
)
MEMBERS: dict[
    str, dict[str, object]
] = {  # two tabular tree exports, a net over a 4-row window, a 16-row sequence model
    "xgboost": {"preset": "tiny"},
    "random_forest": {"preset": "tiny"},
    "mlp": {"preset": "tiny", "window": 4},
    "lstm": {"preset": "tiny", "epochs": 5},
}


@dataclasses.dataclass(frozen=True)
class Run:
    data: Dataset
    fwd_returns: np.ndarray
    yardstick: Yardstick
    runs: list[CandidateRun]

    def config(self, **params: object) -> TrainConfig:
        return TrainConfig(
            trainers=(*MEMBERS, "ensemble"),
            gates=LENIENT,
            walk_forward_folds=0,
            trainer_params={**MEMBERS, "ensemble": params},
        )

    def ensemble(
        self, out: Path, runs: list[CandidateRun] | None = None, data: Dataset | None = None,
        **params: object,
    ) -> CandidateRun:  # fmt: skip
        return run_ensemble(
            9,
            self.runs if runs is None else runs,
            config=self.config(**params),
            data=self.data if data is None else data,
            fwd_returns=self.fwd_returns,
            yardstick=self.yardstick,
            out_dir=out,
        )


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Run:
    matrix = training_matrix(generate_bars(MarketSpec("BTCUSDT", 1, signal_strength=1.0), 1000))
    data = matrix.dataset(val_fraction=0.15, test_fraction=0.15)
    out = tmp_path_factory.mktemp("members")
    config = TrainConfig(
        trainers=tuple(MEMBERS), gates=LENIENT, walk_forward_folds=0, trainer_params=MEMBERS
    )
    yardstick = choose_yardstick(fit_yardsticks(data, matrix.fwd_returns, config))
    runs = [
        run_candidate(
            i,
            name,
            config=config,
            data=data,
            fwd_returns=matrix.fwd_returns,
            yardstick=yardstick,
            out_dir=out,
            monitor_factory=NullMonitor,
        )
        for i, name in enumerate(MEMBERS)
    ]
    assert all(r.record.passed for r in runs), [r.record.failed_gates for r in runs]
    return Run(data, matrix.fwd_returns, yardstick, runs)


def member_probabilities(runs: list[CandidateRun], data: Dataset) -> np.ndarray:
    """Each member's own model.onnx on its own test inputs, one column per member."""
    scorers = [OnnxScorer(r.path) for r in runs if r.path is not None]
    return np.column_stack([s.predict_proba(data.inputs("test", s.window)) for s in scorers])


@pytest.mark.parametrize("method", METHODS)
def test_each_method_reproduces_the_members_combined_probabilities(members, tmp_path, method):
    """The ensemble's ONNX equals its recorded combination of the members' ONNX outputs."""
    run = members.ensemble(tmp_path, method=method)
    record = run.record
    assert record.error is None, record.error
    assert run.path is not None and run.onnx is not None
    params = record.params
    assert params["method"] == method
    assert params["members"] == list(MEMBERS)
    weights = tuple(params["weights"])
    if method == "soft_vote":
        assert weights == pytest.approx((1 / 4,) * 4)
    combiner = (
        Combiner("logistic", weights, float(params["intercept"]))
        if method == "stacking"
        else Combiner("mean", weights)
    )
    scorer = OnnxScorer(run.path)
    assert (scorer.window, run.onnx.window, record.window) == (16, 16, 16)
    ensemble = scorer.predict_proba(members.data.inputs("test", 16))
    expected = combiner.combine(member_probabilities(members.runs, members.data))
    assert np.max(np.abs(ensemble - expected)) <= LENIENT.max_parity_diff
    assert record.parity_max_abs_diff is not None
    assert record.parity_max_abs_diff <= LENIENT.max_parity_diff
    assert next(g for g in record.gates if g.gate == "onnx_parity").passed
    assert record.metrics is not None and record.metrics.test["n"] == len(members.data.y_test)


def test_live_scoring_feeds_each_member_its_own_window(members, tmp_path):
    """From raw feature rows the graph gives the mean of each member's own latest P(up)."""
    run = members.ensemble(tmp_path, method="soft_vote")
    assert run.path is not None
    ensemble = OnnxScorer(run.path)
    own = [OnnxScorer(r.path) for r in members.runs if r.path is not None]
    assert [s.window for s in own] == [1, 1, 4, 16]
    features = members.data.features
    for end in (16, 300, len(features)):
        rows = features[:end]
        expected = np.mean([s.predict_latest(rows) for s in own])
        assert ensemble.predict_latest(rows) == pytest.approx(expected, abs=1e-6)


def test_tabular_members_compose_to_a_rows_input(members, tmp_path):
    """When every member is tabular the ensemble takes [N, n_features] rows, like they do."""
    trees = members.runs[:2]  # xgboost (onnxmltools) and random_forest (skl2onnx)
    run = members.ensemble(tmp_path, trees, method="val_weighted")
    assert run.record.error is None, run.record.error
    assert run.path is not None
    scorer = OnnxScorer(run.path)
    assert (scorer.window, run.record.window) == (1, 1)
    combiner = Combiner("mean", tuple(run.record.params["weights"]))
    expected = combiner.combine(member_probabilities(trees, members.data))
    assert np.max(np.abs(scorer.predict_proba(members.data.X_test) - expected)) <= 1e-6


def test_fewer_than_two_passing_members_fail_the_record_with_the_reason(members, tmp_path):
    """One passing candidate is no ensemble: the record fails, names it, leaves no file."""
    xgb, forest, _, _ = members.runs
    failed = dataclasses.replace(forest, record=forest.record.model_copy(update={"passed": False}))
    run = members.ensemble(tmp_path, [xgb, failed])
    assert not run.record.passed
    assert run.record.error is not None
    assert run.record.error.stage == "members"
    assert run.record.error.message == "needs at least 2 passing candidates, got 1: xgboost"
    assert run.path is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("params", "named"),
    [({"method": "hard_vote"}, "'hard_vote'"), ({"method": "stacking", "l2": 3}, "l2")],
)
def test_a_bad_method_or_key_is_a_recorded_error_naming_it(members, tmp_path, params, named):
    """A bad ensemble setting fails its record (InvalidInputError), not the run."""
    run = members.ensemble(tmp_path, **params)
    assert run.record.error is not None
    assert (run.record.error.stage, run.record.error.type) == ("init", "InvalidInputError")
    assert named in run.record.error.message
    assert not run.record.passed


def test_stacking_weights_depend_on_validation_rows_only(members, tmp_path):
    """Flipping every train and test label leaves the stacking weights as they were."""
    data = members.data
    split = data.split
    flipped = data.labels.copy()
    for part in (split.train, split.test):
        flipped[part] = 1.0 - flipped[part]
    base = members.ensemble(tmp_path / "a", method="stacking").record.params
    other = members.ensemble(
        tmp_path / "b", data=Dataset(data.features, flipped, split), method="stacking"
    ).record.params
    assert (other["weights"], other["intercept"]) == (base["weights"], base["intercept"])
    val_flipped = data.labels.copy()
    val_flipped[split.val] = 1.0 - val_flipped[split.val]
    moved = members.ensemble(
        tmp_path / "c", data=Dataset(data.features, val_flipped, split), method="stacking"
    ).record.params
    assert moved["weights"] != base["weights"]


@pytest.mark.parametrize("method", ["soft_vote", "stacking"])
def test_train_symbol_gates_the_ensemble_and_serves_it_when_chosen(tmp_path, method):
    """The ensemble is gated after the candidates; soft_vote is judged on the pooled
    walk-forward blocks, stacking on the test split alone; chosen, it is model.onnx."""
    config = TrainConfig(
        trainers=("xgboost", "mlp", "ensemble"),
        walk_forward_folds=2,
        trainer_params={
            "xgboost": {"preset": "tiny"},
            "mlp": {"preset": "tiny"},
            "ensemble": {"method": method},
        },
    )
    bars = generate_bars(MarketSpec("BTCUSDT", 11, signal_strength=1.0), 1200)
    result = train_symbol("BTCUSDT", bars, config, tmp_path)
    meta = result.metadata
    assert [c.trainer for c in meta.candidates] == ["xgboost", "mlp", "ensemble"]
    record = meta.candidates[-1]
    assert record.error is None, record.error
    assert record.passed
    assert {g.gate for g in record.gates} >= {"beats_baseline_significant", "onnx_parity"}
    assert record.params["members"] == ["xgboost", "mlp"]
    comparison = record.baseline_comparison
    assert comparison is not None and record.walk_forward is not None
    if method == "soft_vote":
        assert comparison.blocks == 2
        assert len(record.walk_forward.per_fold) == 2
        assert record.walk_forward.accuracy_std is not None
        return
    start, stop = meta.split.test
    assert (comparison.blocks, comparison.rows) == (1, stop - start)
    assert record.walk_forward.skipped is not None
    assert result.chosen == "ensemble"
    assert result.model_path is not None and result.model_path == tmp_path / "model.onnx"
    assert meta.onnx is not None and meta.params == record.params
    scorer = OnnxScorer(result.model_path)
    assert (scorer.window, scorer.input_name, scorer.output_name) == (1, "input", "probabilities")
    matrix = training_matrix(bars)
    test = slice(start, stop)
    again = classification_metrics(
        matrix.y[test], scorer.predict_proba(matrix.X[test]), matrix.fwd_returns[test]
    )
    assert meta.metrics is not None and again == meta.metrics.test


def test_settings_accept_the_ensemble_without_importing_onnx():
    """CTD_TRAINERS may name ensemble; importing the settings still loads no onnx or torch."""
    code = (
        "import sys; from daemon.settings import load_settings;"
        "s = load_settings(trainers='xgboost,ensemble', "
        "trainer_params={'ensemble': {'method': 'stacking'}});"
        "print(s.train_config.trainers, "
        "sorted(m for m in ('onnx', 'onnxruntime', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "('xgboost', 'ensemble') []"


# Return targets: members predict forward returns; the graph outputs ``prediction``.
RETURN_MEMBERS: dict[str, dict[str, object]] = {
    "xgboost": {"preset": "tiny"},
    "random_forest": {"preset": "tiny"},
}


@pytest.fixture(scope="module")
def return_members(tmp_path_factory: pytest.TempPathFactory) -> Run:
    bars = planted_return_bars(1000, horizon=3, strength=0.6, seed=2)
    matrix = training_matrix(bars, target="return", horizon=3)
    data = matrix.dataset(val_fraction=0.15, test_fraction=0.15)
    out = tmp_path_factory.mktemp("return_members")
    config = TrainConfig(
        trainers=tuple(RETURN_MEMBERS), gates=LENIENT, walk_forward_folds=0,
        trainer_params=RETURN_MEMBERS, target="return", horizon_bars=3,
    )  # fmt: skip
    past = matrix.past_returns
    yardstick = choose_yardstick(
        fit_yardsticks(data, matrix.fwd_returns, config, past_returns=past)
    )
    runs = [
        run_candidate(
            i,
            name,
            config=config,
            data=data,
            fwd_returns=matrix.fwd_returns,
            yardstick=yardstick,
            out_dir=out,
            monitor_factory=NullMonitor,
        )
        for i, name in enumerate(RETURN_MEMBERS)
    ]
    assert all(r.record.passed for r in runs), [r.record.failed_gates for r in runs]
    return Run(data, matrix.fwd_returns, yardstick, runs)


@pytest.mark.parametrize("method", METHODS)
def test_a_return_ensemble_outputs_the_combined_predicted_return(return_members, tmp_path, method):
    """Return members: one graph whose ``prediction`` [N, 1] is the recorded combination of
    the members' own ONNX predictions (mean, MSE-skill weights, or ridge stacking with an
    intercept); metrics are regression metrics."""
    data = return_members.data
    run = run_ensemble(
        9, return_members.runs, data=data, fwd_returns=return_members.fwd_returns,
        yardstick=return_members.yardstick, out_dir=tmp_path,
        config=TrainConfig(
            trainers=(*RETURN_MEMBERS, "ensemble"), gates=LENIENT, walk_forward_folds=0,
            trainer_params={**RETURN_MEMBERS, "ensemble": {"method": method}},
            target="return", horizon_bars=3,
        ),
    )  # fmt: skip
    record = run.record
    assert record.error is None, record.error
    assert run.path is not None and run.onnx is not None
    scorer = OnnxScorer(run.path)
    assert (scorer.output_name, scorer.target, run.onnx.output) == (
        "prediction", "return", "prediction",
    )  # fmt: skip
    params: dict[str, Any] = dict(record.params)
    weights = tuple(float(w) for w in params["weights"])
    if method == "soft_vote":
        assert weights == pytest.approx((0.5, 0.5))
    combiner = (
        Combiner("linear", weights, float(params["intercept"]))
        if method == "stacking"
        else Combiner("mean", weights)
    )
    own = [OnnxScorer(r.path) for r in return_members.runs if r.path is not None]
    expected = combiner.combine(np.column_stack([s.predict(data.X_test) for s in own]))
    assert np.max(np.abs(scorer.predict(data.X_test) - expected)) <= 1e-6
    assert record.parity_max_abs_diff is not None and record.parity_max_abs_diff <= 1e-6
    assert record.metrics is not None and set(record.metrics.test) >= {"rmse", "r2", "hit_rate"}


def test_return_combiners_follow_validation_mse():
    """val_weighted: weights proportional to 1 - MSE / MSE(val mean), clipped at 0;
    stacking: the ridge solution towards equal weights with an unpenalised intercept."""
    rng = np.random.default_rng(0)
    y = rng.normal(0.001, 0.01, 400)
    good = y + rng.normal(0, 0.005, 400)
    fair = y + rng.normal(0, 0.008, 400)
    useless = rng.normal(0, 0.02, 400)  # worse than the mean: weight 0
    p = np.column_stack([good, fair, useless])
    combiner = fit_combiner("val_weighted", p, y, "return")
    base = np.mean((y - y.mean()) ** 2)
    skill = [max(0.0, 1 - np.mean((p[:, j] - y) ** 2) / base) for j in range(3)]
    assert combiner.kind == "mean"
    assert combiner.weights == pytest.approx(np.array(skill) / sum(skill))
    assert combiner.weights[2] == 0.0 and combiner.weights[0] > combiner.weights[1]

    stack = fit_combiner("stacking", p, y, "return")
    assert stack.kind == "linear"
    z = p - p.mean(axis=0)
    gram = z.T @ z
    penalty = STACKING_RIDGE * np.trace(gram) / 3
    w = np.linalg.solve(gram + penalty * np.eye(3), z.T @ (y - y.mean()) + penalty / 3)
    assert stack.weights == pytest.approx(w)
    assert stack.intercept == pytest.approx(y.mean() - p.mean(axis=0) @ w)
    assert stack.weights[0] > stack.weights[2]
    assert fit_combiner("soft_vote", p, y, "return") == Combiner("mean", (1 / 3,) * 3)


def _linear_member(path: Path, weights: list[float], *, output: str = "prediction") -> Path:
    """A hand-built return model: ``x @ weights`` as ``output`` [N, 1] (opset 13)."""
    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], [output])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", len(weights)])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_compose_refuses_mixed_targets_and_a_logistic_return_combiner(tmp_path):
    """Members of one target only; a return ensemble is a mean or linear combination, and
    ``OnnxScorer`` reads it as a return model."""
    a = Member.load(_linear_member(tmp_path / "a.onnx", [1.0, 0.0]))
    b = Member.load(_linear_member(tmp_path / "b.onnx", [0.0, 2.0]))
    direction = Member.load(_linear_member(tmp_path / "p.onnx", [0.1, 0.1], output="probabilities"))
    assert (a.target, direction.target) == ("return", "direction")
    with pytest.raises(InvalidInputError, match="different targets"):
        compose([a, direction], Combiner("mean", (0.5, 0.5)), tmp_path / "e.onnx")
    with pytest.raises(InvalidInputError, match="logistic combiner does not suit return"):
        compose([a, b], Combiner("logistic", (0.5, 0.5)), tmp_path / "e.onnx")
    with pytest.raises(InvalidInputError, match="linear combiner does not suit direction"):
        compose([direction, direction], Combiner("linear", (0.5, 0.5)), tmp_path / "e.onnx")
    combiner = Combiner("linear", (0.25, -0.5), 0.003)
    compose([a, b], combiner, tmp_path / "e.onnx")
    scorer = OnnxScorer(tmp_path / "e.onnx")
    x = np.random.default_rng(1).normal(0, 0.01, (50, 2)).astype(np.float32)
    expected = combiner.combine(np.column_stack([x[:, 0], 2.0 * x[:, 1]]).astype(np.float64))
    assert scorer.target == "return"
    assert np.max(np.abs(scorer.predict(x) - expected)) <= 1e-7


def test_a_return_soft_vote_walks_forward_with_regression_metrics(tmp_path: Path) -> None:
    """In train_symbol a return soft_vote is judged like a trainer on the pooled blocks:
    per-fold regression metrics, the baseline comparison by Diebold-Mariano over both."""
    config = TrainConfig(
        trainers=("xgboost", "random_forest", "ensemble"), gates=LENIENT, walk_forward_folds=2,
        trainer_params={**RETURN_MEMBERS, "ensemble": {"method": "soft_vote"}},
        target="return", horizon_bars=3,
    )  # fmt: skip
    bars = planted_return_bars(1200, horizon=3, strength=0.6, seed=1)
    record = train_symbol("AAA", bars, config, tmp_path).metadata.candidates[-1]
    assert record.trainer == "ensemble" and record.error is None, record.error
    assert record.walk_forward is not None and len(record.walk_forward.per_fold) == 2
    assert {"rmse", "r2", "hit_rate"} <= set(record.walk_forward.stats)
    assert all("rmse" in fold.test for fold in record.walk_forward.per_fold)
    comparison = record.baseline_comparison
    assert comparison is not None and comparison.blocks == 2
    assert (comparison.test, comparison.horizon) == ("diebold_mariano", 3)
