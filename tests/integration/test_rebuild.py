"""Rebuilding a partition's bar history from Kafka into a store (``daemon.kafka.rebuild``),
against the bundled broker and a real SQLite store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition

from daemon.errors import RebuildError
from daemon.kafka.bars import encode_bar, encode_batch
from daemon.kafka.clients import ensure_topics
from daemon.kafka.rebuild import Span, rebuild
from daemon.settings import Settings
from daemon.store.bars import BarStore
from tests.support import reliability as rel
from tests.support.helpers import own_settings

Topic = tuple[Settings, dict[str, list[rel.Row]], dict[int, int]]


@pytest.fixture
def topic(broker: Any, tmp_path: Path) -> Topic:
    """Two partitions: A's bars in 50-bar batches on partition 0, B's single bars and one
    invalid message on partition 1; and each partition's end offset, from the producer's
    acknowledgements (tansu's ListOffsets answers the last batch's base offset + 1)."""
    settings = own_settings(broker.bootstrap_servers, tmp_path / "data", "rb", topic_partitions=2)
    ensure_topics(settings, broker.bootstrap_servers)
    producer = rel.make_producer(broker.bootstrap_servers)
    a = [rel.bar("AAA", i) for i in range(200)]
    b = [rel.bar("BBB", i) for i in range(30)]
    sent = []
    for k in range(0, len(a), 50):
        value = encode_batch("AAA", a[k : k + 50])
        sent.append(producer.send(settings.topic_bars, value, b"AAA", partition=0))
    for i, bar in enumerate(b):
        sent.append(producer.send(settings.topic_bars, encode_bar(bar), b"BBB", partition=1))
        if i == 10:
            invalid = b'{"symbol": "BBB"}'
            sent.append(producer.send(settings.topic_bars, invalid, b"BBB", partition=1))
    ends: dict[int, int] = {}
    for future in sent:
        meta = future.get(timeout=30)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    producer.close()
    return settings, {"AAA": sorted(map(rel.row, a)), "BBB": sorted(map(rel.row, b))}, ends


def test_a_rebuild_fills_the_store_with_every_valid_bar_up_to_the_committed_offset(
    broker: Any, topic: Topic, tmp_path: Path
) -> None:
    settings, produced, ends = topic
    assert ends == {0: 4, 1: 31}
    store = BarStore(tmp_path / "bars.sqlite")
    spans = {TopicPartition(settings.topic_bars, p): Span(None, ends[p]) for p in (0, 1)}
    report = rebuild(settings, broker.bootstrap_servers, store, spans, timeout_seconds=30)
    assert (report.partitions, report.messages, report.bars, report.new_bars) == (2, 35, 230, 230)
    assert report.symbols == {(settings.topic_bars, 0): {"AAA"}, (settings.topic_bars, 1): {"BBB"}}
    assert report.trimmed == []
    rows = rel.stored_rows(store.path)
    for symbol, expected in produced.items():
        assert [r for r in rows if r[0] == symbol] == expected
    assert store.positions() == {(settings.topic_bars, 0): 4, (settings.topic_bars, 1): 31}
    assert store.partitions() == {
        "AAA": (settings.topic_bars, 0),
        "BBB": (settings.topic_bars, 1),
    }


def test_a_rebuild_from_a_position_replays_only_the_hole_and_stops_at_its_end(
    broker: Any, topic: Topic, tmp_path: Path
) -> None:
    """The store holds A's first two messages; the group committed three: one is replayed."""
    settings, produced, _ = topic
    store = BarStore(tmp_path / "bars.sqlite")
    tp = TopicPartition(settings.topic_bars, 0)
    report = rebuild(
        settings, broker.bootstrap_servers, store, {tp: Span(2, 3)}, timeout_seconds=30
    )
    assert (report.messages, report.bars, report.new_bars) == (1, 50, 50)
    assert rel.stored_rows(store.path) == produced["AAA"][100:150]
    assert store.positions() == {(settings.topic_bars, 0): 3}
    again = rebuild(settings, broker.bootstrap_servers, store, {tp: Span(3, 3)}, timeout_seconds=30)
    assert again.partitions == 0  # nothing to replay: no consumer, no read


def test_a_span_the_broker_cannot_deliver_fails_within_the_timeout(
    broker: Any, topic: Topic, tmp_path: Path
) -> None:
    """A committed offset beyond what the partition holds (a broker that lost data) is a
    RebuildError naming the partition, after the timeout, not a hang."""
    settings, _, _ = topic
    store = BarStore(tmp_path / "bars.sqlite")
    tp = TopicPartition(settings.topic_bars, 0)
    with pytest.raises(RebuildError, match=f"{settings.topic_bars}:0"):
        rebuild(settings, broker.bootstrap_servers, store, {tp: Span(None, 10)}, timeout_seconds=3)


def test_a_rebuild_skips_the_bars_the_plausibility_rules_reject(
    broker: Any, tmp_path: Path
) -> None:
    """The daemon that first consumed them dead-lettered a bar a century ahead and a symbol
    over the cap; a later owner's rebuild must not store them either."""
    settings = own_settings(
        broker.bootstrap_servers, tmp_path / "data", "rbp", topic_partitions=1, max_symbols=1
    )
    ensure_topics(settings, broker.bootstrap_servers)
    producer = rel.make_producer(broker.bootstrap_servers)
    good = [rel.bar("AAA", i) for i in range(20)]
    ahead = rel.bar("AAA", 20)._replace(ts=int(time.time()) + 100 * 365 * 86_400)
    messages = [
        (b"AAA", encode_batch("AAA", [*good[:10], ahead, *good[10:]])),
        (b"ZZZ", encode_bar(rel.bar("ZZZ", 0))),
    ]
    for key, value in messages:
        producer.send(settings.topic_bars, value, key, partition=0).get(timeout=30)
    producer.close()
    store = BarStore(tmp_path / "bars.sqlite")
    tp = TopicPartition(settings.topic_bars, 0)

    report = rebuild(
        settings, broker.bootstrap_servers, store, {tp: Span(None, 2)}, timeout_seconds=30
    )

    assert (report.messages, report.bars, report.new_bars) == (2, 20, 20)
    assert store.counts() == {"AAA": 20}
    assert rel.stored_rows(store.path) == sorted(map(rel.row, good))
