"""Issue-4 acceptance on real training runs: divergence stopped, overfitting rejected,
healthy runs silent."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.config import TrainConfig
from trainers.pipeline import train_symbol
from trainers.synthetic import MarketSpec, generate_bars

pytestmark = pytest.mark.slow


def test_divergent_learning_rate_is_stopped_and_kept_out_of_the_registry(tmp_path: Path) -> None:
    """A TCN with a learning rate ~300x its preset's is stopped within a few epochs by the
    divergence monitor; the warning (with its step) is in metadata and no model is written."""
    bars = generate_bars(MarketSpec(symbol="DIV", seed=3, signal_strength=1.0), 3000)
    config = TrainConfig(
        trainers=("tcn",),
        trainer_params={"tcn": {"preset": "tiny", "lr": 1.0, "grad_clip": 1e9}},
        walk_forward_folds=0,
    )
    result = train_symbol("DIV", bars, config, tmp_path)
    cand = result.metadata.to_dict()["candidates"][0]
    kinds = {w["kind"]: w["step"] for w in cand["warnings"]}
    assert "divergence" in kinds or "non_finite" in kinds
    assert min(kinds.get("divergence", 99), kinds.get("non_finite", 99)) <= 5
    assert cand["params"]["epochs_run"] <= 6  # preset allows 15
    health = next(g for g in cand["gates"] if g["gate"] == "training_health")
    assert health["passed"] is False
    assert result.passed is False and not (tmp_path / "model.onnx").exists()


def test_overfitting_configuration_is_flagged_and_rejected_with_the_gap(tmp_path: Path) -> None:
    """Deep unregularised trees on a few hundred bars warn 'overfitting' and the gate rejects
    the candidate naming the train-val gap."""
    bars = generate_bars(MarketSpec(symbol="FIT", seed=3, signal_strength=1.0), 700)
    params = {
        "max_depth": 10,
        "n_estimators": 400,
        "min_child_weight": 0.0,
        "reg_lambda": 0.0,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "learning_rate": 0.3,
        "early_stopping_rounds": 400,
    }
    config = TrainConfig(
        trainers=("xgboost",), trainer_params={"xgboost": params}, walk_forward_folds=0
    )
    result = train_symbol("FIT", bars, config, tmp_path)
    cand = result.metadata.to_dict()["candidates"][0]
    assert "overfitting" in {w["kind"] for w in cand["warnings"]}
    gap = next(g for g in cand["gates"] if g["gate"] == "train_val_gap")
    assert gap["passed"] is False and "train-val gap" in gap["reason"]
    assert "train-val gap" in result.reason
    assert result.passed is False


@pytest.mark.parametrize("trainer", ["xgboost", "mlp", "tcn", "lstm"])
def test_healthy_runs_raise_no_warning(tmp_path: Path, trainer: str) -> None:
    """Ten seeded planted-signal symbols train with default monitors and raise zero warnings."""
    preset = {} if trainer == "xgboost" else {trainer: {"preset": "tiny"}}
    config = TrainConfig(trainers=(trainer,), trainer_params=preset, walk_forward_folds=0)
    alarms = []
    for seed in range(10):
        bars = generate_bars(MarketSpec(symbol=f"H{seed}", seed=seed, signal_strength=1.0), 3000)
        result = train_symbol(f"H{seed}", bars, config, tmp_path / str(seed))
        alarms += [
            (seed, w["kind"])
            for c in result.metadata.to_dict()["candidates"]
            for w in c["warnings"]
        ]
    assert alarms == []
