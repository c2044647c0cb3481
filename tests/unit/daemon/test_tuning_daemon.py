"""The daemon's side of tuning: settings, the tuned-params store, the scheduled round."""

from __future__ import annotations

import json
import signal
import sys
import time
from multiprocessing import Pipe
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.errors import SettingsError
from daemon.metrics import Metrics
from daemon.schedules import Schedules
from daemon.settings import load_settings
from daemon.store.bars import BarStore
from daemon.training.tuned import TunedParams, TunedStore
from daemon.training.tuner import ScheduledTuning, TuneReply, TuneSpec, run_tune
from trainers.config import TrainConfig
from trainers.data import bar_records
from trainers.synthetic import MarketSpec, generate_bars


def _problems(**overrides: object) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    return str(caught.value)


def test_tune_settings_are_validated_at_start_up(monkeypatch):
    """A bad cron, an untunable or unconfigured trainer, or no optuna fail naming the setting."""
    assert "CTD_TUNE_CRON" in _problems(tune_cron="every night")
    bad = _problems(trainers=("xgboost", "naive"), tune_trainers=("naive",))
    assert "CTD_TUNE_TRAINERS" in bad and "nothing to tune" in bad
    assert "CTD_TUNE_TRAINERS" in _problems(trainers=("xgboost",), tune_trainers=("tcn",))
    assert "CTD_TUNE_CRON" in _problems(trainers=("naive",), tune_cron="0 3 * * *")
    assert "CTD_TUNE_BUDGET_SECONDS" in _problems(tune_budget_seconds=0)
    monkeypatch.setitem(sys.modules, "optuna", None)
    missing = _problems(tune_cron="0 3 * * *")
    assert "CTD_TUNE_CRON" in missing and "pip install 'ctd[tune]'" in missing
    load_settings(tune_trainers=None)  # without a schedule, optuna is not needed


def test_scheduled_tuning_defaults_to_the_tunable_configured_trainers(monkeypatch):
    """Unset, tune_trainers is every configured trainer with a search space; a list parses."""
    s = load_settings(trainers=("xgboost", "naive", "tcn"), tune_cron="0 3 * * *")
    assert s.tune_trainer_names == ("xgboost", "tcn")
    monkeypatch.setenv("CTD_TRAINERS", "xgboost,tcn")
    monkeypatch.setenv("CTD_TUNE_TRAINERS", "tcn")
    assert load_settings().tune_trainer_names == ("tcn",)


def test_the_cron_tune_job_is_scheduled_only_when_set():
    """Schedules adds "cron-tune" for tune_cron, never otherwise."""
    calls = []
    for cron, expected in ((None, False), ("0 3 * * *", True)):
        s = load_settings(tune_cron=cron, trainers=("xgboost",))
        jobs = Schedules(
            s, check=calls.clear, retrain_all=calls.clear, recheck=calls.clear, tune_all=calls.clear
        )
        try:
            assert (jobs.job("cron-tune") is not None) is expected
        finally:
            jobs.stop()


def _record(**changes: object) -> TunedParams:
    fields: dict[str, object] = {
        "trainer": "xgboost",
        "params": {"learning_rate": 0.2, "max_depth": 3},
        "base": {"preset": "tiny"},
        "value": 0.65,
        "objective": "mean_val_log_loss",
        "trials_completed": 4,
        "trials_pruned": 1,
        "study_trials": 5,
        "study": "AAPL.xgboost.abc",
        "finished_at": "2026-12-07T00:00:00Z",
    }
    return TunedParams.model_validate({**fields, **changes})


def test_tuned_params_merge_only_onto_the_base_they_were_tuned_on(tmp_path):
    """Stored params join the trainer's keywords and are recorded; a changed base ignores them."""
    store = TunedStore(load_settings(data_dir=tmp_path).paths)
    config = TrainConfig(trainers=("xgboost",), trainer_params={"xgboost": {"preset": "tiny"}})
    assert store.apply(config, "AAPL") is config  # nothing tuned yet
    path = store.save("AAPL", _record())
    store.save("AAPL", _record(trainer="tcn", base={}, params={"lr": 0.001}))
    assert set(json.loads(path.read_text())["trainers"]) == {"xgboost", "tcn"}
    tuned = store.apply(config, "AAPL")
    assert tuned.trainer_params["xgboost"] == {
        "preset": "tiny",
        "learning_rate": 0.2,
        "max_depth": 3,
    }
    assert "tcn" not in tuned.trainer_params  # not a candidate of this config
    assert tuned.to_dict()["tuned"] == {"xgboost": _record().provenance()}
    assert "tuned" not in config.to_dict()  # an untuned config keeps its old hash
    pinned = TrainConfig(trainers=("xgboost",), trainer_params={"xgboost": {"preset": "deep"}})
    assert store.apply(pinned, "AAPL") is pinned
    path.write_text("{not json")
    assert store.load("AAPL") == {}  # a damaged file never stops a retrain


def _fake_tune(spec: TuneSpec, conn) -> None:
    """Records when it ran and for which symbol, then replies "tuned"."""
    log = spec.data_dir / "calls.jsonl"
    with log.open("a") as f:
        f.write(json.dumps({"symbol": spec.symbol, "start": time.time()}) + "\n")
    time.sleep(0.05)  # a measurable run, so overlapping runs would show
    with log.open("a") as f:
        f.write(json.dumps({"symbol": spec.symbol, "end": time.time()}) + "\n")
    conn.send(TuneReply("tuned", 0.6, 3, 1))
    conn.close()


def test_a_scheduled_round_tunes_served_symbols_one_at_a_time(tmp_path):
    """Each served symbol with enough bars gets one child run per trainer, never two at once."""
    s = load_settings(data_dir=tmp_path, trainers=("xgboost",), tune_cron="0 3 * * *", min_bars=500)
    metrics = Metrics(CollectorRegistry(), version="test")
    counts = {"AAA": 900, "BBB": 10, "CCC": 900}
    tuning = ScheduledTuning(
        s,
        served=lambda: set(counts),
        bar_count=counts.__getitem__,
        metrics=metrics,
        target=_fake_tune,
        start_method="fork",
    )
    tuning.run_all()
    lines = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [(line["symbol"], "start" in line) for line in lines] == [
        ("AAA", True),
        ("AAA", False),
        ("CCC", True),
        ("CCC", False),
    ]
    assert lines[1]["end"] <= lines[2]["start"]
    value = metrics.registry.get_sample_value(
        "ctd_tuning_runs_total", {"trainer": "xgboost", "outcome": "tuned"}
    )
    assert value == 2


def test_a_tuning_child_stores_the_symbols_best_params(tmp_path, monkeypatch):
    """run_tune loads the symbol's bars read-only, tunes within budget and stores the result."""
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # in-process here: keep pytest's
    s = load_settings(data_dir=tmp_path, trainers=("xgboost",))
    bars = generate_bars(MarketSpec("AAPL", 3, bar_seconds=86_400), 1000)
    store = BarStore(s.paths.bars)
    store.upsert(bar_records("AAPL", bars))
    store.close()
    config = TrainConfig(
        trainers=("xgboost",), trainer_params={"xgboost": {"preset": "tiny"}}, walk_forward_folds=2
    )
    spec = TuneSpec("AAPL", "xgboost", s.paths.bars, 1000, config, 2, 30.0, tmp_path, "WARNING")
    parent, child = Pipe(duplex=False)
    run_tune(spec, child)
    reply = parent.recv()
    assert reply.outcome == "tuned", reply.error
    assert reply.completed + reply.pruned == 2
    record = TunedStore(s.paths).load("AAPL")["xgboost"]
    assert record.value == pytest.approx(reply.value)
    assert Path(s.paths.studies).is_file()
