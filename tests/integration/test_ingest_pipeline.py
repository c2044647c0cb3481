"""The store write on its writer thread, against the real broker and a real SQLite store:
each report's bars are durable and committed when it is returned, in order per partition,
and a failed write rewinds past nothing (daemon/kafka/ingest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import pytest
from kafka import TopicPartition

from daemon.errors import StoreError
from daemon.kafka.bars import encode_bar, encode_batch
from daemon.kafka.ingest import Ingestor, IngestReport
from daemon.settings import Settings
from daemon.store.bars import BarStore, Partition, Written
from tests.integration.test_ingest import Kit, Message, bar, committed
from tests.support.helpers import wait_for
from trainers.data import BarRecord

pytestmark = pytest.mark.integration

SYMBOLS = ("PA", "PB", "PC", "PD", "PE", "PF")


@pytest.fixture
def kit(settings_factory: Callable[..., Settings]) -> Iterator[Kit]:
    # Small polls: many batches, so most writes overlap the next poll.
    with ExitStack() as stack:
        yield Kit(settings_factory(kafka_max_poll_records=7), stack)


class FailingStore(BarStore):
    """A real store whose ``write`` calls number ``fail_at`` (1-based) raise StoreError,
    on the writer thread, after a pause that lets the next poll run meanwhile."""

    def __init__(self, *args: Any, fail_at: set[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_at, self.calls, self.threads = fail_at, 0, set[str]()

    def write(
        self,
        bars: Sequence[BarRecord],
        *,
        positions: Mapping[Partition, int] | None = None,
        partitions: Mapping[str, Partition] | None = None,
    ) -> Written:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.calls in self.fail_at:
            threading.Event().wait(0.05)
            raise StoreError(self.path, "upsert", f"injected failure of write {self.calls}")
        return super().write(bars, positions=positions, partitions=partitions)


def feed(kit: Kit, per_symbol: int) -> list[BarRecord]:
    """Each symbol's bars in order, alternating single and 3-bar batch messages."""
    sent: list[BarRecord] = []
    messages: list[Message] = []
    for symbol in SYMBOLS:
        i = 0
        while i < per_symbol:
            if i % 2:
                chunk = [bar(symbol, i + k) for k in range(min(3, per_symbol - i))]
                messages.append((symbol.encode(), encode_batch(symbol, chunk)))
            else:
                chunk = [bar(symbol, i)]
                messages.append((symbol.encode(), encode_bar(chunk[0])))
            sent += chunk
            i += len(chunk)
    kit.produce(messages)
    return sent


def check_durable(kit: Kit, store: BarStore, ingestor: Ingestor, report: IngestReport) -> None:
    """What a caller may rely on when ``poll_once`` returns: the bars are in the store and
    no committed offset is ahead of what the store holds."""
    if not report.messages:  # (asking for committed offsets during the join stalls it)
        return
    for symbol, records in report.bars_by_symbol.items():
        stored = set(store.load(symbol).ts.tolist())
        assert {r.ts for r in records} <= stored, symbol
    positions = store.positions()
    for tp, offset in committed(ingestor._consumer, kit.settings.topic_bars).items():
        if offset is not None:
            assert offset <= positions.get((tp.topic, tp.partition), 0), (tp, offset, positions)


def run(
    kit: Kit, store: BarStore, ingestor: Ingestor, messages: int
) -> tuple[list[IngestReport], int]:
    """poll_once until every message was processed once after the last failure; the
    reports and how many calls raised StoreError."""
    reports: list[IngestReport] = []
    failures = 0
    seen: dict[TopicPartition, int] = {}

    def step() -> bool:
        nonlocal failures
        try:
            report = ingestor.poll_once()
        except StoreError:
            failures += 1
            seen.clear()  # rewound: the batches come again
            return False
        check_durable(kit, store, ingestor, report)
        for tp, (first, end) in report.partitions.items():
            assert first >= seen.get(tp, 0), "a partition went backwards without a failure"
            seen[tp] = end
        reports.append(report)
        return False

    def total() -> int:
        return sum(store.counts().values())

    wait_for(lambda: step() or total() >= messages, 60, interval=0, message="all stored")
    return reports, failures


def test_each_report_is_durable_and_in_order_when_returned(kit: Kit) -> None:
    """With writes on the writer thread, every returned batch is stored and committed, and
    each symbol's bars arrive in the order they were produced."""
    sent = feed(kit, per_symbol=60)
    store = FailingStore(kit.settings.paths.bars, fail_at=set())
    consumer = kit.consumer()
    ingestor = kit.ingestor(consumer, store, kafka_max_poll_records=7)
    reports, failures = run(kit, store, ingestor, len(sent))
    ingestor.close()
    store.close()

    assert failures == 0
    assert store.threads == {"ctd-store-write_0"}, store.threads
    got: dict[str, list[int]] = {}
    for r in reports:
        for symbol, records in r.bars_by_symbol.items():
            got.setdefault(symbol, []).extend(x.ts for x in records)
    want: dict[str, list[int]] = {}
    for b in sent:
        want.setdefault(b.symbol, []).append(b.ts)
    assert got == want
    assert all(r.committed for r in reports)


def test_a_failed_write_rewinds_and_the_batches_come_again(kit: Kit) -> None:
    """A write that fails (with the next batch already read ahead) raises StoreError, commits
    nothing of either batch, and the rewind re-delivers both: every bar ends up stored once,
    none skipped."""
    sent = feed(kit, per_symbol=40)
    store = FailingStore(kit.settings.paths.bars, fail_at={3, 4, 9})
    consumer = kit.consumer()
    ingestor = kit.ingestor(consumer, store, kafka_max_poll_records=7)
    _reports, failures = run(kit, store, ingestor, len(sent))
    end = committed(consumer, kit.settings.topic_bars)
    ingestor.close()

    assert failures == 3
    counts = store.counts()
    assert counts == dict.fromkeys(SYMBOLS, 40)
    for symbol in SYMBOLS:
        stored = store.load(symbol).ts.tolist()
        assert stored == sorted({b.ts for b in sent if b.symbol == symbol}), symbol
    positions = store.positions()
    for tp, offset in end.items():
        assert offset is None or offset <= positions[(tp.topic, tp.partition)]
    store.close()
