"""Raw protocol probes of the brokers: reachability (ApiVersions) and the SASL mechanism.

Cheap enough for /readyz and the connectivity gauge: no client, no background
thread of kafka-python. ``BrokerProbe`` runs the reachability probe every few
seconds and keeps ``connected`` (and ``ctd_kafka_connected``) current.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from typing import Final

from prometheus_client import Gauge

from daemon.errors import KafkaSecurityError
from daemon.kafka.clients import client_config
from daemon.logs import get_logger
from daemon.loop import Loop
from daemon.settings import Settings

_log = get_logger(component="probe")

PROBE_INTERVAL_SECONDS: Final = 2.0
_DEFAULT_PORT: Final = 9092
_API_VERSIONS_KEY: Final = 18
_SASL_HANDSHAKE_KEY: Final = 17
_SASL_ERRORS: Final = {33: "UNSUPPORTED_SASL_MECHANISM", 34: "ILLEGAL_SASL_STATE"}


class BrokerProbe(Loop):
    """A thread that probes the bootstrap servers every ``PROBE_INTERVAL_SECONDS``."""

    thread_name = "ctd-probe"

    def __init__(self, settings: Settings, bootstrap_servers: str, gauge: Gauge) -> None:
        super().__init__()
        self._settings = settings
        self._bootstrap = bootstrap_servers
        self._gauge = gauge
        self.connected = True  # the daemon starts only after talking to the broker
        gauge.set(1)

    def _run(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL_SECONDS):
            ok = broker_reachable(
                self._bootstrap, timeout=PROBE_INTERVAL_SECONDS, settings=self._settings
            )
            if ok != self.connected:
                _log.warning("broker_connectivity_changed", connected=ok)
            self.connected = ok
            self._gauge.set(1 if ok else 0)


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
