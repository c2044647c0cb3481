"""The retry policy for undecodable batches, as pure logic over a stand-in consumer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from daemon.kafka.undecodable import MAX_BACKOFF_SECONDS, UndecodableBatch, UndecodableBatches

TP = TopicPartition("bars", 1)
OTHER = TopicPartition("bars", 2)


@dataclass
class _Consumer:
    """What UndecodableBatches uses of a KafkaConsumer: pause, resume, seek, where it is."""

    assigned: set[TopicPartition] = field(default_factory=lambda: {TP, OTHER})
    paused: set[TopicPartition] = field(default_factory=set)
    positions: dict[TopicPartition, int] = field(default_factory=dict)

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _batch(first: int = 10, end: int = 15, tp: TopicPartition = TP) -> UndecodableBatch:
    return UndecodableBatch(tp, first, end, "gzip", ValueError("bad data"))


def _policy(retries: int = 3, backoff: float = 1.0) -> tuple[UndecodableBatches, Any, _Clock]:
    consumer, clock = _Consumer(), _Clock()
    policy = UndecodableBatches(consumer, retries=retries, backoff_seconds=backoff, clock=clock)  # type: ignore[arg-type]
    return policy, consumer, clock


def test_a_failure_pauses_only_its_partition_until_the_backoff_is_over() -> None:
    """The failing partition is paused, the other not; it resumes after base x 2^(n-1) s."""
    policy, consumer, clock = _policy(backoff=1.0)

    def paused_after(seconds: float) -> set[TopicPartition]:
        clock.now += seconds
        policy.resume_due()
        return set(consumer.paused)

    assert policy.failed(_batch()) is False
    assert consumer.paused == {TP}
    assert paused_after(0.99) == {TP}
    assert paused_after(0.02) == set()
    assert policy.failed(_batch()) is False  # second failure: waits 2 s
    assert paused_after(1.5) == {TP}
    assert paused_after(0.6) == set()


def test_after_the_retries_the_batch_is_skipped_past_its_end() -> None:
    """retries=2: failures 1 and 2 retry, the third says skip; skip seeks to the end."""
    policy, consumer, _clock = _policy(retries=2, backoff=0.0)
    assert [policy.failed(_batch()) for _ in range(3)] == [False, False, True]
    policy.skip(_batch())
    assert consumer.positions[TP] == 15 and TP not in consumer.paused


def test_zero_retries_skips_at_once() -> None:
    policy, consumer, _clock = _policy(retries=0)
    assert policy.failed(_batch()) is True
    assert consumer.paused == set()


def test_a_failure_at_another_offset_starts_a_new_count() -> None:
    """Counting is per batch: a new first offset on the partition starts again at one."""
    policy, _consumer, _clock = _policy(retries=1, backoff=0.0)
    assert policy.failed(_batch(10, 15)) is False
    assert policy.failed(_batch(15, 20)) is False
    assert policy.failed(_batch(15, 20)) is True


def test_backoff_is_capped() -> None:
    policy, consumer, clock = _policy(retries=20, backoff=10.0)
    for _ in range(8):
        policy.failed(_batch())
        consumer.paused.clear()
    policy.failed(_batch())
    clock.now += MAX_BACKOFF_SECONDS
    policy.resume_due()
    assert consumer.paused == set()


def test_revoked_and_recovered_partitions_are_forgotten() -> None:
    """A partition no longer assigned, or whose position moved past the batch after a retry
    (it decoded after all), loses its count."""
    policy, consumer, _clock = _policy(retries=1, backoff=0.0)
    consumer.positions[TP] = 10
    assert policy.failed(_batch()) is False
    policy.resume_due()  # resumed for the retry
    consumer.positions[TP] = 15  # the retry delivered the records
    policy.resume_due()
    assert policy.failed(_batch()) is False  # counted from one again
    consumer.assigned.discard(TP)
    policy.resume_due()
    consumer.assigned.add(TP)
    assert policy.failed(_batch()) is False
