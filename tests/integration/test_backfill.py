"""A backfill burst trains each symbol once (issue 16, item 1), against the real broker.

2,500 bars of each of three symbols arrive at once. Every ingest batch after a symbol
becomes due requests a retrain, so a request queues behind the symbol's first run; that run
starts once every bar is stored (``after_backfill_job``: a worker that starts late, the
case the issue saw), and the queued job would train on the very same bars. It is dropped
instead: one training per symbol in the ledger and in ``ctd_training_runs_total`` scraped over
HTTP, and the request that queued behind each run is in ``ctd_retrains_skipped_total``.
"""

from __future__ import annotations

import multiprocessing
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from tests.support.gated_worker import BACKFILL_FILE, after_backfill_job
from tests.support.helpers import ledger, own_settings, wait_for
from trainers.data import bar_records
from trainers.synthetic import MarketSpec, generate_bars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOLS = ("GOOG", "MSFT", "NVDA")
N_BARS = 2500
CHUNK = 25  # bars per message; 4 messages per poll: 25 ingest batches per symbol at least
RUN_EVENTS = {"champion_bootstrapped", "shadow_placed", "candidate_rejected", "training_failed"}


def _metrics(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics over HTTP: value by (sample name, sorted labels)."""
    with urllib.request.urlopen(f"{daemon.http.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **want: str
) -> float:
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name and want.items() <= dict(labels).items()
    )


def _warm_forkserver() -> None:
    """Start the workers' forkserver (it imports the training stack: seconds when cold) before
    the burst, as in a daemon that has trained before: each symbol's first job then starts as
    soon as the symbol is due, and the burst's later requests queue behind it."""
    process = multiprocessing.get_context("forkserver").Process(target=int)
    process.start()
    process.join(60)
    assert process.exitcode == 0


def _runs(daemon: Daemon, symbol: str) -> list[dict[str, Any]]:
    """The symbol's ledger lines that record a training run."""
    if symbol not in daemon.registry.symbols():
        return []
    return [e for e in ledger(daemon.registry, symbol) if e["event"] in RUN_EVENTS]


def test_a_backfill_burst_trains_each_symbol_once(broker: Any, tmp_path: Path) -> None:
    """Three symbols x 2,500 bars in one burst: exactly one training each; the retrain that
    queued behind each run was dropped as same_data, not run."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / BACKFILL_FILE).write_text(str(N_BARS))
    settings = own_settings(
        broker.bootstrap_servers,
        data_dir,
        "backfill-",
        min_bars=100,
        retrain_every_bars=100,  # due again after every batch or so: requests pile up
        train_workers=len(SYMBOLS),  # each symbol's first job starts while its bars arrive
        kafka_max_poll_records=4,
        trainers=("xgboost",),
        trainer_params={"xgboost": {"preset": "tiny"}},
        walk_forward_folds=0,
        monitor_check_seconds=3600,
    )
    daemon = Daemon(
        settings,
        bootstrap_servers=broker.bootstrap_servers,
        metrics_registry=CollectorRegistry(),
        job_target=after_backfill_job,
    ).start()
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, acks="all", enable_idempotence=False
    )
    try:
        _warm_forkserver()
        for k, symbol in enumerate(SYMBOLS):
            records = bar_records(symbol, generate_bars(MarketSpec(symbol=symbol, seed=k), N_BARS))
            for i in range(0, N_BARS, CHUNK):
                value = encode_batch(symbol, records[i : i + CHUNK])
                producer.send(settings.topic_bars, key=symbol.encode(), value=value)
        producer.flush(timeout=30)

        def settled() -> bool:
            """Every bar stored, each symbol trained, the request queued behind its run resolved
            (trained again or dropped), and nothing left to do."""
            samples = _metrics(daemon)
            return (
                all(daemon.store.count(s) == N_BARS for s in SYMBOLS)
                and all(
                    len(_runs(daemon, s)) >= 1
                    and len(_runs(daemon, s))
                    + _sum(samples, "ctd_retrains_skipped_total", symbol=s)
                    >= 2
                    for s in SYMBOLS
                )
                and daemon.scheduler.pending == 0
                and daemon.scheduler.running == 0
            )

        wait_for(
            settled,
            timeout=120,
            interval=0.5,
            message="each symbol trained, with a request queued behind its run resolved",
        )
        samples = _metrics(daemon)
        for symbol in SYMBOLS:
            runs = _runs(daemon, symbol)
            assert len(runs) == 1, (symbol, [e["event"] for e in runs])
            assert runs[0]["event"] != "training_failed", runs[0]
            assert _sum(samples, "ctd_training_runs_total", symbol=symbol) == 1, symbol
            skipped = _sum(samples, "ctd_retrains_skipped_total", symbol=symbol, reason="same_data")
            assert skipped >= 1, symbol
            # The trigger counts from every bar the run saw: no retrain due on the next bar.
            assert daemon.store.trained_state()[symbol][0] == N_BARS
    finally:
        producer.close()
        daemon.stop(10)
