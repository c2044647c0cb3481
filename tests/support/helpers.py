"""Small test helpers shared by several test modules."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from daemon.settings import Settings

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    Raises TimeoutError naming ``message`` (or the predicate) after ``timeout``
    seconds. The predicate is always called at least once, and once more at the
    deadline, so a slow final step is not reported as a timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"condition not met within {timeout:.1f}s: {what}")
        time.sleep(interval)


def read_topic(
    bootstrap_servers: str, topic: str, at_least: int, timeout: float = 15.0
) -> list[Any]:
    """Every record of ``topic`` from the start (no consumer group), once ``at_least`` arrived.

    One extra poll after the count is reached lets duplicates show up.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        partitions = wait_for(
            lambda: consumer.partitions_for_topic(topic), timeout, message=f"metadata of {topic}"
        )
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        seen: list[Any] = []

        def poll() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                seen.extend(records)
            return len(seen) >= at_least

        wait_for(
            poll, timeout, interval=0, message=f"{at_least} records on {topic}, got {len(seen)}"
        )
        poll()
        return seen
    finally:
        consumer.close()


def round_trip(
    settings: Settings, bootstrap: str, sent: set[tuple[bytes, bytes]], timeout: float = 15.0
) -> set[tuple[bytes, bytes]]:
    """Produce ``sent`` (key, value) pairs to the bars topic with ctd's producer factory and
    read them back with its consumer factory; return every pair that came back."""
    from daemon.kafka.clients import make_consumer, make_producer

    producer = make_producer(settings, bootstrap)
    for key, value in sent:
        producer.send(settings.topic_bars, key=key, value=value)
    producer.flush(timeout=timeout)
    producer.close()
    consumer = make_consumer(settings, bootstrap, topic=settings.topic_bars)
    got: set[tuple[bytes, bytes]] = set()

    def all_arrived() -> bool:
        for records in consumer.poll(timeout_ms=200).values():
            got.update((r.key, r.value) for r in records)
        return len(got) >= len(sent)

    try:
        wait_for(all_arrived, timeout, interval=0, message=f"{len(sent)} records round trip")
    finally:
        consumer.close(autocommit=False)
    return got


def ledger(registry: Any, symbol: str) -> list[dict[str, Any]]:
    """The symbol's ledger lines as they are written to history.jsonl (JSON objects)."""
    return [event.to_dict() for event in registry.history(symbol)]


TOPIC_KINDS = ("bars", "dlq", "commands", "promotions", "predictions")


def own_settings(
    bootstrap_servers: str, data_dir: Path, prefix: str = "t", **overrides: Any
) -> Settings:
    """Settings of a daemon with its own consumer group and topics on a shared broker.

    Names are ``<prefix><random tag>`` (group) and ``...<tag>.bars`` etc. (topics);
    the HTTP port is chosen by the OS unless ``overrides`` say otherwise.
    """
    from daemon.settings import load_settings

    tag = f"{prefix}{uuid.uuid4().hex[:10]}"
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap_servers,
        "kafka_group_id": tag,
        **{f"topic_{kind}": f"{tag}.{kind}" for kind in TOPIC_KINDS},
        "data_dir": data_dir,
        "http_port": 0,
    }
    return load_settings(**{**values, **overrides})


def each_implementation(**factories: Callable[[Path], Any]) -> Any:
    """A fixture that yields every implementation in turn, each built in the test's tmp_path
    and closed after it when it has ``close``: one test body checks them all alike."""
    import pytest

    @pytest.fixture(params=sorted(factories))
    def made(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
        instance = factories[request.param](tmp_path)
        yield instance
        close = getattr(instance, "close", None)
        if close is not None:
            close()

    return made
