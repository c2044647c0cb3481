"""KeyHashPartitioner routes every record exactly as kafka-python's DefaultPartitioner."""

from __future__ import annotations

import random

import pytest
from kafka.cluster import ClusterMetadata
from kafka.partitioner import DefaultPartitioner

from daemon.kafka.clients import KeyHashPartitioner


class _Cluster(ClusterMetadata):  # type: ignore[misc]
    """A cluster snapshot with one topic of the given partition ids (pure logic only)."""

    def __init__(self, topic: str, partitions: set[int]) -> None:
        super().__init__()
        self._topic, self._partitions = topic, partitions

    def topics(self, exclude_internal_topics: bool = True) -> set[str]:
        return {self._topic}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions if topic == self._topic else None

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions_for_topic(topic)


def _route(p: DefaultPartitioner, cluster: _Cluster, key: bytes | None) -> int:
    chosen: int = p.partition("t", key, key, b"v", b"v", cluster)
    return chosen


@pytest.mark.parametrize("partitions", [{0}, {0, 1, 2, 3, 4, 5}, {3, 7, 11}, set(range(64))])
def test_every_key_goes_where_the_default_partitioner_sends_it(partitions: set[int]) -> None:
    rng = random.Random(7)
    keys = [f"F{i:05d}".encode() for i in range(500)]
    keys += [rng.randbytes(rng.randrange(0, 40)) for _ in range(500)]
    cluster = _Cluster("t", partitions)
    ours, default = KeyHashPartitioner(max_keys=300), DefaultPartitioner()
    for _ in range(2):  # the second pass reads hashes kept by the first (and cleared at 300)
        for key in keys:
            assert _route(ours, cluster, key) == _route(default, cluster, key), key


def test_a_partition_count_change_rehashes_the_kept_keys() -> None:
    ours, default = KeyHashPartitioner(), DefaultPartitioner()
    keys = [f"S{i}".encode() for i in range(200)]
    before, after = _Cluster("t", {0, 1, 2}), _Cluster("t", set(range(8)))
    assert [_route(ours, before, k) for k in keys] == [_route(default, before, k) for k in keys]
    assert [_route(ours, after, k) for k in keys] == [_route(default, after, k) for k in keys]
    assert len({_route(ours, after, k) for k in keys}) == 8


def test_keyless_records_and_unknown_topics_behave_as_the_default() -> None:
    cluster = _Cluster("t", {0, 1, 2})
    ours = KeyHashPartitioner()
    assert {_route(ours, cluster, None) for _ in range(200)} == {0, 1, 2}
    with pytest.raises(ValueError, match="not found"):
        ours.partition("other", b"k", b"k", b"v", b"v", cluster)
