"""The bundled broker restarted under a running daemon: empty on memory storage, whole on S3."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from daemon.app import Daemon
from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import ensure_topics, make_consumer, make_producer
from daemon.kafka.topics import TopicReset
from daemon.settings import Settings
from tests.support import reliability as rel
from tests.support.helpers import own_settings, wait_for

pytestmark = pytest.mark.integration

SYMBOL = "RESTART"


def _partitions(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Partition count of each of ``topics`` the broker knows (none while it is down)."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    except KafkaError:
        return {}
    try:
        described = admin.describe_topics(topics)
    except KafkaError:
        return {}
    finally:
        admin.close()
    return {t["name"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


def test_the_daemons_clients_never_make_the_broker_create_a_topic(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """kafka-python 3.0.12 drops ``allow_auto_create_topics``; the factories restore it: a
    consumer of a missing topic and a producer sending to it create nothing (else the daemon
    would race its own clients to re-create a lost topic, and lose to tansu's 4 partitions)."""
    bootstrap = broker.bootstrap_servers
    settings = own_settings(bootstrap, tmp_path, kafka_request_timeout_ms=1000)
    missing = f"missing-{uuid.uuid4().hex[:10]}"
    consumer = make_consumer(settings, bootstrap, topic=missing)
    producer = make_producer(settings, bootstrap)
    try:
        with pytest.raises(KafkaTimeoutError):  # waits for the topic's metadata, in vain
            producer.send(missing, b"bar")
        deadline = time.monotonic() + 1.5  # without the fix the topic appears in ~0.3 s
        while time.monotonic() < deadline:
            consumer.poll(100)
    finally:
        consumer.close(autocommit=False)
        producer.close(timeout=5)
    assert _partitions(bootstrap, [missing]) == {}


def _daemon_topics(settings: Settings) -> list[str]:
    return [
        settings.topic_bars,
        settings.topic_dlq,
        settings.topic_commands,
        settings.topic_promotions,
        settings.topic_predictions,
    ]


def test_topics_come_back_within_seconds_after_the_broker_restarts_empty(tmp_path: Path) -> None:
    """A bundled broker restarted on memory storage has lost every topic: the running daemon
    re-creates them (configured partitions), counts it, and goes on storing bars, each once;
    the re-created DLQ takes bad messages again."""
    port = rel.free_port()
    first = LocalBroker(port=port).start()
    bootstrap = first.bootstrap_servers
    settings = own_settings(
        bootstrap,
        tmp_path / "data",
        "r",
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=500,
        min_bars=100_000,  # no training: this is about the broker
    )
    topics, store = _daemon_topics(settings), settings.paths.bars
    before = [rel.bar(SYMBOL, i) for i in range(300)]
    after = [rel.bar(SYMBOL, i) for i in range(250, 600)]  # 50 sent again, 300 new
    daemon = Daemon(settings, bootstrap_servers=bootstrap).start()
    second = LocalBroker(port=port)
    metrics = daemon.metrics.registry
    try:
        rel.send_batches(bootstrap, settings.topic_bars, before)
        wait_for(lambda: rel.stored_count(store) == 300, timeout=30, message="bars stored")
        first.stop()
        second.start()
        restarted = time.monotonic()
        assert _partitions(bootstrap, topics) == {}  # the broker came back empty

        wait_for(
            lambda: _partitions(bootstrap, topics) == dict.fromkeys(topics, 6),
            timeout=15,
            interval=0.1,
            message="the daemon's topics re-created with their 6 partitions",
        )
        took = time.monotonic() - restarted
        for topic in topics:
            assert metrics.get_sample_value("ctd_topics_recreated_total", {"topic": topic}) == 1

        rel.send_batches(bootstrap, settings.topic_bars, after)
        producer = rel.make_producer(bootstrap)
        producer.send(settings.topic_bars, key=SYMBOL.encode(), value=b"not json").get(10)
        producer.close(timeout=5)
        wait_for(lambda: rel.stored_count(store) == 600, timeout=60, message="ingest resumed")
        wait_for(
            lambda: metrics.get_sample_value("ctd_dlq_messages_total", {"kind": "message"}),
            timeout=30,
            message="the bad message dead-lettered",
        )
        wait_for(lambda: all(daemon.readiness().values()), timeout=30, message="ready again")
    finally:
        daemon.stop(10)
        second.stop()
        first.stop()
    rel.assert_stored_exactly(store, before + after)
    print(f"topics re-created {took:.1f} s after the broker restarted empty")


class _Assignments(TopicReset):
    """A TopicReset that also records every assignment it is told of."""

    def __init__(self, topics: list[str]) -> None:
        super().__init__(topics)
        self.seen: list[int] = []

    def on_partitions_assigned(self, assigned: Any) -> None:
        assigned = list(assigned)
        self.seen.append(len(assigned))
        super().on_partitions_assigned(assigned)


def test_a_consumer_stranded_before_its_topic_is_back_rejoins_and_reads_the_new_log(
    tmp_path: Path,
) -> None:
    """A consumer that rejoined the restarted broker before its topic was re-created is given
    no partitions (tansu drops them) and kafka-python never rejoins by itself; told of the
    re-creation, TopicReset rejoins it and every record of the new log is read."""
    port = rel.free_port()
    first = LocalBroker(port=port).start()
    bootstrap = first.bootstrap_servers
    settings = own_settings(
        bootstrap, tmp_path, kafka_session_timeout_ms=3000, kafka_heartbeat_interval_ms=500
    )
    topic = settings.topic_bars
    ensure_topics(settings, bootstrap, [topic])
    reset = _Assignments([topic])
    consumer = make_consumer(settings, bootstrap, subscribe=False)
    consumer.subscribe([topic], listener=reset)
    second = LocalBroker(port=port)
    rejoined: list[bool] = []
    got: list[bytes] = []
    try:
        wait_for(lambda: consumer.poll(100) is not None and reset.seen == [6], timeout=20)
        first.stop()
        second.start()
        wait_for(
            lambda: consumer.poll(100) is not None and reset.seen[1:] == [0],
            timeout=20,
            message="stranded: the rejoin settled on no partitions while the topic was gone",
        )
        ensure_topics(settings, bootstrap, [topic])
        producer = rel.make_producer(bootstrap)
        for i in range(10):
            producer.send(topic, key=b"k%d" % i, value=b"v%d" % i)
        producer.flush(timeout=10)
        producer.close(timeout=5)
        reset.recreated([topic])

        def read_all() -> bool:
            rejoined.append(reset.catch_up(consumer, reset))
            for records in consumer.poll(100).values():
                got.extend(r.value for r in records)
            return len(got) >= 10

        wait_for(read_all, timeout=30, interval=0, message="the new log read after the rejoin")
    finally:
        consumer.close(autocommit=False)
        second.stop()
        first.stop()
    assert sorted(got) == sorted(b"v%d" % i for i in range(10))
    assert rejoined.count(True) == 1
    assert reset.seen[-1] == 6


def _consume(bootstrap: str, topic: str, group: str, n: int, *, commit: bool) -> list[bytes]:
    """``n`` records of ``topic`` as a member of ``group``, from its committed offsets."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=n,
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(200, max_records=n - len(got)).values():
                got.extend(r.value for r in records)
        if commit:
            consumer.commit()
    finally:
        consumer.close(autocommit=False)
    return got


def test_on_s3_storage_a_restart_keeps_topics_records_and_committed_offsets(
    tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CTD_BUNDLED_BROKER_STORAGE=s3://...``: the broker restarted on its storage still has
    the topic, every record and the group's committed offset."""
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")  # moto's endpoint is http://
    port = rel.free_port()
    storage = f"s3://{s3_bucket}/"
    sent = [f"record-{i}".encode() for i in range(200)]
    settings: dict[str, Any] = {"topic_partitions": 1}
    with LocalBroker(port=port, storage=storage, log_path=tmp_path / "broker.log") as broker:
        bootstrap = broker.bootstrap_servers
        ensure_topics(own_settings(bootstrap, tmp_path, **settings), bootstrap, ["durable"])
        producer = rel.make_producer(bootstrap)
        for value in sent:
            producer.send("durable", value=value)
        producer.flush(timeout=30)
        producer.close(timeout=5)
        assert _consume(bootstrap, "durable", "g", 120, commit=True) == sent[:120]

    with LocalBroker(port=port, storage=storage) as broker:
        assert _partitions(bootstrap, ["durable"]) == {"durable": 1}
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="g")
        try:
            assert consumer.committed(TopicPartition("durable", 0)) == 120
        finally:
            consumer.close(autocommit=False)
        assert _consume(bootstrap, "durable", "g", 80, commit=False) == sent[120:]
        assert _consume(bootstrap, "durable", "fresh", 200, commit=False) == sent


def test_alone_on_the_bundled_broker_an_old_claim_never_fences_the_daemon(
    broker: Any, tmp_path: Path
) -> None:
    """With no broker configured the daemon runs the bundled one, whose group generations
    restart with it: a claim its previous run recorded at generation 7 must not fence the
    new run's writes (it would throw every training result away)."""
    from daemon.kafka.bars import encode_batch
    from deploy.registry import Registry
    from deploy.registry.ledger import Claim
    from tests.support.metadata import write_sample_metadata
    from trainers.data import bar_records
    from trainers.features import FEATURE_SPEC
    from trainers.naive import NaiveModel
    from trainers.synthetic import MarketGenerator, MarketSpec

    fleet = own_settings(
        broker.bootstrap_servers,
        tmp_path / "data",
        "alone",
        min_bars=300,
        trainers=("xgboost",),
        walk_forward_folds=0,
        gate_require_beat_baseline=False,
        gate_max_val_test_diff=1.0,
        gate_max_train_val_gap=1.0,
        gate_min_test_rows=30,
    )
    settings = fleet.model_copy(update={"kafka_bootstrap_servers": None})
    assert settings.on_bundled_broker and not fleet.on_bundled_broker
    ensure_topics(fleet, broker.bootstrap_servers)
    symbol = "ALONE"
    staging = tmp_path / "staging"
    staging.mkdir()
    NaiveModel(0.5, len(FEATURE_SPEC.names)).export_onnx(staging / "model.onnx")
    write_sample_metadata(staging, symbol=symbol)
    registry = Registry(settings.paths.registry)
    registry.place(symbol, registry.add_version(symbol, staging))
    registry.claim(symbol, Claim("an-earlier-run", 7))  # as its last run left it
    bars = bar_records(
        symbol, MarketGenerator(MarketSpec(symbol, 3, signal_strength=1.5)).next_bars(600)
    )
    producer = make_producer(fleet, broker.bootstrap_servers)
    daemon = Daemon(settings, bootstrap_servers=broker.bootstrap_servers).start()
    try:
        producer.send(fleet.topic_bars, key=symbol.encode(), value=encode_batch(symbol, bars))
        producer.flush()
        wait_for(lambda: registry.slots(symbol).shadow, 120, message="its run placed as shadow")
        assert daemon.metrics.registry.get_sample_value(
            "ctd_registry_fenced_total", {"symbol": symbol}
        ) in (None, 0.0)
    finally:
        daemon.stop(10)
        producer.close()
