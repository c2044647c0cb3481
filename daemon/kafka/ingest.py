# Over 400 lines: the ingest step and its read-ahead share the consumer, the offset spans
# and every failure path (rewind, dead letters, undecodable batches).
"""One ingest step: poll -> validate -> dead-letter -> store -> commit.

The order is the delivery guarantee (DESIGN.md data flow): offsets are
committed only after every rejected message is confirmed on the DLQ and every
valid bar is in one durable store transaction. A failure before the commit
rewinds the consumer to the start of the batch, so the batch comes again
(at-least-once); the store's idempotent upsert by (symbol, ts) turns
re-delivery into exactly one row per bar.

The store write runs on a writer thread while the consumer thread polls and
validates the next batch (SQLite releases the GIL while it inserts and syncs).
Nothing else changes: ``poll_once`` returns only after its batch is durable and
its offsets committed (or it raised, rewound); the next batch, polled and
validated meanwhile, is held (``_Ahead``) and not yet dead-lettered, written or
committed. It is written by the next ``poll_once``, or dropped, to be
delivered again, if the consumer moved meanwhile (a rebalance, a seek) or
closes.

Validation is decoding (daemon.kafka.bars: an invalid message goes to the DLQ
whole) then the plausibility rules (daemon.kafka.plausibility): a message with
a rejected bar goes to the DLQ with a reason naming it, and its other bars are
stored with the batch.

A record batch the consumer cannot decode (daemon/undecodable.py) pauses its
partition alone for a bounded number of retries; then a reference to it
(topic, partition, offset range, reason) is confirmed on the DLQ, the
partition's position moves past it and that offset is committed. Those
records, and only those, are not stored.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import IllegalStateError, KafkaError, MessageSizeTooLargeError

from daemon.errors import DeadLetterError, InvalidMessage, StoreError
from daemon.kafka.bars import decode_bar_message
from daemon.kafka.dlq import dlq_payload
from daemon.kafka.plausibility import BarScreen, EdgeRules, Rule
from daemon.kafka.undecodable import UndecodableBatch, UndecodableBatches
from daemon.logs import get_logger
from daemon.settings import Settings
from daemon.store.bars import BarStore, Partition, Written
from trainers.data import BarRecord

_log = get_logger(component="ingest")

_SEND_GRACE_SECONDS = 5.0
"""Waited beyond the producer's own delivery timeout, so its error (not ours) is reported."""
_AHEAD_POLL_MS: Final = 2
"""While a write runs, the next poll waits this long a round (the write ends the rounds)."""

Spans = dict[TopicPartition, tuple[int, int]]
"""Per partition: (first offset, last offset + 1) of a batch."""


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one poll did; all zero/empty when the poll returned nothing."""

    messages: int
    valid_bars: int
    invalid: int
    new_bars: dict[str, int]
    """Rows the store did not have before, per symbol (re-deliveries count 0)."""
    bars_by_symbol: dict[str, list[BarRecord]]
    """The batch's valid bars in message order, for live scoring."""
    dlq_reasons: list[str]
    max_event_lag_seconds: float | None
    """Largest over the batch's symbols of (now - the symbol's latest ts); a late bar does not
    make it older. None without stored bars."""
    committed: bool = True
    """False if the offset commit failed (bars are stored; the batch may come again)."""
    partitions: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    """Per partition: (first offset, last offset + 1) of this batch."""
    undecodable: UndecodableBatch | None = None
    """The batch that failed to decode in this poll (nothing else was delivered)."""
    undecodable_skipped: bool = False
    """True when ``undecodable`` was out of retries: dead-lettered by reference, skipped."""
    received_at: float | None = None
    """``time.monotonic()`` when the poll returned the batch."""
    corrected: dict[str, int] = field(default_factory=dict)
    """Stored rows replaced by different values for the same (symbol, ts), per symbol."""
    implausible: dict[Rule, int] = field(default_factory=dict)
    """Valid bars a plausibility rule sent to the DLQ (with their message), per rule."""


_NOTHING = IngestReport(0, 0, 0, {}, {}, [], None)


@dataclass(frozen=True, slots=True)
class _Rejected:
    value: bytes | None
    key: bytes | None
    reason: str
    source: TopicPartition
    offset: int


@dataclass(frozen=True, slots=True)
class _Validated:
    """A polled batch, decoded and screened: what its write, commit and report need."""

    spans: Spans
    messages: int
    bars: list[BarRecord]
    rejected: list[_Rejected]
    sources: dict[str, Partition]
    implausible: dict[Rule, int]
    received_at: float


@dataclass(frozen=True, slots=True)
class _Ahead:
    """What the poll during the last write got: a batch, or the poll's failure (raised or
    handled by the next ``poll_once``, as if it had polled then)."""

    assignment: frozenset[TopicPartition]
    batch: _Validated | None = None
    error: Exception | None = None


def earliest(*spans: Spans) -> Spans:
    """Per partition, the span from the smallest first offset to the largest end: where a
    rewind must seek so that none of ``spans`` is skipped."""
    out: Spans = {}
    for span in spans:
        for tp, (first, end) in span.items():
            before = out.get(tp, (first, end))
            out[tp] = (min(first, before[0]), max(end, before[1]))
    return out


def in_place(ahead: Spans, positions: Mapping[TopicPartition, int | None]) -> bool:
    """True if the consumer stands where the batch read ahead left it (each partition's
    position is the batch's end): nothing seeked or reset it, so it can be written."""
    return all(positions.get(tp) == end for tp, (_first, end) in ahead.items())


class Ingestor:
    """Drives one consumer; not thread-safe: call ``poll_once`` from one thread."""

    def __init__(
        self, consumer: KafkaConsumer, producer: KafkaProducer, store: BarStore, settings: Settings
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._store = store
        self.screen = BarScreen(EdgeRules.from_settings(settings), store)
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._dlq_topic = settings.topic_dlq
        self._poll_timeout_ms = settings.kafka_poll_timeout_ms
        self._max_records = settings.kafka_max_poll_records
        # Bounded by the clients' own timeouts (from Settings), never forever.
        self._send_timeout = producer.config["delivery_timeout_ms"] / 1000 + _SEND_GRACE_SECONDS
        self._commit_timeout_ms: int = consumer.config["request_timeout_ms"]
        self._undecodable = UndecodableBatches(
            consumer,
            retries=settings.ingest_undecodable_retries,
            backoff_seconds=settings.ingest_undecodable_backoff_seconds,
        )
        self._ahead: _Ahead | None = None
        # One thread: writes stay in order, and only one is ever in flight.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ctd-store-write")

    def poll_once(self) -> IngestReport:
        """Process one poll's batch (or the one read ahead during the last call's write).

        Raises StoreError (store failed) or DeadLetterError (DLQ failed) after
        rewinding the consumer to the batch's first offsets (and those of a batch
        read ahead); nothing of them is committed then. Bad message content never
        raises, nor does a record batch that cannot be decoded (reported in
        ``undecodable``). Returns when the batch is stored and committed: no write
        is in flight between calls.
        """
        self._undecodable.resume_due()
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not self._still_valid(ahead):
            ahead = None
        if ahead is None:
            got = self._poll(self._poll_timeout_ms)
        elif ahead.error is not None:
            got = self._failed(ahead.error)
        else:
            got = ahead.batch
        if isinstance(got, IngestReport):
            return got
        if got is None:
            return _NOTHING
        batch = got
        try:
            self._dead_letter(batch.rejected)
        except (KafkaError, OSError) as exc:
            self._rewind(batch.spans)
            raise DeadLetterError(self._dlq_topic, exc) from exc
        write = self._writer.submit(
            self._store.write, batch.bars, positions=_ends(batch.spans), partitions=batch.sources
        )
        held = frozenset(self._consumer.assignment())
        self._ahead = self._read_ahead(write)
        try:
            written = write.result()
        except BaseException:
            ahead_spans = self._ahead.batch.spans if self._ahead and self._ahead.batch else {}
            self._ahead = None
            self._rewind(earliest(batch.spans, ahead_spans))
            raise
        committed = self._commit(batch.spans)
        lost = held - frozenset(self._consumer.assignment())
        return self._report(batch, written, committed, lost={(t.topic, t.partition) for t in lost})

    def _poll(self, timeout_ms: int) -> _Validated | IngestReport | None:
        """Poll and validate a batch: None if the poll returned nothing, a report if it met
        an undecodable batch. Raises as ``poll_once``, after rewinding the batch."""
        try:
            records = self._consumer.poll(timeout_ms=timeout_ms, max_records=self._max_records)
        except UndecodableBatch as exc:
            return self._on_undecodable(exc)
        received_at = time.monotonic()
        self._follow_assignment()
        return self._validated(records, received_at)

    def _validated(
        self, records: dict[TopicPartition, list[Any]], received_at: float
    ) -> _Validated | None:
        """``records`` decoded and screened; None if empty. Raises StoreError (the screen
        reads the store) after rewinding them."""
        spans = {tp: (m[0].offset, m[-1].offset + 1) for tp, m in records.items() if m}
        if not spans:
            return None
        try:
            bars, rejected, sources, implausible = self._validate(records)
        except StoreError:
            self._rewind(spans)
            raise
        messages = sum(len(msgs) for msgs in records.values())
        return _Validated(spans, messages, bars, rejected, sources, implausible, received_at)

    def _failed(self, error: Exception) -> IngestReport:
        """Handle (undecodable batch) or raise a failure the read-ahead poll met."""
        if isinstance(error, UndecodableBatch):
            return self._on_undecodable(error)
        raise error

    def _read_ahead(self, write: Future[Written]) -> _Ahead | None:
        """While ``write`` runs: poll and validate the next batch, polling again in short
        rounds until one arrives or the write is done. A failure is kept for the next
        call, which meets it as its own poll's."""
        assignment = frozenset(self._consumer.assignment())
        timeout_ms = 0
        try:
            while True:
                records = self._consumer.poll(timeout_ms=timeout_ms, max_records=self._max_records)
                got = self._validated(records, time.monotonic())
                if got is not None or write.done():
                    break
                timeout_ms = _AHEAD_POLL_MS
        except Exception as exc:  # UndecodableBatch, StoreError (batch rewound), Kafka errors
            return _Ahead(assignment, error=exc)
        if got is None:
            return None
        if frozenset(self._consumer.assignment()) != assignment:
            # A rebalance during the poll: the screen judged with a cache of the old
            # assignment. Deliver the batch again once the new one is followed.
            self._rewind_in_place(got.spans)
            return None
        return _Ahead(assignment, batch=got)

    def _still_valid(self, ahead: _Ahead) -> bool:
        """Whether what was read ahead can be used now. The ingest thread ran other work
        between the calls (a rebalance's rebuild, a topic's catch-up) that may have moved
        the consumer; then the batch is dropped, to be delivered again."""
        if frozenset(self._consumer.assignment()) == ahead.assignment and (
            ahead.batch is None or in_place(ahead.batch.spans, self._positions(ahead.batch))
        ):
            return True
        if ahead.batch is not None:
            self._rewind_in_place(ahead.batch.spans)
        return False

    def _positions(self, batch: _Validated) -> dict[TopicPartition, int | None]:
        """The consumer's position in each partition of ``batch`` (None: not assigned)."""
        out: dict[TopicPartition, int | None] = {}
        for tp in batch.spans:
            try:
                out[tp] = self._consumer.position(tp, timeout_ms=0)
            except IllegalStateError:
                out[tp] = None
        return out

    def _rewind_in_place(self, spans: Spans) -> None:
        """Seek back to its first offset each partition still where ``spans`` left it (the
        others were moved on purpose: a reset, a seek, a new owner); forget the screen."""
        self.screen.reset()
        for tp, (first, end) in spans.items():
            with contextlib.suppress(IllegalStateError):
                if self._consumer.position(tp, timeout_ms=0) == end:
                    self._consumer.seek(tp, first)

    def _report(
        self, batch: _Validated, written: Written, committed: bool, *, lost: set[Partition]
    ) -> IngestReport:
        """The report of a stored batch. A rebalance during the read-ahead poll may have
        taken some of its partitions: their bars are stored, but left out of
        ``bars_by_symbol``, as before the read-ahead no batch spanned a rebalance (the live
        path forgot those symbols; their new owner serves them)."""
        by_symbol: dict[str, list[BarRecord]] = defaultdict(list)
        for bar in batch.bars:
            by_symbol[bar.symbol].append(bar)
        for symbol in [s for s in by_symbol if batch.sources.get(s) in lost]:
            del by_symbol[symbol]
        now = time.time()
        latest = (self.screen.latest(symbol) for symbol in by_symbol)
        lag = max((now - ts for ts in latest if ts is not None), default=None)
        return IngestReport(
            messages=batch.messages,
            valid_bars=len(batch.bars),
            invalid=len(batch.rejected),
            new_bars=written.new,
            bars_by_symbol=dict(by_symbol),
            dlq_reasons=[r.reason for r in batch.rejected],
            max_event_lag_seconds=lag,
            committed=committed,
            partitions=batch.spans,
            received_at=batch.received_at,
            corrected={s: n for s, n in written.corrected.items() if n},
            implausible=batch.implausible,
        )

    def _validate(
        self, batch: dict[TopicPartition, list[Any]]
    ) -> tuple[list[BarRecord], list[_Rejected], dict[str, Partition], dict[Rule, int]]:
        """Decode and screen every message: the bars to store, the messages to dead-letter
        (invalid, or with a bar a plausibility rule rejects), each symbol's partition and
        the rejected bars per rule. Raises StoreError (the screen reads the store)."""
        bars: list[BarRecord] = []
        rejected: list[_Rejected] = []
        sources: dict[str, Partition] = {}
        implausible: dict[Rule, int] = {}
        now = time.time()
        for tp, msgs in batch.items():
            for msg in msgs:
                try:
                    decoded = decode_bar_message(msg.value, msg.key)
                except InvalidMessage as exc:
                    rejected.append(_Rejected(msg.value, msg.key, exc.reason, tp, msg.offset))
                    continue
                except Exception as exc:  # a decoder bug must not stop ingest: keep the message
                    reason = f"decoder failed: {type(exc).__name__}: {exc}"
                    rejected.append(_Rejected(msg.value, msg.key, reason, tp, msg.offset))
                    continue
                screened = self.screen.screen(decoded, now)
                if screened.rejected:
                    reason = screened.reason()
                    rejected.append(_Rejected(msg.value, msg.key, reason, tp, msg.offset))
                    for r in screened.rejected:
                        implausible[r.rule] = implausible.get(r.rule, 0) + 1
                if screened.accepted:
                    bars.extend(screened.accepted)
                    sources[decoded[0].symbol] = (tp.topic, tp.partition)
        return bars, rejected, sources, implausible

    def _follow_assignment(self) -> None:
        """After a rebalance another daemon may have stored bars of the partitions this one
        gained (daemon.kafka.rebuild): the screen re-reads its symbols from the store."""
        assignment = frozenset(self._consumer.assignment())
        if assignment != self._assignment:
            self._assignment = assignment
            self.screen.reset()

    def _on_undecodable(self, exc: UndecodableBatch) -> IngestReport:
        """Pause the partition for a retry, or (out of retries) dead-letter a reference to
        the batch, skip it and commit past it. Raises DeadLetterError if the DLQ fails:
        the partition then stays where it is and the next retry tries again."""
        if not self._undecodable.failed(exc):
            return IngestReport(0, 0, 0, {}, {}, [], None, undecodable=exc)
        tp = exc.partition
        reference = dlq_payload(
            None,
            exc.reason,
            topic=tp.topic,
            partition=tp.partition,
            offset=exc.first,
            end_offset=exc.end,
            key=None,
        )
        try:
            self._producer.send(self._dlq_topic, value=reference).get(timeout=self._send_timeout)
        except (KafkaError, OSError) as err:
            raise DeadLetterError(self._dlq_topic, err) from err
        self._store.upsert([], positions=_ends({tp: (exc.first, exc.end)}))
        self._undecodable.skip(exc)
        committed = self._commit({tp: (exc.first, exc.end)})
        return IngestReport(
            0,
            0,
            0,
            {},
            {},
            [],
            None,
            committed=committed,
            undecodable=exc,
            undecodable_skipped=True,
        )

    def _dead_letter(self, rejected: list[_Rejected]) -> None:
        """Send every rejected message to the DLQ and wait until the broker confirmed all."""
        if not rejected:
            return
        sent = [(r, self._send(r, full=True)) for r in rejected]
        self._producer.flush(timeout=self._send_timeout)
        for r, future in sent:
            try:
                future.get(timeout=self._send_timeout)
            except MessageSizeTooLargeError:
                # The broker's limit is below ours: keep the reason and the source position.
                self._send(r, full=False).get(timeout=self._send_timeout)

    def _send(self, r: _Rejected, *, full: bool) -> Any:
        """Produce one DLQ record; without ``full`` the original bytes are left out.

        A DLQ record is ~4/3 of the original (base64), so a message near the
        size limit cannot be dead-lettered whole; dropping it instead would
        stall ingest on it forever. Its reason then says where to find it.
        """
        reason, value, src = r.reason, r.value, r.source
        if not full:
            size = len(value) if value is not None else 0
            reason += (
                f" [original of {size} bytes too large for the DLQ;"
                f" read it at {src.topic} partition {src.partition} offset {r.offset}]"
            )
            value = None
        payload = dlq_payload(
            value, reason, topic=src.topic, partition=src.partition, offset=r.offset, key=r.key
        )
        try:
            return self._producer.send(self._dlq_topic, value=payload, key=r.key)
        except MessageSizeTooLargeError:
            if not full:
                raise
            return self._send(r, full=False)

    def _commit(self, spans: dict[TopicPartition, tuple[int, int]]) -> bool:
        offsets = {tp: OffsetAndMetadata(end, "", -1) for tp, (_first, end) in spans.items()}
        try:
            self._consumer.commit(offsets, timeout_ms=self._commit_timeout_ms)
        except KafkaError as exc:
            # The bars are durable; whoever owns the partitions next re-reads them harmlessly.
            _log.warning("ingest_commit_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _rewind(self, spans: dict[TopicPartition, tuple[int, int]]) -> None:
        """Seek back to each partition's first offset of the batch so it is delivered again;
        the screen, which counted the batch's bars as accepted, re-reads the store then."""
        self.screen.reset()
        for tp, (first, _end) in spans.items():
            # ValueError: revoked meanwhile; the new owner starts from the committed offset.
            with contextlib.suppress(ValueError):
                self._consumer.seek(tp, first)

    def close(self) -> None:
        """Leave the group without committing anything not already committed (a batch read
        ahead is dropped: delivered again to whoever reads the partition next)."""
        self._ahead = None
        self._writer.shutdown(wait=True)
        self._consumer.close(autocommit=False)


def _ends(spans: dict[TopicPartition, tuple[int, int]]) -> dict[Partition, int]:
    return {(tp.topic, tp.partition): end for tp, (_first, end) in spans.items()}
