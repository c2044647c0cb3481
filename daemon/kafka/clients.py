"""Kafka clients built from Settings: the one module that constructs kafka-python clients.

Every tuning value comes from Settings (or is derived from one), so that an
operator changes behaviour through ``CTD_KAFKA_*`` and not by patching code.
Choices forced by the broker or by kafka-python 3 are explained in NOTES.md:
manual commits, ``earliest`` reset, explicit topic creation, no idempotent
producer, bytes in / bytes out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.cluster import ClusterMetadata
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2

from daemon.errors import TopicSetupError
from daemon.kafka.undecodable import guard_consumer
from daemon.settings import Settings

PRODUCER_LINGER_MS: Final = 0
"""Records go as soon as the sender thread runs: a poll's predictions arrive in one burst
and batch while that thread waits for the GIL anyway; a 5 ms linger only held back the
last ones (bench/fleet.py at 400 bars/s: publish -> ack p50 6.8-7.6 -> 1.9 ms, p99 14 ->
8-10 ms; flat-out 3% fewer bars/s)."""
PRODUCER_BATCH_BYTES: Final = 256 * 1024
"""kafka-python wakes its sender thread on every send while a partition holds a full
batch: at 16 KB (its default) on 40-80% of a burst's sends, at 256 KB on under 1%, and a
send's CPU falls from 17.5-22.6 to 10.9-13.0 us (bench/produce.py). Far below the
broker's 1 MB limit per batch."""


class KeyHashPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """kafka-python's (and Java's) default partitioner: murmur2 of the key bytes modulo
    the partition count; keyless records as the default does. Each key's hash is kept
    (up to ``max_keys``, then forgotten all at once): the pure-Python murmur2 was a third
    of the CPU of a ``send()``, and the live path sends two records per bar."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._max_keys = max_keys
        self._hashes: dict[bytes, int] = {}

    def partition(  # noqa: PLR0917 -- kafka-python's Partitioner signature
        self,
        topic: str,
        key: object,
        serialized_key: bytes | None,
        value: object,
        serialized_value: bytes | None,
        cluster: ClusterMetadata,
    ) -> int:
        if serialized_key is None:
            chosen: int = super().partition(
                topic, key, serialized_key, value, serialized_value, cluster
            )
            return chosen
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        h = self._hashes.get(serialized_key)
        if h is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        chosen_by_key: int = sorted(partitions)[h % len(partitions)]
        return chosen_by_key


class MaskedSecret(str):
    """A secret in the plain ``str`` form kafka-python needs, whose repr stays masked.

    kafka-python logs its whole configuration dict at DEBUG, and a traceback
    renderer that shows local variables prints the dicts that hold it: both go
    through ``repr``. Slices stay masked too (rich truncates long strings by
    slicing before ``repr``). ``str()`` and the string's bytes are the secret.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"

    def __getitem__(self, key: Any) -> MaskedSecret:
        return MaskedSecret(str.__getitem__(self, key))


def client_config(settings: Settings, bootstrap_servers: str) -> dict[str, Any]:
    """Connection and security settings shared by every client.

    The SASL password and the TLS key passphrase are unwrapped here, into
    MaskedSecrets; the rest of the product, the probes included, reads them from here.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in bootstrap_servers.split(",") if s.strip()],
        "client_id": settings.kafka_client_id,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        # The constructors block on bootstrap; never longer than one request.
        "bootstrap_timeout_ms": settings.kafka_request_timeout_ms,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism is not None:
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            password = settings.kafka_sasl_password
            config["sasl_plain_password"] = MaskedSecret(password.get_secret_value())
    if settings.kafka_ssl_cafile is not None:
        config["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile is not None:
        config["ssl_certfile"] = str(settings.kafka_ssl_certfile)
    if settings.kafka_ssl_keyfile is not None:
        config["ssl_keyfile"] = str(settings.kafka_ssl_keyfile)
    if settings.kafka_ssl_key_password is not None:
        config["ssl_password"] = MaskedSecret(settings.kafka_ssl_key_password.get_secret_value())
    return config


def make_consumer(
    settings: Settings,
    bootstrap_servers: str,
    *,
    topic: str | None = None,
    group_id: str | None = None,
    subscribe: bool = True,
) -> KafkaConsumer:
    """A group consumer (default: ``topic_bars`` in ``kafka_group_id``) with manual
    commits; values arrive as raw bytes. A batch it cannot decode raises UndecodableBatch.
    ``subscribe=False``: the caller subscribes (with a rebalance listener).

    The ingest group (``kafka_group_id``) uses static membership when
    ``kafka_group_instance_id`` is set; other groups (commands) never do: one
    instance id may be in a group once."""
    group = group_id or settings.kafka_group_id
    static = settings.kafka_group_instance_id if group == settings.kafka_group_id else None
    consumer = KafkaConsumer(
        *([topic or settings.topic_bars] if subscribe else []),
        group_id=group,
        group_instance_id=static,
        enable_auto_commit=False,
        # 'latest' re-delivers the last batch on tansu (NOTES.md); committed offsets rule anyway.
        auto_offset_reset="earliest",
        # A missing topic would be auto-created with the broker's partition count.
        allow_auto_create_topics=False,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_records=settings.kafka_max_poll_records,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        **client_config(settings, bootstrap_servers),
    )
    _no_auto_create(consumer._cluster)
    _finish_joins(consumer._coordinator)
    return guard_consumer(consumer)


def make_producer(settings: Settings, bootstrap_servers: str) -> KafkaProducer:
    """A producer that waits for all replicas and compresses with ``kafka_compression_type``;
    values and keys are sent as given (bytes).

    Not idempotent: kafka-python 3's idempotent producer fails every send after
    a broker restart while ``flush()`` returns quietly (NOTES.md).
    """
    producer = KafkaProducer(
        acks="all",
        enable_idempotence=False,
        compression_type=None
        if settings.kafka_compression_type == "none"
        else settings.kafka_compression_type,
        linger_ms=PRODUCER_LINGER_MS,
        batch_size=PRODUCER_BATCH_BYTES,
        partitioner=KeyHashPartitioner(),
        # Fail a send within one request timeout, not kafka-python's default two minutes.
        delivery_timeout_ms=settings.kafka_request_timeout_ms + PRODUCER_LINGER_MS,
        max_block_ms=settings.kafka_request_timeout_ms,
        allow_auto_create_topics=False,
        **client_config(settings, bootstrap_servers),
    )
    _no_auto_create(producer._metadata)
    return producer


def _no_auto_create(cluster: Any) -> None:
    """Make a client's ``allow_auto_create_topics=False`` hold. kafka-python 3.0.12 builds
    its cluster metadata without that setting, so every metadata request asks the broker to
    create a topic it lacks (tansu does, with 4 partitions; so does a Kafka with
    ``auto.create.topics.enable``). Measured: after the bundled broker restarted empty, the
    consumers re-created the bars topic with 4 partitions before the daemon could."""
    cluster.config["allow_auto_create_topics"] = False


def _finish_joins(coordinator: Any) -> None:
    """Make a group consumer finish the join it started. kafka-python 3.0.12 leaves a
    JoinGroup/SyncGroup in flight when a poll times out, and looks at it again only while
    ``need_rejoin()`` holds; when that turns false meanwhile (the rejoin was asked for by
    a metadata change that reverted: a topic lost and re-created with its partitions),
    the result is never applied and the member holds no partition for good. Measured
    without this: 4 of 6 runs of tests/integration/test_broker_restart.py stranded so."""
    need_rejoin = coordinator.need_rejoin

    def join_in_flight_or(need: Callable[[], bool] = need_rejoin) -> bool:
        return coordinator._join_task is not None or need()

    coordinator.need_rejoin = join_in_flight_or


def default_topics(settings: Settings) -> list[str]:
    return [
        settings.topic_bars,
        settings.topic_dlq,
        settings.topic_commands,
        settings.topic_promotions,
        settings.topic_predictions,
    ]


def topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """Configs ctd sets on a topic it creates: the bars topic keeps bars for
    ``topic_bars_retention_ms`` (Kafka is their source of truth); others the broker's default."""
    if topic == settings.topic_bars:
        return {"retention.ms": str(settings.topic_bars_retention_ms)}
    return {}


def ensure_topics(
    settings: Settings,
    bootstrap_servers: str,
    topics: Sequence[str] | None = None,
    timeout: float = 15.0,
) -> list[str]:
    """Create the missing topics with ``topic_partitions`` partitions; return the created names.

    Idempotent (a topic created concurrently by another daemon counts as
    existing). Returns once metadata shows every topic with a leader per
    partition. Existing topics are left as they are: tansu cannot add
    partitions. Raises TopicSetupError.
    """
    wanted = list(dict.fromkeys(topics if topics is not None else default_topics(settings)))
    config = client_config(settings, bootstrap_servers)
    config["bootstrap_timeout_ms"] = int(timeout * 1000)
    try:
        admin = KafkaAdminClient(**config)
    except KafkaError as exc:
        # kafka-python reports a refused login, a TLS failure and a dead broker alike.
        raise TopicSetupError(
            wanted,
            f"cannot connect to {bootstrap_servers} ({exc}); check the address,"
            " CTD_KAFKA_SECURITY_PROTOCOL and the SASL/SSL settings",
        ) from exc
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        created: list[str] = []
        for topic in missing:
            try:
                admin.create_topics(
                    {
                        topic: {
                            "num_partitions": settings.topic_partitions,
                            "replication_factor": settings.topic_replication_factor,
                            "configs": topic_configs(settings, topic),
                        }
                    },
                    timeout_ms=int(timeout * 1000),
                )
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
        admin.wait_for_topics(wanted, timeout_ms=int(timeout * 1000))
        return created
    except KafkaError as exc:
        raise TopicSetupError(wanted, f"{type(exc).__name__}: {exc}") from exc
    finally:
        admin.close()


def resume(consumer: KafkaConsumer, partitions: Sequence[TopicPartition]) -> None:
    """``consumer.resume`` that does not strand a partition.

    kafka-python 3.0.12 parks records fetched for a paused partition and puts them
    back only when its "next records" slot is None, but a drained slot holds an
    empty record set instead, so the partition never delivers again (measured,
    NOTES.md). Clearing an empty slot after resuming avoids it.
    """
    consumer.resume(*partitions)
    fetcher = consumer._fetcher
    if fetcher._next_partition_records is not None and not fetcher._next_partition_records:
        fetcher._next_partition_records = None
