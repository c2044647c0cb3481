"""Walk-forward folds: what is refit, what is recorded, and how it reaches the gates."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import trainers.table
from monitors.base import NullMonitor
from monitors.gates import GateConfig
from monitors.training import default_monitor
from tests.unit.trainers.test_conformance import dataset
from trainers.config import TrainConfig
from trainers.dataset import Dataset
from trainers.features import training_matrix
from trainers.metadata import WalkForwardRecord
from trainers.metrics import classification_metrics
from trainers.pipeline import TrainResult, train_symbol
from trainers.splits import Split
from trainers.synthetic import MarketSpec, generate_bars
from trainers.table import make_trainer
from trainers.walk_forward import walk_forward

XGB_TINY = {"xgboost": {"preset": "tiny"}}
CONFIG = TrainConfig(trainers=("xgboost",), trainer_params=XGB_TINY, walk_forward_folds=3)


def bars(n: int = 3000, strength: float = 1.0):
    return generate_bars(MarketSpec("BTCUSDT", 1, signal_strength=strength), n)


def _split(d: dict[str, Any]) -> Split:
    return Split(slice(*d["train"]), slice(*d["val"]), slice(*d["test"]), d["embargo"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> TrainResult:
    return train_symbol("BTCUSDT", bars(), CONFIG, tmp_path_factory.mktemp("wf"))


def test_folds_tile_the_end_and_the_last_is_the_main_split(run):
    """k expanding folds whose test blocks follow each other; the last fold is the main split."""
    wf = run.metadata.to_dict()["candidates"][0]["walk_forward"]
    assert (wf["folds"], wf["skipped"], wf["error"]) == (3, None, None)
    splits = [f["split"] for f in wf["per_fold"]]
    assert [f["refit"] for f in wf["per_fold"]] == [True, True, False]
    for earlier, later in itertools.pairwise(splits):
        assert earlier["test"][1] == later["test"][0]
        assert earlier["train"][1] < later["train"][1]
    main = {k: v for k, v in run.metadata.to_dict()["split"].items() if k in splits[-1]}
    assert splits[-1] == main


def test_mean_and_sample_std_of_fold_metrics(run):
    """Each metric's mean and sample std (ddof=1) over the folds' test metrics are recorded."""
    wf = run.metadata.to_dict()["candidates"][0]["walk_forward"]
    for key in ("accuracy", "roc_auc", "log_loss"):
        values = [f["test"][key] for f in wf["per_fold"]]
        assert wf[key]["mean"] == pytest.approx(np.mean(values))
        assert wf[key]["std"] == pytest.approx(np.std(values, ddof=1))
    assert "n" not in wf
    assert WalkForwardRecord.model_validate(wf).accuracy_std == wf["accuracy"]["std"] > 0


def test_refit_folds_use_the_same_trainer_params_and_seed(run):
    """A fold's metrics are those of the same trainer, params and seed fitted on that fold."""
    wf = run.metadata.to_dict()["candidates"][0]["walk_forward"]
    m = training_matrix(bars())
    fold = Dataset.from_split(m.X, m.y, _split(wf["per_fold"][0]["split"]))
    model = make_trainer("xgboost", preset="tiny").fit(fold, NullMonitor(), seed=0)
    rows = fold.rows("test")
    again = classification_metrics(
        fold.y_test, model.predict_proba(fold.X_test), m.fwd_returns[rows]
    )
    assert again == wf["per_fold"][0]["test"]


def test_last_fold_is_the_candidate_itself(run):
    """The last fold reuses the candidate's model: its test accuracy is the recorded one."""
    candidate = run.metadata.to_dict()["candidates"][0]
    last = candidate["walk_forward"]["per_fold"][-1]["test"]
    assert last["accuracy"] == candidate["metrics"]["test"]["accuracy"]


@pytest.mark.parametrize(("maximum", "passed"), [(0.0, False), (1.0, True)])
def test_fold_std_reaches_the_stability_gate(tmp_path, run, maximum, passed):
    """The gate judges the recorded fold accuracy std against the configured maximum."""
    config = replace(CONFIG, gates=GateConfig(max_fold_accuracy_std=maximum))
    result = train_symbol("BTCUSDT", bars(), config, tmp_path)
    (gate,) = [
        g
        for g in result.metadata.to_dict()["candidates"][0]["gates"]
        if g["gate"] == "fold_stability"
    ]
    std = run.metadata.to_dict()["candidates"][0]["walk_forward"]["accuracy"]["std"]
    assert gate["passed"] is passed
    assert gate["value"] == pytest.approx(std, abs=1e-12)


def test_folds_off_records_nothing_and_adds_no_gate(tmp_path):
    """walk_forward_folds=0 records no walk-forward and, unless configured, no stability gate."""
    result = train_symbol("BTCUSDT", bars(), replace(CONFIG, walk_forward_folds=0), tmp_path)
    (candidate,) = result.metadata.to_dict()["candidates"]
    assert candidate["walk_forward"] is None
    assert "fold_stability" not in {g["gate"] for g in candidate["gates"]}
    assert result.passed


def test_too_little_data_for_the_folds_is_skipped_not_failed(tmp_path):
    """Data too short for k folds records why; the candidate is still trained and gated."""
    config = replace(CONFIG, walk_forward_folds=6, gates=GateConfig(max_fold_accuracy_std=0.1))
    result = train_symbol("BTCUSDT", bars(), config, tmp_path)
    (candidate,) = result.metadata.to_dict()["candidates"]
    assert candidate["error"] is None
    wf = candidate["walk_forward"]
    assert "not enough data for the first train part of 6 walk-forward folds" in wf["skipped"]
    assert wf["per_fold"] == []
    assert "accuracy" not in wf
    (gate,) = [g for g in candidate["gates"] if g["gate"] == "fold_stability"]
    assert gate["passed"] is False
    assert gate["reason"] == "walk-forward fold accuracy std is missing"


class FoldFailingTrainer:
    """The naive baseline, except that it cannot train on less than the full training split."""

    name = "fold_failing"
    min_train_rows = 0

    def fit(self, data: Dataset, monitor, seed: int):
        if len(data.y_train) < FoldFailingTrainer.min_train_rows:
            raise RuntimeError(f"only {len(data.y_train)} training rows")
        return make_trainer("naive").fit(data, monitor, seed)


def test_a_failing_fold_is_recorded_and_leaves_the_stats_out(tmp_path, monkeypatch, run):
    """A fold whose fit raises is recorded with its error; the candidate itself stands."""
    table = {**trainers.table.TRAINERS, "fold_failing": f"{__name__}:FoldFailingTrainer"}
    monkeypatch.setattr(trainers.table, "TRAINERS", table)
    train = run.metadata.to_dict()["split"]["train"]
    monkeypatch.setattr(FoldFailingTrainer, "min_train_rows", train[1] - train[0])
    config = replace(CONFIG, trainers=("fold_failing",))
    result = train_symbol("BTCUSDT", bars(), config, tmp_path)
    (candidate,) = result.metadata.to_dict()["candidates"]
    assert candidate["error"] is None
    assert candidate["metrics"] is not None
    wf = candidate["walk_forward"]
    assert wf["error"]["fold"] == 0
    assert wf["error"]["type"] == "RuntimeError"
    assert wf["error"]["message"].startswith("only ")
    assert WalkForwardRecord.model_validate(wf).accuracy_std is None


def test_sequence_trainer_folds_score_every_test_row():
    """A sequence model's refit folds score one window per test row of each fold."""
    data = dataset(1500, seed=2, strength=1.0)
    params = {"preset": "tiny", "epochs": 3}
    model = make_trainer("lstm", **params).fit(data, NullMonitor(), seed=0)
    fwd = training_matrix(generate_bars(MarketSpec("TEST", 2, signal_strength=1.0), 1500))
    wf = walk_forward(
        "lstm",
        params,
        data,
        fwd.fwd_returns,
        folds=2,
        val_fraction=0.15,
        test_fraction=0.15,
        seed=0,
        last_model=model,
        monitor_factory=default_monitor,
    ).model_dump()
    assert wf["error"] is None
    first, last = wf["per_fold"]
    assert first["test"]["n"] == last["test"]["n"] == len(data.y_test)
    assert first["refit"] is True
    assert last["refit"] is False
    assert 0.0 < wf["accuracy"]["mean"] < 1.0
