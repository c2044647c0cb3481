"""Broker outage: the daemon is cut off from the broker, then reconnected, and loses nothing.

The local broker keeps its data in memory, so it is not stopped: it advertises
the port of a loopback proxy (tests/support/tcp_proxy.py) that the test makes drop every
connection and refuse new ones, then restores. Every client of the daemon
(consumer, producer, connectivity probe) reaches the broker through the proxy.

The outage lasts 20 s rather than the issue's 30 s, to keep the suite short,
with the same behaviour: it still outlasts every client timeout the daemon
runs with here (group session 3 s, request and delivery 10 s, probe 2 s), so
the consumer is expelled from its group, in-flight requests fail and the
probe fails, exactly as in a 30 s outage with the default 30 s request timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.kafka.bars import encode_bar, encode_batch
from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import ensure_topics
from daemon.settings import Settings
from tests.support import reliability as rel
from tests.support.helpers import own_settings, wait_for
from tests.support.tcp_proxy import TcpProxy
from trainers.data import BarRecord

OUTAGE_SECONDS = 20.0
REQUEST_TIMEOUT_MS = 10_000
SYMBOLS = ("OA", "OB", "OC")


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A loopback server that echoes every connection's bytes back."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def test_proxy_forwards_drops_refuses_and_restores(echo_server: int) -> None:
    """The test proxy forwards; cut() resets open connections and refuses new ones on its port;
    restore() forwards again on the same port."""
    with TcpProxy(upstream=("127.0.0.1", echo_server)) as proxy:
        port = proxy.port
        assert _round_trip(port, b"ping") == b"ping"
        open_conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        # Both connections accepted and the first one's pair gone: only the open one is left.
        wait_for(lambda: proxy.accepted == 2 and proxy.connections == 1)
        assert proxy.cut() == 1
        try:  # the peer went away: a reset, or an orderly end if the RST raced the read
            gone = open_conn.recv(4096)
        except ConnectionResetError:
            gone = b""
        assert gone == b""
        open_conn.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        proxy.restore()
        assert proxy.port == port
        assert _round_trip(port, b"again") == b"again"


@pytest.fixture
def proxied_broker() -> Iterator[tuple[LocalBroker, TcpProxy]]:
    """A broker of its own, reachable only through a proxy the test controls."""
    with TcpProxy() as proxy, LocalBroker(advertised_port=proxy.port) as broker:
        assert broker.port is not None
        proxy.upstream = (broker.host, broker.port)
        yield broker, proxy


def _settings(bootstrap: str, data_dir: Path) -> Settings:
    return own_settings(
        bootstrap,
        data_dir,
        "o",
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=500,
        kafka_request_timeout_ms=REQUEST_TIMEOUT_MS,
        http_port=rel.free_port(),
        min_bars=100_000,
        log_format="json",
    )


def _messages(start: int, n: int) -> list[tuple[str, bytes, list[BarRecord]]]:
    """n bars per symbol from index ``start``: half single messages, half batches of 5."""
    out = []
    for symbol in SYMBOLS:
        bars = [rel.bar(symbol, start + i) for i in range(n)]
        half = n // 2
        out += [(symbol, encode_bar(b), [b]) for b in bars[:half]]
        out += [
            (symbol, encode_batch(symbol, bars[i : i + 5]), bars[i : i + 5])
            for i in range(half, n, 5)
        ]
    return out


class Phase:
    """Messages sent by one phase, and their futures (resolved once the broker acks)."""

    def __init__(self, producer: Any, topic: str, start: int, n: int) -> None:
        self.bars: list[BarRecord] = []
        self.futures = []
        for symbol, value, bars in _messages(start, n):
            self.futures.append(producer.send(topic, key=symbol.encode(), value=value))
            self.bars += bars

    def acked(self, timeout: float) -> list[BarRecord]:
        for f in self.futures:
            f.get(timeout=timeout)
        return self.bars


@pytest.mark.integration
@pytest.mark.slow
def test_broker_outage_is_survived_without_losing_or_duplicating_a_bar(
    proxied_broker: tuple[LocalBroker, TcpProxy], tmp_path: Path
) -> None:
    """Cut off for 20 s the daemon stays up, reports the broker down (/metrics, /readyz),
    then reconnects by itself and stores every bar sent before, during and after, once."""
    broker, proxy = proxied_broker
    settings = _settings(broker.bootstrap_servers, tmp_path / "data")
    ensure_topics(settings, broker.bootstrap_servers)
    daemon = rel.DaemonProcess(settings, tmp_path / "daemon.log")
    # Sends during the outage wait in the producer's buffer and go out after it.
    producer = rel.make_producer(
        broker.bootstrap_servers,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        delivery_timeout_ms=180_000,
        max_block_ms=180_000,
    )
    store = settings.paths.bars
    try:
        daemon.start()
        before = Phase(producer, settings.topic_bars, 0, 200).acked(timeout=30)
        wait_for(
            lambda: rel.stored_count(store) == len(before), timeout=60, message="before stored"
        )
        assert daemon.sample("ctd_kafka_connected") == 1
        assert daemon.get("/readyz")[0] == 200

        proxy.cut()
        cut_at = time.monotonic()
        during = Phase(producer, settings.topic_bars, 200, 200)
        seen: list[tuple[float | None, int]] = []

        def down() -> bool:
            assert daemon.alive(), daemon.log_tail()
            seen.append((daemon.sample("ctd_kafka_connected"), daemon.get("/readyz")[0]))
            return seen[-1] == (0, 503)

        wait_for(down, timeout=OUTAGE_SECONDS - 5, interval=0.25, message="outage noticed")
        while time.monotonic() - cut_at < OUTAGE_SECONDS:
            assert daemon.alive(), daemon.log_tail()
            assert daemon.get("/healthz")[0] == 200  # alive, just not ready
            time.sleep(0.5)
        assert rel.stored_count(store) == len(before)  # nothing got through the cut
        proxy.restore()

        wait_for(
            lambda: daemon.sample("ctd_kafka_connected") == 1 and daemon.get("/readyz")[0] == 200,
            timeout=30,
            interval=0.25,
            message="reconnected",
        )
        during_bars = during.acked(timeout=120)
        after = Phase(producer, settings.topic_bars, 400, 200).acked(timeout=60)
        produced = before + during_bars + after
        wait_for(
            lambda: rel.stored_count(store) >= len(produced),
            timeout=90,
            interval=0.25,
            message="ingest resumed and caught up",
        )
        time.sleep(1.0)  # a late re-delivery would show up as an error below, not a twin row
        assert daemon.alive()
        assert daemon.terminate() == 0, daemon.log_tail()
    finally:
        producer.close(timeout=5)
        daemon.reap_group()

    rel.assert_stored_exactly(store, produced)
