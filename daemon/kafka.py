"""Kafka clients built from Settings: the one module that constructs kafka-python clients.

Every tuning value comes from Settings (or is derived from one), so that an
operator changes behaviour through ``CTD_KAFKA_*`` and not by patching code.
Choices forced by the broker or by kafka-python 3 are explained in NOTES.md:
manual commits, ``earliest`` reset, explicit topic creation, no idempotent
producer, bytes in / bytes out.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Sequence
from typing import Any, Final

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, TopicAlreadyExistsError

from daemon.settings import Settings
from daemon.undecodable import guard_consumer

PRODUCER_LINGER_MS: Final = 5
"""Small enough to add no visible latency, large enough to batch a burst of sends."""

_DEFAULT_PORT: Final = 9092
_API_VERSIONS_KEY: Final = 18
_SASL_HANDSHAKE_KEY: Final = 17
_SASL_ERRORS: Final = {33: "UNSUPPORTED_SASL_MECHANISM", 34: "ILLEGAL_SASL_STATE"}


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


class KafkaSecurityError(RuntimeError):
    """The broker refuses the configured security settings (protocol or SASL mechanism)."""

    def __init__(self, address: str, cause: str) -> None:
        self.address, self.cause = address, cause
        super().__init__(f"Kafka broker {address} refuses this client's security settings: {cause}")


class TopicSetupError(RuntimeError):
    """Topics could not be created or did not become visible in metadata."""

    def __init__(self, topics: Sequence[str], cause: str) -> None:
        self.topics, self.cause = list(topics), cause
        super().__init__(f"cannot set up Kafka topics {', '.join(self.topics)}: {cause}")


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
) -> KafkaConsumer:
    """A group consumer (default: ``topic_bars`` in ``kafka_group_id``) with manual
    commits; values arrive as raw bytes. A batch it cannot decode raises UndecodableBatch."""
    consumer = KafkaConsumer(
        topic or settings.topic_bars,
        group_id=group_id or settings.kafka_group_id,
        enable_auto_commit=False,
        # 'latest' re-delivers the last batch on tansu (NOTES.md); committed offsets rule anyway.
        auto_offset_reset="earliest",
        # A missing topic would be auto-created with the broker's partition count.
        allow_auto_create_topics=False,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_records=settings.kafka_max_poll_records,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        **client_config(settings, bootstrap_servers),
    )
    return guard_consumer(consumer)


def make_producer(settings: Settings, bootstrap_servers: str) -> KafkaProducer:
    """A producer that waits for all replicas and compresses with ``kafka_compression_type``;
    values and keys are sent as given (bytes).

    Not idempotent: kafka-python 3's idempotent producer fails every send after
    a broker restart while ``flush()`` returns quietly (NOTES.md).
    """
    return KafkaProducer(
        acks="all",
        enable_idempotence=False,
        compression_type=None
        if settings.kafka_compression_type == "none"
        else settings.kafka_compression_type,
        linger_ms=PRODUCER_LINGER_MS,
        # Fail a send within one request timeout, not kafka-python's default two minutes.
        delivery_timeout_ms=settings.kafka_request_timeout_ms + PRODUCER_LINGER_MS,
        max_block_ms=settings.kafka_request_timeout_ms,
        allow_auto_create_topics=False,
        **client_config(settings, bootstrap_servers),
    )


def default_topics(settings: Settings) -> list[str]:
    return [
        settings.topic_bars,
        settings.topic_dlq,
        settings.topic_commands,
        settings.topic_promotions,
    ]


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


def _split_address(address: str) -> tuple[str, int]:
    address = address.strip().split("://", 1)[-1]
    if address.startswith("["):  # [::1]:9092
        host, _, rest = address[1:].partition("]")
        return host, int(rest.lstrip(":") or _DEFAULT_PORT)
    host, sep, port = address.rpartition(":")
    return (host, int(port)) if sep else (address, _DEFAULT_PORT)


def _api_versions_ok(sock: socket.socket) -> bool:
    """Send ApiVersions v0 and check the reply's correlation id and error code."""
    correlation_id = 0x0C7D
    client_id = b"ctd-probe"
    body = struct.pack(">hhih", _API_VERSIONS_KEY, 0, correlation_id, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(body)) + body)
    header = _recv_exactly(sock, 10)  # size, correlation id, error code
    if header is None:
        return False
    _size, got_id, error_code = struct.unpack(">iih", header)
    return bool(got_id == correlation_id and error_code == 0)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def check_sasl_mechanism(settings: Settings, bootstrap_servers: str, timeout: float) -> None:
    """Fail fast if the first answering broker does not offer ``kafka_sasl_mechanism``.

    kafka-python retries a refused SASL handshake until its bootstrap timeout
    and then says only "Unable to bootstrap". One SaslHandshake round trip (no
    credentials sent) names the problem instead. Unreachable servers are
    skipped: the clients report those. Wrong credentials are found later, by
    kafka-python's login. Raises KafkaSecurityError; a no-op unless the
    security protocol is SASL_*.
    """
    mechanism = settings.kafka_sasl_mechanism
    if mechanism is None or not settings.kafka_security_protocol.startswith("SASL_"):
        return
    context = _tls_context(settings)
    deadline = time.monotonic() + timeout
    addresses = [a.strip() for a in bootstrap_servers.split(",") if a.strip()]
    for i, address in enumerate(addresses):
        share = (deadline - time.monotonic()) / (len(addresses) - i)
        if share <= 0:
            return
        try:
            problem = _sasl_problem(address, mechanism, context, share)
        except (OSError, ValueError):
            continue  # unreachable or silent: not a verdict on the security settings
        if problem is not None:
            raise KafkaSecurityError(address, problem)
        return


def _sasl_problem(
    address: str, mechanism: str, context: ssl.SSLContext | None, timeout: float
) -> str | None:
    """What is wrong with ``mechanism`` at ``address``, or None if the broker accepts it.

    Raises OSError when the broker cannot be reached or does not answer in time.
    """
    host, port = _split_address(address)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        if context is None:
            return _sasl_handshake(raw, mechanism)
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                return _sasl_handshake(tls, mechanism)
        except ssl.SSLError as exc:
            return (
                f"TLS handshake failed ({exc}); check CTD_KAFKA_SECURITY_PROTOCOL and"
                " CTD_KAFKA_SSL_CAFILE"
            )


def _sasl_handshake(sock: socket.socket, mechanism: str) -> str | None:
    """Send SaslHandshake v1; None if the broker accepts ``mechanism``, else why not."""
    correlation_id = 0x0C7E
    client_id, name = b"ctd-probe", mechanism.encode()
    body = (
        struct.pack(">hhih", _SASL_HANDSHAKE_KEY, 1, correlation_id, len(client_id))
        + client_id
        + struct.pack(">h", len(name))
        + name
    )
    sock.sendall(struct.pack(">i", len(body)) + body)
    size = _recv_exactly(sock, 4)
    reply = _recv_exactly(sock, struct.unpack(">i", size)[0]) if size else None
    if reply is None or len(reply) < 10 or struct.unpack_from(">i", reply)[0] != correlation_id:
        return (
            f"it hung up on a SASL handshake for {mechanism} (mechanism not enabled, or not a"
            " SASL listener): check CTD_KAFKA_SASL_MECHANISM and CTD_KAFKA_SECURITY_PROTOCOL"
        )
    error_code, count = struct.unpack_from(">hi", reply, 4)
    if error_code == 0:
        return None
    offered, pos = [], 10
    for _ in range(max(count, 0)):
        (n,) = struct.unpack_from(">h", reply, pos)
        offered.append(reply[pos + 2 : pos + 2 + n].decode("utf-8", "replace"))
        pos += 2 + n
    kind = _SASL_ERRORS.get(error_code, f"error code {error_code}")
    return (
        f"SASL mechanism {mechanism} refused ({kind}; the broker lists"
        f" {', '.join(offered) or 'none'}): check CTD_KAFKA_SASL_MECHANISM and"
        " CTD_KAFKA_SECURITY_PROTOCOL"
    )


def _tls_context(settings: Settings | None) -> ssl.SSLContext | None:
    """The probes' TLS context when the security protocol uses SSL, else None."""
    if settings is None or settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    context = ssl.create_default_context(cafile=cafile)
    if settings.kafka_ssl_certfile is not None:  # a broker that wants mTLS wants it of probes too
        config = client_config(settings, "")
        context.load_cert_chain(
            config["ssl_certfile"], config.get("ssl_keyfile"), config.get("ssl_password")
        )
    return context


def broker_reachable(
    bootstrap_servers: str, timeout: float, *, settings: Settings | None = None
) -> bool:
    """True if any bootstrap server answers an ApiVersions request within ``timeout`` seconds.

    A raw protocol probe, cheap enough for /readyz and the connectivity gauge:
    no client, no background thread. Pass ``settings`` to probe over TLS when
    the security protocol uses SSL (ApiVersions precedes SASL authentication).
    """
    deadline = time.monotonic() + timeout
    context = _tls_context(settings)
    addresses = [a for a in bootstrap_servers.split(",") if a.strip()]
    for i, address in enumerate(addresses):
        # A fair share of what is left, so one silent server cannot use up the whole budget.
        share = (deadline - time.monotonic()) / (len(addresses) - i)
        if share > 0 and _probe(address, share, context):
            return True
    return False


def _probe(address: str, timeout: float, context: ssl.SSLContext | None) -> bool:
    deadline = time.monotonic() + timeout
    try:
        host, port = _split_address(address)
        with socket.create_connection((host, port), timeout=timeout) as raw:
            raw.settimeout(max(0.001, deadline - time.monotonic()))
            if context is None:
                return _api_versions_ok(raw)
            with context.wrap_socket(raw, server_hostname=host) as tls:
                return _api_versions_ok(tls)
    except (OSError, ValueError):
        return False
