"""A run's evidence on real files: the evaluation CSV and the losers' ONNX files, reproduced
with onnxruntime, and carried into a real registry directory with the version."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import trainers.table
from deploy.registry import Registry
from monitors.base import TrainingMonitor
from monitors.gates import GateConfig
from trainers.config import TrainConfig
from trainers.data import Bars
from trainers.dataset import Dataset, sequence_windows
from trainers.evidence import (
    FIXED_COLUMNS,
    PREDICTIONS_FILE,
    evidence_names,
    read_predictions,
)
from trainers.features import TrainingMatrix, training_matrix
from trainers.onnx_io import OnnxScorer
from trainers.pipeline import TrainResult, train_symbol
from trainers.synthetic import MarketSpec, generate_bars, planted_return_bars
from trainers.table import trainer_class

SYMBOL = "BTCUSDT"
# random_forest is chosen, xgboost passes and loses, naive fails a gate (it cannot beat the
# majority-class yardstick), exploding never gets to export. 600 bars: a 58-row test split,
# hence the lowered min_test_rows. No torch trainer, to stay fast: the CSV takes a windowed
# model's column from the same test block (windowed reproduction: test_pipeline.py).
NAMES = ("xgboost", "random_forest", "naive", "exploding")


class ExplodingTrainer:
    """A trainer whose fit always fails, as a crashing backend would."""

    name = "exploding"

    def fit(self, data: Dataset, monitor: TrainingMonitor, seed: int) -> None:
        raise RuntimeError("backend crashed")


@dataclass(frozen=True)
class Run:
    result: TrainResult
    out: Path
    matrix: TrainingMatrix


def _bars(n: int = 600) -> Bars:
    return generate_bars(MarketSpec(SYMBOL, 1, signal_strength=1.0), n)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    out = tmp_path_factory.mktemp("run")
    (out / "candidates").mkdir()
    (out / "candidates" / "stale.onnx").write_bytes(b"an earlier run's loser")
    (out / PREDICTIONS_FILE).write_text("stale\n")
    config = TrainConfig(
        trainers=NAMES,
        trainer_params={n: dict(trainer_class(n).unit_test_params) for n in NAMES[:3]},
        walk_forward_folds=0,
        gates=GateConfig(min_test_rows=30),
    )
    with pytest.MonkeyPatch.context() as mp:
        table = {**trainers.table.TRAINERS, "exploding": f"{__name__}:ExplodingTrainer"}
        mp.setattr(trainers.table, "TRAINERS", table)
        result = train_symbol(SYMBOL, _bars(), config, out)
    yield Run(result, out, training_matrix(_bars()))


def test_the_chosen_model_is_model_onnx_and_every_other_exported_one_is_kept(run: Run) -> None:
    """Passing-but-not-chosen and gate-failed candidates are kept under candidates/; one an
    error stopped has no file; an earlier run's loser is gone."""
    passed = {c.trainer: c.passed for c in run.result.metadata.candidates}
    assert passed == {"xgboost": True, "random_forest": True, "naive": False, "exploding": False}
    assert run.result.chosen == "random_forest"
    assert (run.out / "model.onnx").is_file()
    kept = sorted(p.name for p in (run.out / "candidates").iterdir())
    assert kept == ["naive.onnx", "xgboost.onnx"]
    assert not list(run.out.glob(".*")), "no candidate or temp file left behind"


def test_predictions_csv_has_a_row_per_test_row_and_a_column_per_scored_candidate(
    run: Run,
) -> None:
    """row, ts, label and fwd_return are the test split's; the errored candidate has no column."""
    start, stop = run.result.metadata.split.test
    table = read_predictions(run.out / PREDICTIONS_FILE)
    header = (run.out / PREDICTIONS_FILE).read_text().splitlines()[0].split(",")
    assert header == [*FIXED_COLUMNS, "xgboost", "random_forest", "naive"]
    rows = np.arange(start, stop)
    np.testing.assert_array_equal(table["row"], rows)
    np.testing.assert_array_equal(table["ts"], run.matrix.ts[rows])
    np.testing.assert_array_equal(table["label"], run.matrix.y[rows])
    np.testing.assert_array_equal(table["fwd_return"], run.matrix.fwd_returns[rows])


@pytest.mark.parametrize("name", ["xgboost", "random_forest", "naive"])
def test_each_column_is_what_onnxruntime_gives_on_the_kept_file(run: Run, name: str) -> None:
    """Scoring the test rows with the kept ONNX file (model.onnx for the chosen one) gives
    the column bit for bit."""
    start, stop = run.result.metadata.split.test
    file = run.out / ("model.onnx" if name == run.result.chosen else f"candidates/{name}.onnx")
    scorer = OnnxScorer(file)
    x = run.matrix.X.astype(np.float32)
    rows = slice(start, stop)
    inputs = x[rows] if scorer.window == 1 else sequence_windows(x, rows, scorer.window)
    column = read_predictions(run.out / PREDICTIONS_FILE)[name]
    np.testing.assert_array_equal(column, scorer.predict_proba(inputs))


def test_the_registry_stores_the_evidence_with_the_version(run: Run, tmp_path: Path) -> None:
    """add_version copies predictions.csv and candidates/*.onnx; evidence_path opens them."""
    registry = Registry(tmp_path / "registry")
    version = registry.add_version(SYMBOL, run.out)
    assert registry.evidence_files(SYMBOL, version) == [
        "candidates/naive.onnx",
        "candidates/xgboost.onnx",
        PREDICTIONS_FILE,
    ]
    for name in registry.evidence_files(SYMBOL, version):
        stored = registry.evidence_path(SYMBOL, version, name)
        assert stored.read_bytes() == (run.out / name).read_bytes()


def test_evidence_names_are_unique_and_safe_as_paths() -> None:
    """A repeated trainer gets -2, -3; a name unsafe as a file name or a fixed column becomes
    candidate-<position>."""
    names = evidence_names(["xgboost", "xgboost", "../x", "ts", "lstm", "xgboost"])
    assert names == ["xgboost", "xgboost-2", "candidate-2", "candidate-3", "lstm", "xgboost-3"]


def test_a_return_runs_predictions_csv_holds_returns_bit_for_bit(tmp_path: Path) -> None:
    """Return target over 4 bars: ``label`` is the 4-bar forward log return written with
    repr (not cut to 0/1), each column the predicted return onnxruntime gives on the kept
    file."""
    config = TrainConfig(
        trainers=("xgboost", "random_forest"),
        trainer_params={n: {"preset": "tiny"} for n in ("xgboost", "random_forest")},
        walk_forward_folds=0,
        target="return",
        horizon_bars=4,
    )
    bars = planted_return_bars(700, horizon=4, strength=0.6, seed=3)
    result = train_symbol(SYMBOL, bars, config, tmp_path)
    matrix = training_matrix(bars, target="return", horizon=4)
    start, stop = result.metadata.split.test
    table = read_predictions(tmp_path / PREDICTIONS_FILE)
    rows = np.arange(start, stop)
    close = np.asarray(bars.close, dtype=np.float64)
    first = int(np.searchsorted(np.asarray(bars.ts), matrix.ts[start]))
    assert table["label"][0] == np.log(close[first + 4] / close[first])
    np.testing.assert_array_equal(table["label"], matrix.y[rows])
    assert len(np.unique(table["label"])) > 2
    for name in ("xgboost", "random_forest"):
        chosen = name == result.chosen
        file = tmp_path / ("model.onnx" if chosen else f"candidates/{name}.onnx")
        np.testing.assert_array_equal(
            table[name], OnnxScorer(file).predict(matrix.X[rows].astype(np.float32))
        )
    assert set(table) == {*FIXED_COLUMNS, "xgboost", "random_forest"}
