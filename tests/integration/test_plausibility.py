"""Plausibility at the edge, end to end: an in-process daemon against the real broker.

What was seen before: a bar dated 2100 was stored, after which live scoring of its
symbol silently stopped (every later bar was "older than the newest") and the
ingest lag read -2.3e9 s; a stored price of 1e300 overflowed the float32
features and failed every later retrain of the symbol. Here the store starts
with such a 1e300 bar (written before the edge checked prices), and a bar a
century ahead and a 1e300 bar arrive between good ones: both go to the DLQ, and
the symbol keeps training and scoring every good bar. A correction is counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from daemon.app import Daemon
from daemon.kafka.bars import encode_bar, encode_batch
from daemon.kafka.clients import ensure_topics
from daemon.settings import Settings
from daemon.store.bars import BarStore
from tests.support.helpers import own_settings, read_topic, wait_for
from trainers.data import BarRecord, bar_records
from trainers.synthetic import MarketGenerator, MarketSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOL = "EDGE"
CENTURY = 100 * 365 * 86_400


@pytest.fixture
def settings(broker: Any, tmp_path: Path) -> Settings:
    s = own_settings(
        broker.bootstrap_servers,
        tmp_path / "data",
        "edge",
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=500,
        min_bars=400,
        retrain_every_bars=150,
        trainers=("xgboost",),
        trainer_params={"xgboost": {"preset": "tiny"}},
        walk_forward_folds=0,
        gate_require_beat_baseline=False,
        gate_max_val_test_diff=1.0,
        gate_max_train_val_gap=1.0,
        gate_min_test_rows=30,
        promotion_min_samples=100_000,  # no trial decides: the slots stay as trained
        promotion_max_samples=200_000,
    )
    ensure_topics(s, broker.bootstrap_servers)
    return s


@pytest.fixture
def producer(broker: Any) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    yield p
    p.close()


def huge(record: BarRecord, ts: int) -> BarRecord:
    """Finite, positive, consistent: valid by the bar contract, but 1e300."""
    return record._replace(ts=ts, open=1e300, high=1e300, low=1e300, close=1e300)


def served_ts(settings: Settings, expected: set[int], timeout: float = 60) -> set[int]:
    """Bars with a served record on the predictions topic, read until ``expected`` are."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    served: set[int] = set()
    try:
        topic = settings.topic_predictions
        parts = wait_for(lambda: consumer.partitions_for_topic(topic), 15)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        def poll() -> bool:
            for msgs in consumer.poll(timeout_ms=200).values():
                served.update(
                    r["ts"] for r in map(json.loads, (m.value for m in msgs)) if r["served"]
                )
            return expected <= served

        wait_for(poll, timeout, interval=0, message=f"served records of {len(expected)} bars")
        return served
    finally:
        consumer.close()


def test_a_century_ahead_and_1e300_go_to_the_dlq_and_the_symbol_keeps_training_and_scoring(
    settings: Settings, producer: KafkaProducer
) -> None:
    gen = MarketGenerator(MarketSpec(symbol=SYMBOL, seed=5, signal_strength=1.5))
    history = bar_records(SYMBOL, gen.next_bars(500))
    history[250] = huge(history[250], history[250].ts)
    with_legacy = BarStore(settings.paths.bars)
    with_legacy.upsert(history)
    with_legacy.close()

    def send(records: list[BarRecord], chunk: int) -> None:
        for i in range(0, len(records), chunk):
            value = encode_batch(SYMBOL, records[i : i + chunk])
            producer.send(settings.topic_bars, key=SYMBOL.encode(), value=value)
        producer.flush()

    daemon = Daemon(settings, bootstrap_servers=settings.kafka_bootstrap_servers or "").start()
    try:
        send(bar_records(SYMBOL, gen.next_bars(20)), chunk=10)  # the first training is due
        champion = wait_for(lambda: daemon.registry.slots(SYMBOL).champion, 120, message="champion")
        excluded = daemon.registry.metadata(SYMBOL, champion).data.excluded_rows
        assert excluded > 0, "the stored 1e300 bar's rows were left out, not fatal"

        before = bar_records(SYMBOL, gen.next_bars(50))
        after = bar_records(SYMBOL, gen.next_bars(150))
        ahead = before[-1]._replace(ts=int(time.time()) + CENTURY)
        bad = [encode_bar(ahead), encode_bar(huge(before[-1], before[-1].ts + 30))]
        send(before, chunk=1)
        for value in bad:
            producer.send(settings.topic_bars, key=SYMBOL.encode(), value=value)
        send(after, chunk=1)

        good = [*before, *after]
        stored = 520 + len(good)
        wait_for(lambda: daemon.store.count(SYMBOL) == stored, 60, message="every good bar")
        dlq = read_topic(settings.kafka_bootstrap_servers or "", settings.topic_dlq, at_least=2)
        reasons = sorted(json.loads(d.value)["reason"] for d in dlq)
        assert len(reasons) == 2
        assert reasons[0].startswith("open 1e+300 is outside 1e-18..1e+18")
        assert reasons[1].startswith("ts 21") and "ahead of the daemon's clock" in reasons[1]
        assert daemon.store.load(SYMBOL, last_n=1).ts[-1] == after[-1].ts

        assert {b.ts for b in good} <= served_ts(settings, {b.ts for b in good})

        m = daemon.metrics.registry
        corrected = after[-10]._replace(volume=after[-10].volume + 1.0)
        producer.send(settings.topic_bars, key=SYMBOL.encode(), value=encode_bar(corrected))
        wait_for(
            lambda: m.get_sample_value("ctd_store_corrections_total", {"symbol": SYMBOL}) == 1.0,
            30,
            message="the correction counted",
        )
        assert daemon.store.count(SYMBOL) == stored

        def runs(outcome: str) -> float:
            return (
                m.get_sample_value(
                    "ctd_training_runs_total", {"symbol": SYMBOL, "outcome": outcome}
                )
                or 0.0
            )

        wait_for(
            lambda: runs("shadow") + runs("rejected") >= 1,
            120,
            message="a retrain after the bad bars",
        )
        assert (runs("champion"), runs("failed")) == (1.0, 0.0)
        assert m.get_sample_value("ctd_implausible_bars_total", {"rule": "future"}) == 1.0
        assert m.get_sample_value("ctd_dlq_messages_total", {"kind": "message"}) == 2.0
        lag = m.get_sample_value("ctd_ingest_lag_seconds")
        assert lag is not None and lag > 0
    finally:
        daemon.stop(10)
