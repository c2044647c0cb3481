"""The pure parts of ingest's read-ahead (daemon/kafka/ingest.py): where a rewind seeks, and
when a batch read ahead may still be written."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, NamedTuple

import pytest
from kafka import TopicPartition
from kafka.errors import IllegalStateError

from daemon.errors import StoreError
from daemon.kafka.bars import encode_bar
from daemon.kafka.ingest import Ingestor, IngestReport, earliest, in_place
from daemon.settings import load_settings
from daemon.store.bars import Written
from daemon.store.memory import MemoryBarStore
from trainers.data import BarRecord

P0, P1, P2 = (TopicPartition("bars", p) for p in range(3))


def test_earliest_keeps_each_partitions_first_offset_across_batches() -> None:
    """A rewind after a failed write seeks to the failed batch's start, or to the batch read
    ahead's start where only it touched the partition."""
    failed = {P0: (10, 20), P1: (5, 6)}
    ahead = {P0: (20, 27), P2: (3, 9)}
    assert earliest(failed, ahead) == {P0: (10, 27), P1: (5, 6), P2: (3, 9)}
    assert earliest(ahead, failed) == earliest(failed, ahead)


def test_earliest_of_nothing_is_empty() -> None:
    """No batch, nothing to rewind."""
    assert earliest() == {}
    assert earliest({}, {P0: (1, 2)}) == {P0: (1, 2)}


def test_in_place_only_where_every_partition_stands_at_the_batch_end() -> None:
    """A batch read ahead is written only if nothing moved the consumer since."""
    spans = {P0: (10, 20), P1: (5, 6)}
    assert in_place(spans, {P0: 20, P1: 6})
    assert not in_place(spans, {P0: 20, P1: 5})  # seeked back (a rewind, a reset)
    assert not in_place(spans, {P0: 0, P1: 6})  # rewound to the beginning (topic re-created)
    assert not in_place(spans, {P0: 20, P1: None})  # no longer assigned
    assert not in_place(spans, {P0: 20})


# -- the pipeline, with a scripted consumer and the in-memory store -------------------------
T0 = 1_735_689_600


class Record(NamedTuple):
    offset: int
    key: bytes
    value: bytes


class FakeConsumer:
    """A consumer of one topic's partitions whose log is a list of messages per partition;
    ``on_poll`` runs at the start of a chosen poll (a rebalance)."""

    config: ClassVar[dict[str, Any]] = {"request_timeout_ms": 1000}

    def __init__(self, logs: dict[TopicPartition, list[tuple[bytes, bytes]]], size: int) -> None:
        self.logs, self.size = logs, size
        self.pos = dict.fromkeys(logs, 0)
        self.assigned = set(logs)
        self.commits: list[dict[TopicPartition, int]] = []
        self.polls = 0
        self.on_poll: dict[int, Callable[[], None]] = {}

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        self.polls += 1
        if self.polls in self.on_poll:
            self.on_poll[self.polls]()
        for tp in sorted(self.assigned):
            log, at = self.logs[tp], self.pos[tp]
            if at < len(log):
                chunk = log[at : at + self.size]
                self.pos[tp] = at + len(chunk)
                return {tp: [Record(at + i, k, v) for i, (k, v) in enumerate(chunk)]}
        return {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        if tp not in self.assigned:
            raise IllegalStateError("not assigned")
        return self.pos[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos[tp] = offset

    def commit(self, offsets: dict[TopicPartition, Any], timeout_ms: int) -> None:
        self.commits.append({tp: o.offset for tp, o in offsets.items()})

    def close(self, autocommit: bool) -> None:
        pass


class FlakyStore(MemoryBarStore):
    """Fails the writes numbered in ``fail_at`` (1-based); records each write's thread."""

    def __init__(self, fail_at: set[int]) -> None:
        super().__init__()
        self.fail_at, self.calls, self.threads = fail_at, 0, set[str]()

    def write(self, bars: Sequence[BarRecord], **kwargs: Any) -> Written:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.calls in self.fail_at:
            raise StoreError(Path("mem"), "upsert", "injected")
        return super().write(bars, **kwargs)


def logs(per_partition: int) -> dict[TopicPartition, list[tuple[bytes, bytes]]]:
    out = {}
    for tp, symbol in ((P0, "AAA"), (P1, "BBB")):
        out[tp] = [
            (symbol.encode(), encode_bar(BarRecord(symbol, T0 + 60 * i, 10, 11, 9, 10, 1)))
            for i in range(per_partition)
        ]
    return out


def ingestor(consumer: FakeConsumer, store: MemoryBarStore, tmp_path: Path) -> Ingestor:
    producer = SimpleNamespace(config={"delivery_timeout_ms": 1000})
    settings = load_settings(data_dir=tmp_path / "data", kafka_poll_timeout_ms=1)
    return Ingestor(consumer, producer, store, settings)  # type: ignore[arg-type]


def drain(ing: Ingestor, store: MemoryBarStore, total: int) -> tuple[list[IngestReport], int]:
    reports, failures = [], 0
    for _ in range(200):
        if sum(store.counts().values()) >= total:
            break
        try:
            reports.append(ing.poll_once())
        except StoreError:
            failures += 1
    return reports, failures


def test_batches_are_written_on_the_writer_thread_and_read_ahead_in_order(
    tmp_path: Path,
) -> None:
    """Each call writes one batch on the writer thread and holds the next, validated; every
    report is of a stored and committed batch, in offset order per partition."""
    consumer, store = FakeConsumer(logs(10), size=3), FlakyStore(set())
    ing = ingestor(consumer, store, tmp_path)
    first = ing.poll_once()
    assert first.partitions == {P0: (0, 3)}
    assert ing._ahead is not None and ing._ahead.batch is not None
    assert ing._ahead.batch.spans == {P0: (3, 6)}  # read during the write, not yet written
    assert store.count("AAA") == 3 and consumer.commits == [{P0: 3}]
    reports, _ = drain(ing, store, 20)
    spans = [first.partitions, *(r.partitions for r in reports if r.messages)]
    assert [s[P0] for s in spans if P0 in s] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert consumer.commits[-1] == {P1: 10}
    assert store.threads == {"ctd-store-write_0"}
    ing.close()


def test_a_failed_write_rewinds_its_batch_and_the_one_read_ahead(tmp_path: Path) -> None:
    """The failed batch and the one read ahead come again; nothing is committed past what
    is stored, and every bar is stored."""
    consumer, store = FakeConsumer(logs(10), size=3), FlakyStore({2})
    ing = ingestor(consumer, store, tmp_path)
    ing.poll_once()  # offsets 0..3 stored; 3..6 read ahead
    with pytest.raises(StoreError):
        ing.poll_once()  # writing 3..6 fails while 6..9 was read ahead
    assert consumer.pos[P0] == 3 and ing._ahead is None
    assert consumer.commits == [{P0: 3}]
    _, failures = drain(ing, store, 20)
    assert failures == 0
    assert store.counts() == {"AAA": 10, "BBB": 10}
    ing.close()


def test_a_batch_read_ahead_is_dropped_when_the_consumer_moved(tmp_path: Path) -> None:
    """A seek between calls (a topic's catch-up) drops the batch read ahead: what the
    consumer now stands on is delivered instead."""
    consumer, store = FakeConsumer(logs(10), size=3), FlakyStore(set())
    ing = ingestor(consumer, store, tmp_path)
    ing.poll_once()
    consumer.seek(P0, 0)  # someone rewound the partition to its beginning
    again = ing.poll_once()
    assert again.partitions == {P0: (0, 3)}
    ing.close()


def test_a_rebalance_during_the_read_ahead_leaves_lost_partitions_out_of_the_report(
    tmp_path: Path,
) -> None:
    """The batch is stored and committed, but bars of a partition lost in the rebalance do
    not reach the live path; the batch read ahead is not used."""
    log = logs(4)
    log[P0] = [(k, v) for k, v in log[P0]] + log[P1]  # both symbols on P0, P1 unused
    log[P1] = []
    log[P2] = [(b"CCC", encode_bar(BarRecord("CCC", T0, 10, 11, 9, 10, 1)))]
    consumer, store = FakeConsumer(log, size=8), FlakyStore(set())
    ing = ingestor(consumer, store, tmp_path)
    consumer.on_poll[2] = lambda: consumer.assigned.discard(P0)  # lost during the read-ahead
    report = ing.poll_once()
    assert report.partitions == {P0: (0, 8)}
    assert store.counts() == {"AAA": 4, "BBB": 4}
    assert report.bars_by_symbol == {}
    assert ing._ahead is None  # P2's batch was polled under the new assignment: read again
    assert ing.poll_once().partitions == {P2: (0, 1)}
    ing.close()
