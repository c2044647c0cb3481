"""A Kafka client that no one here wrote: confluent-kafka (librdkafka), as market-data
publishers and downstream consumers use it. Producing into ctd and reading its topics
with it proves the wire format, not just our own client's view of it."""

from __future__ import annotations

import time
import uuid

import confluent_kafka


class ForeignClientError(RuntimeError):
    pass


def foreign_producer(bootstrap: str, compression: str = "none") -> confluent_kafka.Producer:
    return confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": compression,
            "linger.ms": 20,
            "acks": "all",
            "enable.idempotence": False,
        }
    )


def flush(producer: confluent_kafka.Producer, timeout: float = 15.0) -> None:
    """Wait until every message is acknowledged; raise if any is left or failed."""
    left = producer.flush(timeout)
    if left:
        raise ForeignClientError(f"{left} messages not acknowledged within {timeout} s")


def foreign_read(
    bootstrap: str, topic: str, at_least: int, timeout: float = 20.0
) -> list[confluent_kafka.Message]:
    """Every record of ``topic`` from the beginning, once ``at_least`` arrived (one more
    short poll after that lets duplicates show up)."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"foreign-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        consumer.assign(
            [
                confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                for p in partitions
            ]
        )
        seen: list[confluent_kafka.Message] = []
        deadline = time.monotonic() + timeout
        while len(seen) < at_least and time.monotonic() < deadline:
            seen.extend(_poll(consumer, 0.2))
        seen.extend(_poll(consumer, 0.5))
        if len(seen) < at_least:
            raise ForeignClientError(f"{len(seen)} of {at_least} records on {topic}")
        return seen
    finally:
        consumer.close()


def _poll(consumer: confluent_kafka.Consumer, timeout: float) -> list[confluent_kafka.Message]:
    out = []
    for msg in consumer.consume(num_messages=1000, timeout=timeout):
        if msg.error() is not None:
            if msg.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                continue
            raise ForeignClientError(str(msg.error()))
        out.append(msg)
    return out
