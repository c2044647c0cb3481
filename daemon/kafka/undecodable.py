"""Record batches a consumer cannot decode: named, retried with backoff, then skipped by reference.

A fetched record batch can fail to decode at the protocol level: a codec
whose library is missing, corrupt compressed data, a CRC mismatch. No original
bytes of its records exist for ctd then, so the batch cannot be dead-lettered
message by message; what can be kept is where it is (topic, partition, offset
range) and why it failed.

kafka-python 3.0.12 raises such a failure from ``poll()`` without saying which
partition it came from, and then spins forever inside the next ``poll()``: the
failed record iterator is never drained. ``guard_consumer`` swaps in, for one
consumer, a subclass of the fetcher's per-partition record holder that drains
on failure, so the next fetch of the partition gets the batch again and fails
again (as the Java client does, KAFKA-5630), and raises ``UndecodableBatch``
with the partition and the offset range. ``UndecodableBatches`` then pauses
that partition alone, retries it a bounded number of times with backoff while
the other partitions keep flowing, and tells its caller when to give up and
skip the range.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import Fetcher

MAX_BACKOFF_SECONDS: Final = 60.0
_CODEC_NAMES: Final = {0: "uncompressed", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class UndecodableBatch(Exception):
    """Records ``[first, end)`` of ``partition`` were fetched but cannot be decoded.

    ``first`` is the consumer's position (the first record not yet delivered);
    ``end`` the offset after the failing batch, read from the batch header (which
    is never compressed), or ``first + 1`` where the header gave none.
    """

    def __init__(
        self, partition: TopicPartition, first: int, end: int, codec: str, cause: BaseException
    ) -> None:
        self.partition, self.first, self.end = partition, first, end
        self.reason = f"undecodable {codec} record batch: {type(cause).__name__}: {cause}"
        super().__init__(
            f"{partition.topic} partition {partition.partition} offsets [{first}, {end}): "
            f"{self.reason}"
        )


class _BatchTracker:
    """Wraps the fetched MemoryRecords and remembers the last batch header handed out."""

    def __init__(self, records: Any) -> None:
        self._records = records
        self.last: Any = None

    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.last = self._records.next_batch(*args, **kwargs)
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


class _GuardedPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's holder of one partition's fetched records, failing cleanly."""

    def __init__(
        self, fetch_offset: int, tp: TopicPartition, records: Any, *a: Any, **kw: Any
    ) -> None:
        self._tracker = _BatchTracker(records)
        super().__init__(fetch_offset, tp, self._tracker, *a, **kw)

    def take(self, n: int | None = None) -> list[Any]:
        try:
            return list(super().take(n))
        except UndecodableBatch:
            raise
        except Exception as exc:
            first = int(self.next_fetch_offset)
            batch = self._tracker.last
            end = getattr(batch, "next_offset", None) if batch is not None else None
            codec = getattr(batch, "compression_type", None) if batch is not None else None
            self.drain()
            raise UndecodableBatch(
                self.topic_partition,
                first,
                max(int(end or 0), first + 1),
                _CODEC_NAMES.get(codec, f"codec-{codec}") if codec is not None else "unknown",
                exc,
            ) from exc


def guard_consumer(consumer: KafkaConsumer) -> KafkaConsumer:
    """Make ``consumer.poll()`` raise UndecodableBatch for a batch it cannot decode.

    The subclass is set on this consumer's fetcher only (an instance attribute
    shadowing the class's), so no other kafka-python client in the process changes.
    """
    consumer._fetcher.PartitionRecords = _GuardedPartitionRecords
    return consumer


@dataclass(slots=True)
class _Attempts:
    first: int
    failures: int
    retry_at: float
    resumed: bool = False


class UndecodableBatches:
    """Per-partition retry state for undecodable batches of one consumer.

    Not thread-safe: used by the thread that polls the consumer. Call
    ``resume_due()`` before each poll and ``failed(exc)`` when a poll raised.
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        *,
        retries: int,
        backoff_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._retries = retries
        self._backoff = backoff_seconds
        self._clock = clock
        self._waiting: dict[TopicPartition, _Attempts] = {}

    def failed(self, exc: UndecodableBatch) -> bool:
        """Count a failure of ``exc``'s batch; True when it is out of retries and must be
        skipped now (call ``skip``), False when its partition is paused for a retry."""
        tp = exc.partition
        seen = self._waiting.get(tp)
        failures = seen.failures + 1 if seen is not None and seen.first == exc.first else 1
        if failures > self._retries:
            return True
        delay = min(self._backoff * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
        self._waiting[tp] = _Attempts(exc.first, failures, self._clock() + delay)
        self._consumer.pause(tp)
        return False

    def skip(self, exc: UndecodableBatch) -> None:
        """Move the partition's position past the batch and let it flow again."""
        tp = exc.partition
        self._waiting.pop(tp, None)
        self._consumer.seek(tp, exc.end)
        self._consumer.resume(tp)

    def resume_due(self) -> None:
        """Resume the partitions whose backoff is over; forget a partition once it is no
        longer assigned or its position moved past the batch (a retry decoded it)."""
        if not self._waiting:
            return
        assigned = self._consumer.assignment()
        now = self._clock()
        for tp, attempts in list(self._waiting.items()):
            if tp not in assigned:
                del self._waiting[tp]
            elif attempts.resumed:
                if self._consumer.position(tp) != attempts.first:
                    del self._waiting[tp]
            elif now >= attempts.retry_at:
                self._consumer.resume(tp)
                attempts.resumed = True
