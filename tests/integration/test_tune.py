"""`ctd tune` end to end: a CSV of 3,000 bars, real optuna and xgboost, then `ctd train`.

Real files under tmp_path, the real CLI entry point, the SQLite study and the registry.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest

from daemon.cli.main import main
from daemon.settings import load_settings
from daemon.training.tuned import TunedStore
from deploy.registry import Registry
from tests.integration.test_offline import write_csv
from trainers.synthetic import MarketSpec, generate_bars

N_BARS = 3000
TRIALS = 20
TIMEOUT = 60.0


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """The CLI's settings: one xgboost candidate on its tiny preset (the operator's base)."""
    data = tmp_path / "data"
    monkeypatch.setenv("CTD_DATA_DIR", str(data))
    monkeypatch.setenv("CTD_TRAINERS", "xgboost")
    monkeypatch.setenv("CTD_TRAINER_PARAMS", json.dumps({"xgboost": {"preset": "tiny"}}))
    monkeypatch.setenv("CTD_LOG_FORMAT", "json")
    return data


def test_tune_finishes_in_its_timeout_and_the_next_retrain_uses_the_params(env, tmp_path, capsys):
    """20 trials on 3,000 bars end within --timeout; `ctd train` then trains with the tuned
    params, and its metadata says where they came from."""
    bars = generate_bars(MarketSpec("AAPL", 5, signal_strength=1.0, bar_seconds=86_400), N_BARS)
    csv = write_csv(tmp_path / "aapl.csv", bars)
    tune_args = ["--csv", str(csv), "--symbol", "AAPL", "--trainer", "xgboost"]
    started = time.monotonic()
    code = main(["tune", *tune_args, "--trials", str(TRIALS), "--timeout", str(TIMEOUT)])
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 0, out
    assert elapsed < TIMEOUT
    assert "saved:" in out and "pruned" in out

    settings = load_settings()
    record = TunedStore(settings.paths).load("AAPL")["xgboost"]
    assert record.trials_completed + record.trials_pruned == TRIALS
    assert record.trials_pruned > 0  # the median pruner, fed by xgboost's rounds, cut some
    assert record.base == {"preset": "tiny"}
    assert set(record.params) >= {"learning_rate", "max_depth"}
    study = optuna.load_study(
        study_name=record.study, storage=f"sqlite:///{settings.paths.studies}"
    )
    assert len(study.trials) == TRIALS
    assert study.best_value == pytest.approx(record.value)

    assert main(["train", "--csv", str(csv), "--symbol", "AAPL"]) == 0
    trained = json.loads(capsys.readouterr().out)
    meta = Registry(settings.paths.registry).metadata("AAPL", trained["version"])
    candidate = next(c for c in meta.candidates if c.trainer == "xgboost")
    for name, value in record.params.items():
        assert candidate.params[name] == pytest.approx(value), name
    assert candidate.params["preset"] == "tiny"  # the operator's base still applies
    tuned = meta.config["tuned"]
    assert isinstance(tuned, dict)
    assert tuned["xgboost"]["study"] == record.study
    assert tuned["xgboost"]["value"] == pytest.approx(record.value)
    assert tuned["xgboost"]["finished_at"] == record.finished_at


def test_tune_rejects_bad_input_with_clear_messages(env, tmp_path, capsys):
    """Usage errors exit 2 naming the problem: nothing to tune, no bars, no symbol."""
    bars = generate_bars(MarketSpec("AAPL", 5, bar_seconds=86_400), 300)
    csv = write_csv(tmp_path / "aapl.csv", bars)
    assert main(["tune", "--csv", str(csv), "--symbol", "AAPL", "--trainer", "naive"]) == 2
    assert "nothing to tune" in capsys.readouterr().err
    assert main(["tune", "AAPL", "--trainer", "xgboost"]) == 2
    assert "no bar store" in capsys.readouterr().err
    assert main(["tune", "--csv", str(csv), "--trainer", "xgboost"]) == 2
    assert "--symbol" in capsys.readouterr().err
    assert main(["tune", "--csv", str(csv), "--symbol", "AAPL", "--trainer", "gbm"]) == 2
    assert "valid names" in capsys.readouterr().err
