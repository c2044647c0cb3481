"""Real producers: every Kafka compression codec from a foreign client (confluent-kafka,
librdkafka) into a running daemon, record batches that cannot be decoded, and the
compression of what ctd itself produces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import kafka.codec
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from daemon.actions import Command
from daemon.app import Daemon
from daemon.errors import CodecUnavailableError
from daemon.kafka.bars import encode_bar, encode_batch
from daemon.kafka.clients import make_producer
from daemon.kafka.codecs import check_codecs
from daemon.kafka.commands_secret import commands_key
from daemon.kafka.signing import sign_command
from daemon.settings import Settings
from tests.support.foreign import flush, foreign_producer, foreign_read
from tests.support.helpers import wait_for
from tests.support.kafka_wire import (
    corrupt_crc,
    corrupt_payload,
    fetch_codecs,
    raw_produce,
    record_batch,
)
from trainers.data import BarRecord, bar_records
from trainers.synthetic import MarketSpec, generate_bars

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
BARS_PER_CODEC = 300


def _records(symbol: str, n: int, seed: int = 0) -> list[BarRecord]:
    return bar_records(symbol, generate_bars(MarketSpec(symbol=symbol, seed=seed), n))


def _stored(daemon: Daemon, symbol: str) -> list[BarRecord]:
    assert daemon.store is not None
    return bar_records(symbol, daemon.store.load(symbol))


def test_every_codec_round_trips_in_this_install() -> None:
    """gzip, snappy (raw and xerial framing), lz4 and zstd all decode what they encode."""
    check_codecs()


def test_missing_codec_libraries_are_named_with_their_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a codec's library the check fails listing each codec and the package it needs."""
    monkeypatch.setattr(kafka.codec, "snappy", None)
    monkeypatch.setattr(kafka.codec, "zstd", None)
    with pytest.raises(CodecUnavailableError) as info:
        check_codecs()
    assert set(info.value.missing) == {"snappy", "zstd"}
    assert "python-snappy" in str(info.value) and "zstandard" in str(info.value)


def test_ctd_run_exits_1_naming_the_missing_codec_package(tmp_path: Path) -> None:
    """`ctd run` with a codec library gone fails at start-up, exit 1, naming the package."""
    script = (
        "import sys, kafka.codec\n"
        "kafka.codec.lz4_encode = None\n"
        "from daemon.cli.main import main\n"
        "sys.exit(main(['run']))\n"
    )
    env = {
        **os.environ,
        "CTD_DATA_DIR": str(tmp_path / "data"),
        "CTD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "CTD_HTTP_PORT": "0",
        "CTD_LOG_FORMAT": "json",
    }
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "lz4 (needs package lz4" in result.stderr + result.stdout


@pytest.fixture
def daemon(settings_factory: Callable[..., Settings]) -> Iterator[Daemon]:
    settings = settings_factory(
        http_port=0,
        min_bars=100_000,  # ingest only: no training in these tests
        kafka_compression_type="zstd",
        ingest_undecodable_retries=2,
        ingest_undecodable_backoff_seconds=0.5,
    )
    running = Daemon(
        settings,
        bootstrap_servers=str(settings.kafka_bootstrap_servers),
        metrics_registry=CollectorRegistry(),
    ).start()
    try:
        yield running
    finally:
        running.stop(5)


def _sample(daemon: Daemon, name: str, **labels: str) -> float:
    value = daemon.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.integration
def test_a_foreign_producer_with_every_codec_gets_every_bar_stored(daemon: Daemon) -> None:
    """confluent-kafka sends 300 bars per codec (none, gzip, snappy, lz4, zstd), half as
    single-bar messages and half as batches, with headers and some null keys: every bar
    is stored exactly once with its exact values, and nothing is dead-lettered."""
    s = daemon.settings
    sent: dict[str, list[BarRecord]] = {}
    for seed, codec in enumerate(CODECS):
        symbol = f"CODEC{codec.upper()}"
        records = _records(symbol, BARS_PER_CODEC, seed)
        sent[symbol] = records
        producer = foreign_producer(daemon.bootstrap_servers, codec)
        half = BARS_PER_CODEC // 2
        for i, record in enumerate(records[:half]):
            producer.produce(
                s.topic_bars,
                value=encode_bar(record),
                key=None if i % 2 else symbol.encode(),
                headers=[("source", b"feed-a"), ("seq", str(i).encode())] if i % 3 else None,
            )
        for i in range(half, BARS_PER_CODEC, 50):
            producer.produce(
                s.topic_bars,
                value=encode_batch(symbol, records[i : i + 50]),
                key=None if i == half else symbol.encode(),
                headers=[("form", b"batch")],
            )
        flush(producer)
    assert daemon.store is not None
    store = daemon.store
    wait_for(
        lambda: all(store.count(sym) == BARS_PER_CODEC for sym in sent),
        timeout=60,
        message="300 bars stored for every codec",
    )
    for symbol, records in sent.items():
        assert _stored(daemon, symbol) == records, symbol
    assert _sample(daemon, "ctd_dlq_messages_total", kind="message") == 0
    assert _sample(daemon, "ctd_dlq_messages_total", kind="undecodable_batch") == 0


@pytest.mark.integration
def test_undecodable_batches_are_dead_lettered_by_reference_and_nothing_else_is_lost(
    daemon: Daemon,
) -> None:
    """A corrupt compressed batch and a CRC-mismatched batch on one partition are retried,
    then dead-lettered by reference (topic, partition, offset range, reason) and skipped;
    every bar before and after them on that partition and on all other partitions is
    stored once; the references are readable by a foreign consumer."""
    s = daemon.settings
    bootstrap = daemon.bootstrap_servers
    bad_partition = 2
    before = _records("POISONED", 40, seed=1)
    after = _records("POISONED", 80, seed=1)[40:]
    others = {
        p: _records(f"CLEAN{p}", 30, seed=p)
        for p in range(s.topic_partitions)
        if p != bad_partition
    }
    producer = foreign_producer(bootstrap, "lz4")
    for record in before:
        producer.produce(s.topic_bars, value=encode_bar(record), partition=bad_partition)
    flush(producer)
    garbage = [(b"POISONED", encode_bar(r)) for r in _records("LOST", 5, seed=9)]
    first_bad = raw_produce(
        bootstrap, s.topic_bars, bad_partition, corrupt_payload(record_batch(garbage, "gzip"))
    )
    second_bad = raw_produce(
        bootstrap, s.topic_bars, bad_partition, corrupt_crc(record_batch(garbage[:3]))
    )
    for record in after:
        producer.produce(s.topic_bars, value=encode_bar(record), partition=bad_partition)
    for p, records in others.items():
        producer.produce(s.topic_bars, value=encode_batch(f"CLEAN{p}", records[:10]), partition=p)
    flush(producer)

    assert daemon.store is not None
    store = daemon.store
    # The other partitions flow while the poisoned one waits out its retries.
    wait_for(lambda: all(store.count(f"CLEAN{p}") == 10 for p in others), timeout=30)
    assert _sample(daemon, "ctd_dlq_messages_total", kind="undecodable_batch") == 0
    for p, records in others.items():
        producer.produce(s.topic_bars, value=encode_batch(f"CLEAN{p}", records[10:]), partition=p)
    flush(producer)
    wait_for(
        lambda: (
            store.count("POISONED") == 80 and all(store.count(f"CLEAN{p}") == 30 for p in others)
        ),
        timeout=60,
        message="every good bar stored",
    )
    assert _stored(daemon, "POISONED") == before + after
    for p, records in others.items():
        assert _stored(daemon, f"CLEAN{p}") == records
    assert store.count("LOST") == 0
    assert _sample(daemon, "ctd_dlq_messages_total", kind="undecodable_batch") == 2
    assert _sample(daemon, "ctd_dlq_messages_total", kind="message") == 0
    # Each batch failed once and was retried twice before it was skipped.
    assert _sample(daemon, "ctd_ingest_errors_total", kind="undecodable") == 4

    dlq = [json.loads(m.value()) for m in foreign_read(bootstrap, s.topic_dlq, 2)]
    assert len(dlq) == 2
    first, second = sorted(dlq, key=lambda d: d["offset"])
    assert first["kind"] == second["kind"] == "undecodable_batch"
    assert (first["topic"], first["partition"]) == (s.topic_bars, bad_partition)
    assert (first["offset"], first["end_offset"]) == (first_bad, first_bad + 5)
    assert first["reason"].startswith("undecodable gzip record batch: ")
    assert (second["offset"], second["end_offset"]) == (second_bad, second_bad + 3)
    assert second["reason"].startswith("undecodable uncompressed record batch: ")
    assert "crc check" in second["reason"]
    assert first["original_base64"] is None and second["original_base64"] is None
    # What ctd produces is compressed as configured (CTD_KAFKA_COMPRESSION_TYPE=zstd).
    codecs = [c for p in range(s.topic_partitions) for c in fetch_codecs(bootstrap, s.topic_dlq, p)]
    assert codecs and set(codecs) == {"zstd"}


@pytest.mark.integration
def test_an_undecodable_commands_batch_is_skipped_and_later_commands_still_run(
    daemon: Daemon,
) -> None:
    """A corrupt batch on the commands topic is skipped after its retries (counted), and a
    command sent after it is executed."""
    s = daemon.settings
    bootstrap = daemon.bootstrap_servers
    command = sign_command(Command("reject", "NOSUCH", "t"), commands_key(s, create=False))
    raw_produce(bootstrap, s.topic_commands, 0, corrupt_crc(record_batch([(None, command)])))
    raw_produce(bootstrap, s.topic_commands, 0, record_batch([(None, command)]))
    wait_for(
        lambda: _sample(daemon, "ctd_commands_total", action="reject", outcome="refused") == 1,
        timeout=30,
        message="the command after the corrupt batch ran",
    )
    assert _sample(daemon, "ctd_commands_total", action="invalid", outcome="undecodable") == 1


@pytest.mark.integration
@pytest.mark.parametrize("codec", CODECS)
def test_ctd_producers_compress_with_the_configured_codec(
    settings_factory: Callable[..., Settings], codec: str
) -> None:
    """make_producer (DLQ, promotions, demo feed) writes batches in CTD_KAFKA_COMPRESSION_TYPE,
    and a foreign consumer reads them back intact."""
    settings = settings_factory(kafka_compression_type=codec)
    bootstrap = str(settings.kafka_bootstrap_servers)
    producer = make_producer(settings, bootstrap)
    values = [json.dumps({"n": int(i), "pad": "x" * 200}).encode() for i in np.arange(50)]
    try:
        for value in values:
            producer.send(settings.topic_promotions, value=value, partition=0)
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)
    assert set(fetch_codecs(bootstrap, settings.topic_promotions, 0)) == {codec}
    got = [m.value() for m in foreign_read(bootstrap, settings.topic_promotions, len(values))]
    assert got == values
