"""Ingest against the real local broker and a real SQLite store in tmp_path.

Pins the delivery contract: rejected messages are confirmed on the DLQ and
valid bars are in one store transaction before any offset is committed; a
failure before the commit re-delivers the batch; re-delivery stores nothing twice.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from daemon.errors import DeadLetterError, StoreError
from daemon.kafka.bars import decode_bar_message, encode_bar, encode_batch
from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import make_consumer, make_producer
from daemon.kafka.ingest import Ingestor, IngestReport
from daemon.settings import Settings
from daemon.store.bars import BarStore
from tests.support.helpers import read_topic, wait_for
from trainers.data import BarRecord

pytestmark = pytest.mark.integration

T0 = 1_735_689_600  # 2025-01-01T00:00:00Z


def bar(symbol: str, i: int, close: float = 100.0) -> BarRecord:
    return BarRecord(symbol, T0 + 60 * i, close, close + 1.0, close - 1.0, close + 0.5, 10.0 + i)


Message = tuple[bytes | None, bytes | None]  # (key, value)


def single(record: BarRecord) -> Message:
    return record.symbol.encode(), encode_bar(record)


class Kit:
    """Builds clients and stores for one test and closes all of them at teardown."""

    def __init__(self, settings: Settings, stack: ExitStack) -> None:
        self.settings = settings
        self.bootstrap = settings.kafka_bootstrap_servers or ""
        self._stack = stack
        self.producer = self.new_producer()

    def new_producer(self) -> Any:
        producer = make_producer(self.settings, self.bootstrap)
        self._stack.callback(producer.close, timeout=1)
        return producer

    def consumer(self) -> KafkaConsumer:
        consumer = make_consumer(self.settings, self.bootstrap)
        self._stack.callback(consumer.close, autocommit=False)
        return consumer

    def store(self) -> BarStore:
        store = BarStore(self.settings.paths.bars)
        self._stack.callback(store.close)
        return store

    def ingestor(
        self,
        consumer: KafkaConsumer,
        store: BarStore,
        producer: KafkaProducer | None = None,
        **overrides: Any,
    ) -> Ingestor:
        settings = self.settings.model_copy(update={"kafka_poll_timeout_ms": 200, **overrides})
        return Ingestor(consumer, producer or self.producer, store, settings)

    def produce(self, messages: list[Message]) -> dict[TopicPartition, int]:
        """Send in order and wait for every ack; return the next offset per partition."""
        futures = [
            self.producer.send(self.settings.topic_bars, key=k, value=v) for k, v in messages
        ]
        ends: dict[TopicPartition, int] = {}
        for future in futures:
            meta = future.get(timeout=10)
            tp = TopicPartition(meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
        return ends


@pytest.fixture
def kit(settings_factory: Callable[..., Settings]) -> Iterator[Kit]:
    with ExitStack() as stack:
        yield Kit(settings_factory(), stack)


def drain(ingestor: Ingestor, messages: int, timeout: float = 20.0) -> list[IngestReport]:
    """poll_once until ``messages`` messages were processed; then one more, empty, poll."""
    reports: list[IngestReport] = []

    def done() -> bool:
        reports.append(ingestor.poll_once())
        return sum(r.messages for r in reports) >= messages

    wait_for(done, timeout, interval=0, message=f"{messages} messages ingested")
    extra = ingestor.poll_once()
    assert extra.messages == 0, "more messages than produced: something was re-delivered"
    return reports


def committed(consumer: KafkaConsumer, topic: str) -> dict[TopicPartition, int | None]:
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    return {tp: consumer.committed(tp, timeout_ms=5000) for tp in tps}


def new_totals(reports: list[IngestReport]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for r in reports:
        for symbol, n in r.new_bars.items():
            totals[symbol] = totals.get(symbol, 0) + n
    return totals


def test_valid_bars_are_stored_and_exactly_the_batch_is_committed(
    kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single and batch bars are stored, offsets commit as last+1, nothing is written elsewhere."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    btc = [bar("BTCUSDT", i) for i in range(5)]
    eth = [bar("ETHUSDT", i, close=50.0) for i in range(10)]
    ends = kit.produce([*map(single, btc), (b"ETHUSDT", encode_batch("ETHUSDT", eth))])
    consumer, store = kit.consumer(), kit.store()

    reports = drain(kit.ingestor(consumer, store), messages=6)

    assert sum(r.valid_bars for r in reports) == 15
    assert sum(r.invalid for r in reports) == 0
    assert all(r.committed for r in reports)
    assert new_totals(reports) == {"BTCUSDT": 5, "ETHUSDT": 10}
    seen = [b for r in reports for bs in r.bars_by_symbol.values() for b in bs]
    assert sorted(seen, key=lambda b: (b.symbol, b.ts)) == btc + eth
    stored = store.load("ETHUSDT")
    assert stored.ts.tolist() == [b.ts for b in eth]
    assert stored.close.tolist() == [b.close for b in eth]
    assert store.counts() == {"BTCUSDT": 5, "ETHUSDT": 10}
    # The lag is the stalest symbol's: BTCUSDT's newest bar is older than ETHUSDT's.
    lag = max(r.max_event_lag_seconds or 0.0 for r in reports)
    assert abs(lag - (time.time() - btc[-1].ts)) < 30

    got = {tp: off for tp, off in committed(consumer, kit.settings.topic_bars).items() if off}
    assert got == ends
    assert {tp: end for r in reports for tp, (_, end) in r.partitions.items()} == ends
    assert list(workdir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "data"]
    assert {p.name for p in (tmp_path / "data").iterdir()} <= {
        "bars.sqlite",
        "bars.sqlite-wal",
        "bars.sqlite-shm",
    }


BAD: list[tuple[str, Message]] = [
    ("JSON", (b"AAPL", b"{not json")),
    ("missing field", (b"AAPL", b'{"symbol":"AAPL","ts":1735689600,"open":1,"high":2,"low":1}')),
    (
        "NaN",
        (
            b"AAPL",
            b'{"symbol":"AAPL","ts":1735689600,"open":NaN,"high":2,"low":1,"close":1,"volume":1}',
        ),
    ),
    (
        "open",
        (
            b"AAPL",
            b'{"symbol":"AAPL","ts":1735689600,"open":-1,"high":2,"low":1,"close":1,"volume":1}',
        ),
    ),
    (
        "high",
        (
            b"AAPL",
            b'{"symbol":"AAPL","ts":1735689600,"open":10,"high":5,"low":20,"close":10,"volume":1}',
        ),
    ),
    (
        "symbol",
        (
            b"../x",
            b'{"symbol":"../x","ts":1735689600,"open":1,"high":2,"low":1,"close":1,"volume":1}',
        ),
    ),
    ("null", (b"AAPL", None)),
    ("UTF-8", (None, b"\xff\xfe\x00garbage")),
]


def test_invalid_messages_go_to_the_dlq_and_valid_ones_around_them_are_stored(kit: Kit) -> None:
    """Each bad message reaches the DLQ with reason, original bytes, key; good ones are stored."""
    good = [bar("AAPL", i) for i in range(5)]
    messages = [
        single(good[0]),
        *(m for _, m in BAD[:4]),
        single(good[1]),
        *(m for _, m in BAD[4:]),
        (b"AAPL", encode_batch("AAPL", good[2:])),
    ]
    ends = kit.produce(messages)
    consumer, store = kit.consumer(), kit.store()

    reports = drain(kit.ingestor(consumer, store), messages=len(messages))

    assert sum(r.invalid for r in reports) == len(BAD)
    assert sum(len(r.dlq_reasons) for r in reports) == len(BAD)
    assert store.counts() == {"AAPL": 5}
    assert store.load("AAPL").ts.tolist() == [b.ts for b in good]
    dlq = read_topic(kit.bootstrap, kit.settings.topic_dlq, at_least=len(BAD))
    assert len(dlq) == len(BAD)
    by_original: dict[bytes | None, tuple[bytes | None, dict[str, Any]]] = {}
    for record in dlq:
        payload = json.loads(record.value)
        raw = payload["original_base64"]
        by_original[None if raw is None else base64.b64decode(raw)] = (record.key, payload)
    for expected_in_reason, (key, value) in BAD:
        dlq_key, payload = by_original[value]
        assert dlq_key == key
        assert payload["topic"] == kit.settings.topic_bars
        assert expected_in_reason in payload["reason"], payload["reason"]
    got = {tp: off for tp, off in committed(consumer, kit.settings.topic_bars).items() if off}
    assert got == ends


def test_implausible_bars_go_to_the_dlq_and_the_rest_of_their_batch_is_stored(kit: Kit) -> None:
    """A bar a century ahead (alone or inside a batch) and a symbol beyond max_symbols are
    dead-lettered with their message and a reason; the batch's other bars are stored."""
    century = int(time.time()) + 100 * 365 * 86_400
    batch = [bar("AAA", i) for i in range(1, 6)]
    batch.insert(3, BarRecord("AAA", century, 100.0, 101.0, 99.0, 100.5, 1.0))
    messages = [
        (b"AAA", encode_batch("AAA", batch)),
        single(BarRecord("AAA", century + 60, 100.0, 101.0, 99.0, 100.5, 1.0)),
        single(bar("BBB", 1)),
        single(bar("CCC", 0)),  # a third symbol: over max_symbols 2
    ]
    ends = kit.produce(messages)
    consumer, store = kit.consumer(), kit.store()
    store.upsert([bar("AAA", 0), bar("BBB", 0)])  # partitions interleave: fix who was first

    reports = drain(kit.ingestor(consumer, store, max_symbols=2), messages=len(messages))

    assert store.counts() == {"AAA": 6, "BBB": 2}
    assert store.load("AAA").ts.max() < century
    totals: dict[str, int] = {}
    for r in reports:
        for rule, n in r.implausible.items():
            totals[rule] = totals.get(rule, 0) + n
    assert totals == {"future": 2, "symbol_cap": 1}
    assert all(r.max_event_lag_seconds is None or r.max_event_lag_seconds > 0 for r in reports)
    dlq = read_topic(kit.bootstrap, kit.settings.topic_dlq, at_least=3)
    by_original = {
        base64.b64decode(p["original_base64"]): p for p in (json.loads(d.value) for d in dlq)
    }
    assert len(dlq) == len(by_original) == 3
    reason = by_original[messages[0][1]]["reason"]
    assert reason.startswith(("bars[3]: ts 2126-", "bars[3]: ts 2127-"))
    assert reason.endswith("(1 of 6 bars rejected, 5 stored)")
    assert "s ahead of the daemon's clock" in by_original[messages[1][1]]["reason"]
    assert by_original[messages[3][1]]["reason"] == (
        "new symbol 'CCC' refused: the store holds max_symbols 2 symbols already"
    )
    got = {tp: off for tp, off in committed(consumer, kit.settings.topic_bars).items() if off}
    assert got == ends


def test_late_bars_are_stored_without_aging_the_lag_and_corrections_are_counted(
    kit: Kit,
) -> None:
    """A bar 30 days late is stored, but the lag still measures the symbol's newest bar; a
    bar with a stored (symbol, ts) and other values replaces it and is counted once."""
    kit.produce([single(bar("AAA", i)) for i in range(5)])
    consumer, store = kit.consumer(), kit.store()
    ingestor = kit.ingestor(consumer, store)
    drain(ingestor, messages=5)
    late = bar("AAA", -30 * 24 * 60)._replace(volume=1.0)
    corrected = bar("AAA", 2, close=150.0)
    kit.produce([single(late), single(corrected), single(bar("AAA", 3))])

    reports = drain(ingestor, messages=3)

    assert store.count("AAA") == 6
    assert store.load("AAA").close.tolist()[3] == corrected.close
    assert [r.corrected for r in reports if r.messages] == [{"AAA": 1}]
    lags = [r.max_event_lag_seconds for r in reports if r.messages]
    newest = bar("AAA", 4).ts
    assert all(lag is not None and lag <= time.time() - newest for lag in lags)
    assert all(lag is not None and lag < time.time() - late.ts - 86_400 for lag in lags)


def test_same_bars_twice_are_stored_once(kit: Kit) -> None:
    """A bar produced twice (producer retry, replay) yields one row and counts as new once."""
    bars = [bar("BTCUSDT", i) for i in range(10)]
    kit.produce([*map(single, bars), *map(single, bars)])
    store = kit.store()

    reports = drain(kit.ingestor(kit.consumer(), store), messages=20)

    assert sum(r.valid_bars for r in reports) == 20
    assert new_totals(reports) == {"BTCUSDT": 10}
    assert store.count("BTCUSDT") == 10
    assert len(store.load("BTCUSDT")) == 10


def test_consumer_restarted_before_commit_gets_the_batch_again(kit: Kit) -> None:
    """Bars stored but not committed (a crash in between) come again and still give one row each."""
    bars = [bar("ETHUSDT", i) for i in range(10)]
    ends = kit.produce(list(map(single, bars)))
    store = kit.store()
    first = kit.consumer()
    polled: list[Any] = []

    def all_polled() -> bool:
        for records in first.poll(timeout_ms=200).values():
            polled.extend(records)
        return len(polled) >= len(bars)

    wait_for(all_polled, timeout=20, interval=0, message="first consumer polled everything")
    assert store.upsert([b for m in polled for b in decode_bar_message(m.value, m.key)]) == {
        "ETHUSDT": 10
    }
    first.close(autocommit=False)  # the "crash": stored, never committed

    second = kit.consumer()
    reports = drain(kit.ingestor(second, store), messages=len(bars))

    assert sum(r.valid_bars for r in reports) == 10
    assert new_totals(reports) == {"ETHUSDT": 0}
    assert store.count("ETHUSDT") == 10
    got = {tp: off for tp, off in committed(second, kit.settings.topic_bars).items() if off}
    assert got == ends


def test_store_error_commits_nothing_and_the_batch_comes_again(kit: Kit) -> None:
    """When the store fails, no offset is committed and the same consumer re-delivers the batch."""
    bars = [bar("AAPL", i) for i in range(10)]
    ends = kit.produce(list(map(single, bars)))
    consumer = kit.consumer()
    broken = BarStore(kit.settings.paths.bars)
    broken.close()  # every later call raises StoreError, as a failed disk would
    poll_until_raises(kit.ingestor(consumer, broken), StoreError)
    assert all(off is None for off in committed(consumer, kit.settings.topic_bars).values())

    store = kit.store()
    reports = drain(kit.ingestor(consumer, store), messages=len(bars))

    assert new_totals(reports) == {"AAPL": 10}
    assert store.count("AAPL") == 10
    got = {tp: off for tp, off in committed(consumer, kit.settings.topic_bars).items() if off}
    assert got == ends


def poll_until_raises(ingestor: Ingestor, error: type[Exception]) -> None:
    """poll_once until it raises ``error``; no poll before that may let a message through."""

    def raised() -> bool:
        try:
            report = ingestor.poll_once()
        except error:
            return True
        assert report.messages == 0, f"a batch went through before {error.__name__}"
        return False

    wait_for(raised, timeout=20, interval=0, message=f"poll_once raised {error.__name__}")


def fail_on_unreachable_dlq(kit: Kit, consumer: KafkaConsumer, store: BarStore) -> None:
    """poll_once with a DLQ producer whose broker is gone, until it raises DeadLetterError."""
    with LocalBroker() as gone:
        quick = kit.settings.model_copy(update={"kafka_request_timeout_ms": 1000})
        dead_producer = make_producer(quick, gone.bootstrap_servers)
    try:
        poll_until_raises(kit.ingestor(consumer, store, producer=dead_producer), DeadLetterError)
    finally:
        dead_producer.close(timeout=5)


# kafka-python 3.0.12 leaves the socket of a refused connect to the garbage collector,
# which warns. Its logged tracebacks would keep those sockets alive in pytest's log
# capture, so kafka's logs are muted and the collector runs while this test's filter holds.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_dlq_failure_commits_nothing_and_the_batch_comes_again(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """With the DLQ unreachable nothing is stored or committed; a later attempt delivers it all."""
    caplog.set_level(logging.CRITICAL, logger="kafka")
    bad_key, bad_value = BAD[0][1]
    kit.produce([(bad_key, bad_value), single(bar("AAPL", 0))])
    consumer, store = kit.consumer(), kit.store()

    fail_on_unreachable_dlq(kit, consumer, store)
    gc.collect()

    assert store.counts() == {}
    assert all(off is None for off in committed(consumer, kit.settings.topic_bars).values())
    reports = drain(kit.ingestor(consumer, store), messages=2)
    assert sum(r.invalid for r in reports) == 1
    assert store.count("AAPL") == 1
    [dead] = read_topic(kit.bootstrap, kit.settings.topic_dlq, at_least=1)
    assert base64.b64decode(json.loads(dead.value)["original_base64"]) == bad_value


def test_message_too_large_for_the_dlq_is_dead_lettered_by_reference(kit: Kit) -> None:
    """A rejected message too big to copy into the DLQ is referenced there, not dropped."""
    huge = b"[" + b"1," * 450_000 + b"1]"  # ~900 KB: fine as a bar message, too big once base64'd
    ends = kit.produce([(b"AAPL", huge), single(bar("AAPL", 0))])
    store = kit.store()

    reports = drain(kit.ingestor(kit.consumer(), store), messages=2)

    assert sum(r.invalid for r in reports) == 1
    assert store.count("AAPL") == 1
    [dead] = read_topic(kit.bootstrap, kit.settings.topic_dlq, at_least=1)
    payload = json.loads(dead.value)
    assert payload["original_base64"] is None
    assert "too large for the DLQ" in payload["reason"]
    [(tp, _)] = [(tp, end) for tp, end in ends.items()]
    assert f"{kit.settings.topic_bars} partition {tp.partition} offset" in payload["reason"]
