"""TopicReset's decisions once a topic was re-created, on a stand-in consumer."""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition

from daemon.kafka.topics import TopicReset

BARS, OTHER = "bars", "other"


class _Consumer:
    """The four calls TopicReset makes, recorded."""

    def __init__(self, assigned: list[TopicPartition]) -> None:
        self.assigned = assigned
        self.calls: list[tuple[str, Any]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.calls.append(("seek_to_beginning", sorted(partitions)))

    def unsubscribe(self) -> None:
        self.calls.append(("unsubscribe", None))

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.calls.append(("subscribe", topics))


def _parts(topic: str, n: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(n)]


def test_nothing_happens_until_a_recreation_is_reported() -> None:
    reset, consumer = TopicReset([BARS]), _Consumer(_parts(BARS, 2))
    assert reset.catch_up(consumer, reset) is False
    reset.recreated([OTHER])  # not a topic this consumer reads
    assert reset.catch_up(consumer, reset) is False
    assert consumer.calls == []


def test_a_consumer_that_kept_its_partitions_rewinds_them_once() -> None:
    """Its fetch positions belong to the lost log: every partition of the topic goes back to
    the beginning of the new one, once per re-creation."""
    reset, consumer = TopicReset([BARS]), _Consumer(_parts(BARS, 3))
    reset.recreated([BARS, OTHER])
    assert reset.catch_up(consumer, reset) is False
    assert reset.catch_up(consumer, reset) is False
    assert consumer.calls == [("seek_to_beginning", _parts(BARS, 3))]


def test_a_consumer_stranded_on_no_partitions_rejoins() -> None:
    reset, consumer = TopicReset([BARS]), _Consumer([])
    reset.on_partitions_revoked(_parts(BARS, 3))
    reset.on_partitions_assigned([])
    reset.recreated([BARS])
    assert reset.catch_up(consumer, reset) is True
    assert consumer.calls == [("unsubscribe", None), ("subscribe", [BARS])]


def test_a_rebalance_under_way_is_left_to_settle_first() -> None:
    """Between revocation and assignment a rejoin would disturb the join in flight: the
    re-creation is kept and acted on once the assignment arrives."""
    reset, consumer = TopicReset([BARS]), _Consumer([])
    reset.on_partitions_revoked(_parts(BARS, 3))
    reset.recreated([BARS])
    assert reset.catch_up(consumer, reset) is False
    assert consumer.calls == []
    consumer.assigned = _parts(BARS, 3)
    reset.on_partitions_assigned(consumer.assigned)
    assert reset.catch_up(consumer, reset) is False
    assert consumer.calls == [("seek_to_beginning", _parts(BARS, 3))]
