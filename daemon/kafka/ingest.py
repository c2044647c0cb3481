"""One ingest step: poll -> validate -> dead-letter -> store -> commit.

The order is the delivery guarantee (DESIGN.md data flow): offsets are
committed only after every rejected message is confirmed on the DLQ and every
valid bar is in one durable store transaction. A failure before the commit
rewinds the consumer to the start of the batch, so the batch comes again
(at-least-once); the store's idempotent upsert by (symbol, ts) turns
re-delivery into exactly one row per bar.

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
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError

from daemon.errors import DeadLetterError, InvalidMessage, StoreError
from daemon.kafka.bars import decode_bar_message
from daemon.kafka.dlq import dlq_payload
from daemon.kafka.plausibility import BarScreen, EdgeRules, Rule
from daemon.kafka.undecodable import UndecodableBatch, UndecodableBatches
from daemon.logs import get_logger
from daemon.settings import Settings
from daemon.store.bars import BarStore, Partition
from trainers.data import BarRecord

_log = get_logger(component="ingest")

_SEND_GRACE_SECONDS = 5.0
"""Waited beyond the producer's own delivery timeout, so its error (not ours) is reported."""


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

    def poll_once(self) -> IngestReport:
        """Process one poll's batch.

        Raises StoreError (store failed) or DeadLetterError (DLQ failed) after
        rewinding the consumer to the batch's first offsets; nothing of the
        batch is committed then. Bad message content never raises, nor does a
        record batch that cannot be decoded (reported in ``undecodable``).
        """
        self._undecodable.resume_due()
        try:
            batch: dict[TopicPartition, list[Any]] = self._consumer.poll(
                timeout_ms=self._poll_timeout_ms, max_records=self._max_records
            )
        except UndecodableBatch as exc:
            return self._on_undecodable(exc)
        received_at = time.monotonic()
        spans = {tp: (msgs[0].offset, msgs[-1].offset + 1) for tp, msgs in batch.items() if msgs}
        self._follow_assignment()
        if not spans:
            return _NOTHING
        try:
            bars, rejected, sources, implausible = self._validate(batch)  # reads the store
            self._dead_letter(rejected)
        except (KafkaError, OSError) as exc:
            self._rewind(spans)
            raise DeadLetterError(self._dlq_topic, exc) from exc
        except StoreError:
            self._rewind(spans)
            raise
        try:
            written = self._store.write(bars, positions=_ends(spans), partitions=sources)
        except StoreError:
            self._rewind(spans)
            raise
        committed = self._commit(spans)
        by_symbol: dict[str, list[BarRecord]] = defaultdict(list)
        for bar in bars:
            by_symbol[bar.symbol].append(bar)
        now = time.time()
        latest = (self.screen.latest(symbol) for symbol in by_symbol)
        lag = max((now - ts for ts in latest if ts is not None), default=None)
        return IngestReport(
            messages=sum(len(msgs) for msgs in batch.values()),
            valid_bars=len(bars),
            invalid=len(rejected),
            new_bars=written.new,
            bars_by_symbol=dict(by_symbol),
            dlq_reasons=[r.reason for r in rejected],
            max_event_lag_seconds=lag,
            committed=committed,
            partitions=spans,
            received_at=received_at,
            corrected={s: n for s, n in written.corrected.items() if n},
            implausible=implausible,
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
        """Leave the group without committing anything not already committed."""
        self._consumer.close(autocommit=False)


def _ends(spans: dict[TopicPartition, tuple[int, int]]) -> dict[Partition, int]:
    return {(tp.topic, tp.partition): end for tp, (_first, end) in spans.items()}
