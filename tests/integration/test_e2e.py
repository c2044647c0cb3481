"""End to end against the real local broker: Kafka bars in, gated ONNX champions out.

One daemon serves every test in this module (start-up and training are the
slow part); each test asserts a different promise of the spine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from daemon.settings import Settings
from daemon.training.worker import JobSpec, run_job
from tests.support.foreign import foreign_read
from tests.support.helpers import ledger, own_settings, read_topic, wait_for
from trainers.data import Bars, bar_records
from trainers.dataset import sequence_windows
from trainers.features import training_matrix
from trainers.metrics import classification_metrics
from trainers.onnx_io import OnnxScorer
from trainers.splits import chronological_split
from trainers.synthetic import MarketSpec, generate_bars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Seeds whose planted-signal series pass every gate at this size (deterministic data).
GOOD_SEEDS = {"ALPHA": 0, "BETA": 3, "GAMMA": 2}
GOOD = tuple(GOOD_SEEDS)
N_BARS = 3000
BAD_MESSAGES: list[tuple[bytes | None, bytes]] = [
    (b"ALPHA", b"{not json"),
    (b"ALPHA", json.dumps({"symbol": "ALPHA", "ts": "2025-01-01T00:00:00Z"}).encode()),
    (
        b"ALPHA",
        b'{"symbol":"ALPHA","ts":"2025-01-01T00:00:00Z","open":NaN,"high":1,"low":1,"close":1,"volume":1}',
    ),
    (
        b"BETA",
        json.dumps(
            {"symbol": "BETA", "ts": 1, "open": -1, "high": 1, "low": 1, "close": 1, "volume": 1}
        ).encode(),
    ),
    (
        b"BETA",
        json.dumps(
            {"symbol": "BETA", "ts": 1, "open": 2, "high": 1, "low": 3, "close": 2, "volume": 1}
        ).encode(),
    ),
    (
        b"../x",
        json.dumps(
            {"symbol": "../x", "ts": 1, "open": 1, "high": 1, "low": 1, "close": 1, "volume": 1}
        ).encode(),
    ),
]


def _crash_or_raise(spec: JobSpec, conn: Connection) -> None:
    """Worker target: CRASH dies hard, RAISE fails inside the real pipeline, others train."""
    if spec.symbol == "CRASH":
        os._exit(3)
    if spec.symbol == "RAISE":
        spec = dataclasses.replace(spec, window_bars=60)  # too few rows for a split
    run_job(spec, conn)


@dataclasses.dataclass
class Running:
    daemon: Daemon
    settings: Settings
    bootstrap: str
    bars: dict[str, Bars]


@pytest.fixture(scope="module")
def running(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    settings = own_settings(
        broker.bootstrap_servers,
        data_dir,
        "e2e-",
        min_bars=N_BARS,  # train once, on exactly the produced bars
        retrain_every_bars=100_000,
        train_workers=2,
        trainers=("xgboost",),
    )
    daemon = Daemon(
        settings,
        bootstrap_servers=broker.bootstrap_servers,
        metrics_registry=CollectorRegistry(),
        job_target=_crash_or_raise,
    ).start()
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, acks="all", enable_idempotence=False
    )
    bars = {
        s: generate_bars(MarketSpec(symbol=s, seed=seed, signal_strength=1.0), N_BARS)
        for s, seed in (*GOOD_SEEDS.items(), ("CRASH", 9), ("RAISE", 9))
    }
    for key, value in BAD_MESSAGES[:3]:
        producer.send(settings.topic_bars, key=key, value=value)
    for symbol, b in bars.items():
        records = bar_records(symbol, b)
        for i in range(0, len(records), 250):
            producer.send(
                settings.topic_bars,
                key=symbol.encode(),
                value=encode_batch(symbol, records[i : i + 250]),
            )
    for key, value in BAD_MESSAGES[3:]:
        producer.send(settings.topic_bars, key=key, value=value)
    producer.flush()
    producer.close()
    try:
        wait_for(
            lambda: (
                all(daemon.registry.slots(s).champion for s in GOOD)
                and all(
                    any(e["event"] == "training_failed" for e in ledger(daemon.registry, s))
                    for s in ("CRASH", "RAISE")
                )
            ),
            timeout=240,
            interval=0.5,
        )
        yield Running(daemon, settings, broker.bootstrap_servers, bars)
    finally:
        daemon.stop(10)


def _read_topic(running: Running, topic: str, at_least: int) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in read_topic(running.bootstrap, topic, at_least, timeout=30)]


def _scrape(daemon: Daemon) -> str:
    assert daemon.http is not None
    with urllib.request.urlopen(f"{daemon.http.url}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    raise AssertionError(f"no sample {name}{{{want}}} in /metrics")


def test_each_symbol_gets_a_champion_whose_onnx_reproduces_its_test_metrics(
    running: Running,
) -> None:
    """model.onnx in onnxruntime reproduces the test-split metrics recorded in metadata.json."""
    reg = running.daemon.registry
    for symbol in GOOD:
        version = reg.slots(symbol).champion
        assert version is not None
        meta = reg.metadata(symbol, version).to_dict()
        assert meta["passed"] is True and meta["trainer"] == "xgboost"
        all_bars = running.bars[symbol]
        mask = (all_bars.ts >= meta["data"]["first_ts"]) & (all_bars.ts <= meta["data"]["last_ts"])
        trained_on = Bars(
            *(
                col[mask]
                for col in (
                    all_bars.ts,
                    all_bars.open,
                    all_bars.high,
                    all_bars.low,
                    all_bars.close,
                    all_bars.volume,
                )
            )
        )
        assert len(trained_on) == meta["data"]["n_bars"]
        tm = training_matrix(trained_on)
        split = chronological_split(
            len(tm.y),
            val_fraction=running.settings.val_fraction,
            test_fraction=running.settings.test_fraction,
            embargo=meta["split"]["embargo"],
        )
        assert split.to_dict().items() <= meta["split"].items()
        scorer = OnnxScorer(reg.model_path(symbol, version))
        features = tm.X.astype(np.float32)
        window = meta["onnx"]["window"]
        rows = (
            features[split.test] if window == 1 else sequence_windows(features, split.test, window)
        )
        proba = scorer.predict_proba(rows)
        again = classification_metrics(tm.y[split.test], proba, tm.fwd_returns[split.test])
        for key in ("accuracy", "roc_auc", "log_loss", "f1"):
            assert again[key] == pytest.approx(meta["metrics"]["test"][key], abs=1e-6), (
                symbol,
                key,
            )
        assert meta["metrics"]["test"]["accuracy"] > meta["baseline"]["metrics"]["test"]["accuracy"]


def test_metrics_endpoint_counts_ingest_training_and_registry(running: Running) -> None:
    """/metrics over HTTP shows exact ingest, DLQ, training and registry counts."""
    text = _scrape(running.daemon)
    for symbol in GOOD:
        assert _sample(text, "ctd_ingest_bars_total", symbol=symbol) == N_BARS
        assert _sample(text, "ctd_store_new_bars_total", symbol=symbol) == N_BARS
        assert _sample(text, "ctd_training_runs_total", symbol=symbol, outcome="champion") == 1
        assert _sample(text, "ctd_champion_bootstraps_total", symbol=symbol) == 1
        assert _sample(text, "ctd_registry_versions_total", symbol=symbol) == 1
        assert _sample(text, "ctd_model_age_seconds", symbol=symbol, slot="champion") >= 0
    assert _sample(text, "ctd_dlq_messages_total", kind="message") == len(BAD_MESSAGES)
    assert _sample(text, "ctd_training_runs_total", symbol="CRASH", outcome="failed") >= 1
    assert _sample(text, "ctd_training_runs_total", symbol="RAISE", outcome="failed") >= 1
    assert _sample(text, "ctd_kafka_connected") == 1
    assert (
        _sample(
            text,
            "ctd_gate_verdicts_total",
            trainer="xgboost",
            gate="beats_baseline",
            outcome="pass",
        )
        >= 3
    )


def test_health_and_readiness(running: Running) -> None:
    """/healthz answers ok and /readyz is ready with every check true."""
    assert running.daemon.http is not None
    url = running.daemon.http.url
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
        assert json.load(resp) == {"status": "ok"}
    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
        body = json.load(resp)
    assert body["ready"] is True and all(body["checks"].values())


def test_failed_runs_are_recorded_and_do_not_stop_other_symbols(running: Running) -> None:
    """A worker death and a training exception are failed runs in history; others got champions."""
    reg = running.daemon.registry
    crash = [e for e in ledger(reg, "CRASH") if e["event"] == "training_failed"]
    assert "exit code 3" in crash[0]["reason"]
    raised = [e for e in ledger(reg, "RAISE") if e["event"] == "training_failed"]
    assert "InsufficientDataError" in raised[0]["reason"]
    assert reg.slots("CRASH").champion is None and reg.slots("RAISE").champion is None
    assert all(reg.slots(s).champion for s in GOOD)


def test_invalid_messages_reach_the_dlq_with_reasons_and_nothing_escapes_data_dir(
    running: Running,
) -> None:
    """Every bad message is on the DLQ with a reason; nothing was written outside CTD_DATA_DIR."""
    seen = _read_topic(running, running.settings.topic_dlq, len(BAD_MESSAGES))
    assert len(seen) == len(BAD_MESSAGES)
    reasons = " | ".join(d["reason"] for d in seen)
    assert "invalid symbol" in reasons
    for d in seen:
        assert d["reason"] and d["topic"] == running.settings.topic_bars
    data_root = running.settings.data_dir.parent
    assert sorted(p.name for p in data_root.iterdir()) == ["data"]
    assert not Path("x").exists()


def test_promotions_topic_carries_champion_bootstrapped_events(running: Running) -> None:
    """Each first champion is announced on the promotions topic with the DESIGN.md fields."""
    events = _read_topic(running, running.settings.topic_promotions, len(GOOD))
    boot = {e["symbol"]: e for e in events if e["event"] == "champion_bootstrapped"}
    assert set(boot) == set(GOOD)
    for symbol, e in boot.items():
        assert e["from_version"] is None
        assert e["to_version"] == running.daemon.registry.slots(symbol).champion
        assert {"evidence", "ts"} <= set(e)


def test_promotions_and_dlq_are_readable_by_a_foreign_client(running: Running) -> None:
    """confluent-kafka (librdkafka) reads ctd.promotions and the DLQ as ctd wrote them
    (compressed with CTD_KAFKA_COMPRESSION_TYPE): same records as kafka-python reads."""
    for topic, count in (
        (running.settings.topic_promotions, len(GOOD)),
        (running.settings.topic_dlq, len(BAD_MESSAGES)),
    ):
        ours = _read_topic(running, topic, count)
        theirs = foreign_read(running.bootstrap, topic, count, timeout=30)
        assert sorted(json.dumps(json.loads(m.value()), sort_keys=True) for m in theirs) == sorted(
            json.dumps(e, sort_keys=True) for e in ours
        )
    promotions = foreign_read(running.bootstrap, running.settings.topic_promotions, len(GOOD))
    boot = [json.loads(m.value()) for m in promotions]
    assert {e["symbol"] for e in boot if e["event"] == "champion_bootstrapped"} == set(GOOD)
    assert all(m.key() == json.loads(m.value())["symbol"].encode() for m in promotions)
