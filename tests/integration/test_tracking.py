"""Experiment tracking (optional extra): every training run of the daemon becomes an MLflow
run with params, metrics, artifacts and gate verdicts; tracking trouble never fails a job.

The MLflow tests need the ``mlflow`` extra (mlflow-skinny) and are skipped, saying so,
without it. They use a local file store, which MLflow 3 serves only with
MLFLOW_ALLOW_FILE_STORE=true.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from daemon.settings import Settings
from daemon.training.tracking import TrackedRun, run_fields
from monitors.gates import GateVerdict
from tests.conftest import Topics
from tests.support.helpers import wait_for
from tests.support.metadata import sample_metadata
from trainers.data import BarRecord
from trainers.metadata import (
    BaselineRecord,
    CandidateError,
    CandidateRecord,
    DataRange,
    ModelMetadata,
    SplitMetrics,
)
from trainers.synthetic import MarketSpec, generate_bars

REPO = Path(__file__).resolve().parents[2]
N_BARS = 3000  # GOOD (seed 0, planted signal) passes every gate at this size


def _metadata() -> ModelMetadata:
    """A run whose xgboost candidate was chosen and whose lstm candidate failed."""
    split = {"accuracy": 0.61, "log_loss": 0.66}
    metrics = SplitMetrics(train=split, val=split, test={"accuracy": 0.6, "log_loss": None})
    xgb = CandidateRecord(
        trainer="xgboost",
        params={"preset": "lightweight", "max_depth": 3},
        metrics=metrics,
        score=0.59,
        passed=True,
        gates=(
            GateVerdict("train_val_gap", True, 0.01, 0.2, "ok"),
            GateVerdict("beats_baseline", True, 0.6, 0.5, "ok"),
        ),
    )
    lstm = CandidateRecord(
        trainer="lstm",
        params={"preset": "tiny"},
        error=CandidateError(stage="fit", type="ValueError", message="boom"),
    )
    naive = {"accuracy": 0.5}
    return sample_metadata("BTCUSDT", trainer="xgboost", seed=7).model_copy(
        update={
            "reason": "chose xgboost (score 0.610): every gate passed",
            "config": {"trainers": ["xgboost", "lstm"]},
            "config_sha256": "ab" * 32,
            "data": DataRange(n_bars=3000, first_ts=1, last_ts=2, n_rows=2900, sha256="cd" * 32),
            "metrics": metrics,
            "baseline": BaselineRecord(
                trainer="naive", params={}, metrics=SplitMetrics(train=naive, val=naive, test=naive)
            ),
            "candidates": (xgb, lstm),
        }
    )


def test_run_fields_carry_params_metrics_and_gate_verdicts() -> None:
    """Params hold the config hash and each candidate's params, metrics the chosen model's and
    every candidate's (prefixed) finite values, tags the outcome and each gate verdict."""
    run = TrackedRun("BTCUSDT", "r1", "champion", 12.5, _metadata(), version="v1")
    params, metrics, tags = run_fields(run)
    assert params["config_sha256"] == "ab" * 32
    assert params["trainers"] == "xgboost,lstm"
    assert params["xgboost.max_depth"] == "3"
    assert params["lstm.preset"] == "tiny"
    assert metrics["test_accuracy"] == 0.6
    assert metrics["train_log_loss"] == 0.66
    assert "test_log_loss" not in metrics  # None is not a metric
    assert metrics["xgboost.test_accuracy"] == 0.6
    assert metrics["xgboost.score"] == 0.59
    assert metrics["naive.test_accuracy"] == 0.5
    assert metrics["duration_seconds"] == 12.5
    assert tags["gate.xgboost.train_val_gap"] == "pass"
    assert tags["gate.xgboost.beats_baseline"] == "pass"
    assert "boom" in tags["error.lstm"]
    assert (tags["ctd.outcome"], tags["ctd.version"], tags["ctd.trainer"]) == (
        "champion",
        "v1",
        "xgboost",
    )
    assert "ctd.error" not in tags


def test_run_fields_of_a_failed_job_are_its_error() -> None:
    """A job that failed before metadata existed still yields a run: outcome and error."""
    params, metrics, tags = run_fields(
        TrackedRun("BTCUSDT", "r2", "failed", 1.0, None, error="worker process died")
    )
    assert params == {"symbol": "BTCUSDT"}
    assert metrics == {"duration_seconds": 1.0}
    assert tags["ctd.outcome"] == "failed" and tags["ctd.error"] == "worker process died"


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CTD_")}, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_tracking_uri_mlflow_is_never_imported(tmp_path: Path) -> None:
    """With CTD_MLFLOW_TRACKING_URI unset the daemon has no tracker and never imports mlflow."""
    code = (
        "import sys\n"
        "from daemon.app import Daemon\n"
        "from daemon.cli.main import main\n"
        "from daemon.settings import load_settings\n"
        "d = Daemon(load_settings(), bootstrap_servers='127.0.0.1:1')\n"
        "assert d.tracking is None\n"
        "main(['status'])\n"
        "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
    )
    proc = _python(code, {"CTD_DATA_DIR": str(tmp_path / "data")})
    assert proc.returncode == 0, proc.stderr


def test_tracking_uri_without_mlflow_is_a_clear_start_up_error(tmp_path: Path) -> None:
    """`ctd run` with CTD_MLFLOW_TRACKING_URI set but mlflow not importable exits 1 naming the
    setting and the extra to install, before touching Kafka."""
    code = (
        "import sys\n"
        "sys.modules['mlflow'] = None  # what an environment without the extra looks like\n"
        "from daemon.cli.main import main\n"
        "sys.exit(main(['run']))\n"
    )
    env = {
        "CTD_DATA_DIR": str(tmp_path / "data"),
        "CTD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "CTD_MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
        "CTD_HTTP_PORT": "0",
        "CTD_LOG_FORMAT": "json",
    }
    proc = _python(code, env)
    assert proc.returncode == 1, proc.stderr
    assert "CTD_MLFLOW_TRACKING_URI is set but mlflow is not installed" in proc.stderr
    assert "ctd[mlflow]" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- with mlflow ------------------------------------------------------------------------
@pytest.fixture
def mlflow(monkeypatch: pytest.MonkeyPatch) -> Any:
    module = pytest.importorskip(
        "mlflow", reason="the mlflow extra is not installed (pip install 'ctd[mlflow]')"
    )
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return module


def _produce(bootstrap: str, topic: str, symbol: str, n: int) -> None:
    bars = generate_bars(MarketSpec(symbol=symbol, seed=0, signal_strength=1.0), n)
    records = [
        BarRecord(symbol, int(t), float(o), float(h), float(lo), float(c), float(v))
        for t, o, h, lo, c, v in zip(
            bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume, strict=True
        )
    ]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    for i in range(0, n, 500):
        producer.send(topic, key=symbol.encode(), value=encode_batch(symbol, records[i : i + 500]))
    producer.flush(timeout=30)
    producer.close(timeout=5)


@pytest.fixture
def trained(settings_factory: Callable[..., Settings], topics: Topics) -> Callable[[str], Daemon]:
    """Run a daemon with the given tracking URI until it has trained GOOD once (xgboost);
    return it stopped."""

    def run(uri: str) -> Daemon:
        settings = settings_factory(
            trainers=("xgboost",),
            min_bars=N_BARS,
            retrain_every_bars=100_000,
            walk_forward_folds=0,
            http_port=0,
            mlflow_tracking_uri=uri,
            mlflow_experiment="ctd-test",
        )
        assert settings.kafka_bootstrap_servers is not None
        daemon = Daemon(settings, bootstrap_servers=settings.kafka_bootstrap_servers).start()
        try:
            _produce(settings.kafka_bootstrap_servers, topics.bars, "GOOD", N_BARS)
            wait_for(
                lambda: daemon.metrics.registry.get_sample_value(
                    "ctd_training_runs_total", {"symbol": "GOOD", "outcome": "champion"}
                ),
                timeout=90,
                interval=0.1,
                message="GOOD trained into a champion",
            )
        finally:
            daemon.stop(30)  # lets tracking log the queued run before returning
        return daemon

    return run


@pytest.mark.integration
def test_every_training_run_is_an_mlflow_run(mlflow: Any, trained, tmp_path: Path) -> None:
    """The daemon's training run is an MLflow run named symbol/run_id with the config hash and
    trainer params, per-split metrics, model.onnx and metadata.json identical to the
    registry's, and the gate verdicts and outcome as tags."""
    uri = (tmp_path / "mlruns").as_uri()
    daemon = trained(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ctd-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    version = daemon.registry.slots("GOOD").champion
    meta = daemon.registry.metadata("GOOD", version).to_dict()
    assert run.info.run_name.startswith("GOOD/")
    assert run.info.status == "FINISHED"
    assert run.data.params["config_sha256"] == meta["config_sha256"]
    assert run.data.params["xgboost.preset"] == "lightweight"
    for split in ("train", "val", "test"):
        assert run.data.metrics[f"{split}_accuracy"] == pytest.approx(
            meta["metrics"][split]["accuracy"]
        )
    assert "xgboost.test_accuracy" in run.data.metrics
    assert "naive.test_accuracy" in run.data.metrics
    tags = run.data.tags
    assert (tags["ctd.outcome"], tags["ctd.version"], tags["ctd.symbol"]) == (
        "champion",
        version,
        "GOOD",
    )
    gates = {k: v for k, v in tags.items() if k.startswith("gate.xgboost.")}
    assert gates and set(gates.values()) == {"pass"}
    assert {g["gate"] for g in meta["gates"]} == {k.split(".", 2)[2] for k in gates}
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"model.onnx", "metadata.json"}
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    model = daemon.registry.model_path("GOOD", version)
    assert (local / "model.onnx").read_bytes() == model.read_bytes()
    assert json.loads((local / "metadata.json").read_text()) == meta
    assert daemon.tracking is not None
    assert (
        daemon.metrics.registry.get_sample_value("ctd_tracking_errors_total", {"stage": "log"}) == 0
    )


@pytest.mark.integration
def test_an_unreachable_tracking_server_never_fails_the_job(
    mlflow: Any, trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the tracking server down the job still becomes the champion; the tracking failure
    is counted in ctd_tracking_errors_total."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    daemon = trained(uri)
    assert daemon.registry.slots("GOOD").champion is not None
    assert (
        daemon.metrics.registry.get_sample_value(
            "ctd_training_runs_total", {"symbol": "GOOD", "outcome": "champion"}
        )
        == 1
    )
    assert (
        daemon.metrics.registry.get_sample_value("ctd_tracking_errors_total", {"stage": "log"}) == 1
    )
