"""train_symbol end to end: real features, xgboost and torch, ONNX files and onnxruntime."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import trainers.table
from monitors.base import Action, MonitorWarning
from trainers.config import TrainConfig
from trainers.dataset import Dataset, sequence_windows
from trainers.errors import InsufficientDataError, InvalidInputError
from trainers.features import FEATURE_SPEC, training_matrix
from trainers.metrics import classification_metrics
from trainers.pipeline import TrainResult, train_symbol
from trainers.repro import config_sha256
from trainers.splits import chronological_split
from trainers.synthetic import MarketSpec, generate_bars
from trainers.table import TRAINERS

# A sequence model beside xgboost, both small; the signal run is the chosen one's
# full path (windows, ONNX, walk-forward). Other tests use XGB alone to stay fast.
CONFIG = TrainConfig(
    trainers=("xgboost", "lstm"),
    trainer_params={"xgboost": {"n_estimators": 200}, "lstm": {"preset": "tiny"}},
)
XGB = TrainConfig(
    trainers=("xgboost",), trainer_params={"xgboost": {"preset": "tiny"}}, walk_forward_folds=0
)


def bars(seed: int, strength: float, n: int = 3000):
    return generate_bars(MarketSpec("BTCUSDT", seed, signal_strength=strength), n)


def strict_json(path: Path) -> dict[str, Any]:
    def no_constants(name: str) -> None:
        raise AssertionError(f"metadata.json contains {name}")

    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)
    return data


@pytest.fixture(scope="module")
def signal_run(tmp_path_factory) -> tuple[TrainResult, Path]:
    out = tmp_path_factory.mktemp("signal")
    return train_symbol("BTCUSDT", bars(1, 1.0), CONFIG, out), out


def test_planted_signal_passes_and_writes_artifacts(signal_run):
    """On learnable bars the best-scoring passing candidate is chosen as model.onnx; the other
    is kept under candidates/ beside the evaluation CSV."""
    result, out = signal_run
    assert result.passed, result.reason
    candidates = result.metadata.to_dict()["candidates"]
    assert [c["trainer"] for c in candidates] == ["xgboost", "lstm"]
    assert all(c["passed"] for c in candidates)
    best = max(candidates, key=lambda c: c["score"])
    assert result.chosen == best["trainer"]
    assert result.model_path == out / "model.onnx"
    assert sorted(p.name for p in out.iterdir()) == [
        "candidates",
        "metadata.json",
        "model.onnx",
        "predictions.csv",
    ]
    (loser,) = {"xgboost", "lstm"} - {result.chosen}
    assert [p.name for p in (out / "candidates").iterdir()] == [f"{loser}.onnx"]
    assert result.reason.startswith(f"chose {best['trainer']}")


def test_metadata_file_is_strict_json_and_matches_result(signal_run):
    """metadata.json has no NaN/inf and holds exactly the result's metadata."""
    result, out = signal_run
    meta = strict_json(out / "metadata.json")
    assert meta == result.metadata.to_dict()
    assert meta["schema_version"] == 1
    for key in (
        "symbol", "trainer", "params", "seed", "data", "feature_spec", "split", "metrics",
        "walk_forward", "baseline", "candidates", "gates", "warnings", "onnx", "timings",
        "config", "config_sha256", "code_version", "created_at", "passed", "reason",
    ):  # fmt: skip
        assert key in meta, key
    assert meta["symbol"] == "BTCUSDT"
    assert meta["passed"] is True
    assert meta["feature_spec"] == FEATURE_SPEC.to_dict()
    assert meta["data"]["n_bars"] == 3000
    assert len(meta["data"]["sha256"]) == 64
    assert meta["created_at"].endswith("Z")
    assert all(g["passed"] for g in meta["gates"])
    assert {g["gate"] for g in meta["gates"]} >= {"train_val_gap", "beats_baseline", "onnx_parity"}
    chosen = next(c for c in meta["candidates"] if c["trainer"] == meta["trainer"])
    assert meta["onnx"]["parity_max_abs_diff"] <= 1e-4
    assert meta["onnx"]["window"] == chosen["window"] == chosen["params"]["window"]
    assert meta["onnx"]["n_features"] == len(FEATURE_SPEC.names)
    assert meta["walk_forward"] == chosen["walk_forward"]
    assert meta["timings"]["total_seconds"] > 0
    assert meta["config"] == CONFIG.to_dict()
    assert meta["config_sha256"] == config_sha256(CONFIG.to_dict())
    assert meta["code_version"]["torch"]  # a torch candidate ran, so its version is pinned
    for candidate in meta["candidates"]:
        assert candidate["error"] is None
        assert candidate["n_params"] > 0
        assert candidate["timings"]["fit_seconds"] > 0
        assert candidate["params"]["seed"] == 0


def test_onnxruntime_reproduces_recorded_test_metrics(signal_run):
    """Scoring the recorded test rows' windows with model.onnx gives the recorded metrics."""
    _, out = signal_run
    meta = strict_json(out / "metadata.json")
    m = training_matrix(bars(1, 1.0))
    s = meta["split"]
    split = chronological_split(
        meta["data"]["n_rows"],
        val_fraction=s["val_fraction"],
        test_fraction=s["test_fraction"],
        embargo=s["embargo"],
    )
    assert [split.test.start, split.test.stop] == s["test"]
    window = meta["onnx"]["window"]
    assert window > 1  # the LSTM wins on these bars: this covers the windowed path
    x = sequence_windows(m.X.astype(np.float32), split.test, window)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(out / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    (probabilities,) = session.run([meta["onnx"]["output"]], {meta["onnx"]["input"]: x})
    proba = probabilities[:, -1].astype(np.float64)
    recomputed = classification_metrics(m.y[split.test], proba, m.fwd_returns[split.test])
    assert recomputed == meta["metrics"]["test"]
    assert meta["metrics"]["test"]["accuracy"] > meta["baseline"]["metrics"]["test"]["accuracy"]


def test_same_inputs_same_metadata(signal_run, tmp_path):
    """A second run on the same bars and config records the same metrics, params and hashes."""
    result, _ = signal_run
    again = train_symbol("BTCUSDT", bars(1, 1.0), CONFIG, tmp_path)
    for key in ("metrics", "params", "data", "walk_forward", "config_sha256"):
        assert again.metadata.to_dict()[key] == result.metadata.to_dict()[key], key
    for first, second in zip(
        result.metadata.to_dict()["candidates"], again.metadata.to_dict()["candidates"], strict=True
    ):
        assert first["metrics"] == second["metrics"]


def test_config_hash_tracks_every_setting():
    """The config hash is stable for equal configs and changes with any setting."""
    base = TrainConfig()
    assert config_sha256(base.to_dict()) == config_sha256(TrainConfig().to_dict())
    for changed in (
        TrainConfig(seed=1),
        TrainConfig(walk_forward_folds=0),
        TrainConfig(augment=True),
        TrainConfig(trainer_params={"tcn": {"preset": "deep"}}),
    ):
        assert config_sha256(changed.to_dict()) != config_sha256(base.to_dict())


def test_default_candidates_and_folds():
    """By default xgboost, tcn and lstm compete, with three walk-forward folds."""
    config = TrainConfig()
    assert config.trainers == ("xgboost", "tcn", "lstm")
    assert config.walk_forward_folds == 3
    assert config.augment is False
    assert set(config.trainers) <= set(TRAINERS)


def test_walk_forward_needs_two_folds_or_none():
    """One fold cannot measure stability: it is refused with the setting's name."""
    with pytest.raises(
        InvalidInputError, match=r"walk_forward_folds must be 0 \(off\) or >= 2, got 1"
    ):
        TrainConfig(walk_forward_folds=1)


def test_augment_reaches_every_candidate_but_not_the_baseline(tmp_path):
    """TrainConfig.augment turns on augmentation in each candidate, never in the baseline."""
    config = TrainConfig(
        trainers=("xgboost",),
        trainer_params={"xgboost": {"preset": "tiny"}},
        walk_forward_folds=0,
        augment=True,
    )
    result = train_symbol("BTCUSDT", bars(1, 1.0, n=540), config, tmp_path)
    (candidate,) = result.metadata.to_dict()["candidates"]
    assert candidate["error"] is None
    assert candidate["params"]["augment"] is True
    start, stop = result.metadata.to_dict()["split"]["train"]
    assert 200 <= stop - start < 300  # small enough to double
    assert candidate["params"]["train_samples"] == 2 * (stop - start)
    assert "augment" not in result.metadata.to_dict()["baseline"]["params"]


ALL_CANDIDATES = tuple(sorted(set(TRAINERS) - {"naive"}))


# Two random-walk seeds, every trainer: the significance gate bounds each candidate's chance
# of a false pass near alpha (5%); on these bars all 12 candidates fail by a margin.
@pytest.mark.parametrize("seed", [4, 24])
def test_random_walk_is_rejected(seed, tmp_path):
    """On a pure random walk the gates reject every trainer: no model.onnx; the failed
    candidates are kept as evidence under candidates/."""
    config = TrainConfig(
        trainers=ALL_CANDIDATES,
        trainer_params={name: {"preset": "tiny"} for name in ALL_CANDIDATES},
        walk_forward_folds=0,
    )
    (tmp_path / "model.onnx").write_bytes(b"stale model from an earlier run")
    result = train_symbol("BTCUSDT", bars(seed, 0.0), config, tmp_path)
    assert not result.passed
    assert result.chosen is None
    assert result.model_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "candidates",
        "metadata.json",
        "predictions.csv",
    ]
    kept = sorted(p.name for p in (tmp_path / "candidates").iterdir())
    assert kept == sorted(f"{name}.onnx" for name in ALL_CANDIDATES)
    meta = strict_json(tmp_path / "metadata.json")
    assert meta["passed"] is False
    assert meta["trainer"] is None
    assert meta["onnx"] is None
    assert [c["trainer"] for c in meta["candidates"]] == list(ALL_CANDIDATES)
    for candidate in meta["candidates"]:
        assert candidate["error"] is None, candidate["error"]
        failed = [g for g in candidate["gates"] if not g["passed"]]
        assert "beats_baseline_significant" in {g["gate"] for g in failed}
        assert failed[0]["reason"] in result.reason
    assert result.reason.startswith("no candidate passed the gates")


class ExplodingTrainer:
    """A trainer whose fit always fails, as a crashing backend would."""

    name = "exploding"

    def fit(self, data: Dataset, monitor, seed: int):
        raise RuntimeError("backend crashed")


def test_failing_candidate_is_recorded_and_others_proceed(tmp_path, monkeypatch):
    """A candidate that raises is recorded with its error; the next one is trained and chosen."""
    table = {**trainers.table.TRAINERS, "exploding": f"{__name__}:ExplodingTrainer"}
    monkeypatch.setattr(trainers.table, "TRAINERS", table)
    config = TrainConfig(
        trainers=("exploding", "xgboost"), trainer_params=XGB.trainer_params, walk_forward_folds=0
    )
    result = train_symbol("BTCUSDT", bars(1, 1.0), config, tmp_path)
    assert result.passed
    assert result.chosen == "xgboost"
    broken, good = result.metadata.to_dict()["candidates"]
    assert broken["error"] == {
        "stage": "fit",
        "type": "RuntimeError",
        "message": "backend crashed",
    }
    assert broken["passed"] is False
    assert broken["metrics"] is None
    assert good["error"] is None
    # The broken candidate left no model file to keep.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metadata.json",
        "model.onnx",
        "predictions.csv",
    ]


class AbortingMonitor:
    """Aborts at step 2 with a warning, as a divergence monitor would."""

    def __init__(self) -> None:
        self._warnings: list[MonitorWarning] = []

    def on_step(self, step, train_loss, val_loss, extra=None):
        if step == 2:
            self._warnings.append(MonitorWarning("diverged", step, "loss exploded", math.inf))
            return Action.ABORT
        return Action.CONTINUE

    @property
    def warnings(self):
        return tuple(self._warnings)


def test_monitor_abort_fails_the_candidate_with_its_warnings(tmp_path):
    """An aborted candidate is recorded with TrainingAborted and the monitor's warnings."""
    result = train_symbol("BTCUSDT", bars(1, 1.0), XGB, tmp_path, monitor_factory=AbortingMonitor)
    assert not result.passed
    (candidate,) = result.metadata.to_dict()["candidates"]
    assert candidate["error"]["type"] == "TrainingAborted"
    assert "loss exploded" in candidate["error"]["message"]
    assert candidate["warnings"] == [
        {"kind": "diverged", "step": 2, "message": "loss exploded", "value": None}
    ]
    strict_json(tmp_path / "metadata.json")


def test_a_price_the_features_cannot_represent_costs_its_rows_not_the_run(tmp_path):
    """A stored 1e300 bar once failed every retrain ('features have 187 non-finite values');
    now its rows are left out, counted in metadata.data, and the run trains and exports."""
    clean = bars(2, 1.0, n=1200)
    cols = {name: getattr(clean, name).copy() for name in ("open", "high", "low", "close")}
    for col in cols.values():
        col[600] = 1e300
    dirty = type(clean)(clean.ts, **cols, volume=clean.volume)
    result = train_symbol("BTCUSDT", dirty, XGB, tmp_path / "out")
    data = result.metadata.data
    assert data.excluded_rows > 0 and data.excluded_first_ts is not None
    assert clean.ts[600] <= data.excluded_first_ts <= clean.ts[600 + FEATURE_SPEC.lookback]
    assert data.n_rows == len(training_matrix(clean)) - data.excluded_rows
    assert strict_json(tmp_path / "out" / "metadata.json")["data"]["excluded_rows"] == (
        data.excluded_rows
    )
    assert all(c.error is None for c in result.metadata.candidates)


def test_too_few_bars_raises(tmp_path):
    """Bars too few for a split raise InsufficientDataError and write nothing."""
    with pytest.raises(InsufficientDataError):
        train_symbol("BTCUSDT", bars(1, 1.0, n=200), XGB, tmp_path / "out")
    assert not (tmp_path / "out").exists()
