"""Bounded HTTP (issue 17, item 5): stalled and slow clients cost no thread and are dropped on
time, /metrics stays fast, and requests keep their HTTP semantics. Real server, real app,
real sockets; the stalled clients run in their own process (tests/support/stall.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.http import Response, json_response, make_app
from daemon.httpserver import DROP_REASONS, HttpServer
from daemon.metrics import Metrics
from daemon.settings import Settings, load_settings
from tests.support.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
BIG = b"x" * (8 << 20)


class FakeApi:
    """/v1 routes: ``echo`` (method and path), ``big`` (8 MiB), ``block`` (waits for ``gate``),
    ``boom`` (raises); anything else is a 404, anything but GET / HEAD a 405."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = 0

    def __call__(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return json_response("405 Method Not Allowed", {"error": "read-only"})
        if path == "/v1/echo":
            return json_response("200 OK", {"method": method, "path": path})
        if path == "/v1/big":
            return Response("200 OK", [("Content-Type", "application/octet-stream")], BIG)
        if path == "/v1/block":
            self.entered += 1
            self.gate.wait(10)
            return json_response("200 OK", {"released": True})
        if path == "/v1/boom":
            raise RuntimeError("boom")
        return json_response("404 Not Found", {"error": f"no route {path}"})


class Served:
    def __init__(self, settings: Settings, ready: bool) -> None:
        self.settings = settings
        self.metrics = Metrics(CollectorRegistry(), version="test")
        for symbol in ("AAPL", "MSFT", "BTCUSD"):
            self.metrics.init_symbol(symbol)
        self.api = FakeApi()
        self.ready = ready
        app = make_app(self.metrics.registry, lambda: {"broker": self.ready}, self.api)
        self.server = HttpServer(
            "127.0.0.1",
            0,
            app,
            workers=settings.http_workers,
            max_connections=settings.http_max_connections,
            read_timeout=settings.http_read_timeout_seconds,
            write_timeout=settings.http_write_timeout_seconds,
            on_drop=self.metrics.init_http(DROP_REASONS),
        )

    def dropped(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ctd_http_connections_dropped_total", {"reason": reason}
        )
        assert value is not None
        return value

    def get(self, path: str, method: str = "GET", data: bytes | None = None) -> Any:
        request = urllib.request.Request(f"{self.server.url}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()


@contextmanager
def serve(*, ready: bool = True, **overrides: Any) -> Iterator[Served]:
    served = Served(load_settings(**overrides), ready)
    served.server.start()
    try:
        yield served
    finally:
        served.server.stop()


def threads() -> int:
    """Threads of this process as the kernel counts them (Python's and any other)."""
    return _status("Threads")


def rss() -> int:
    """Resident memory of this process, KiB."""
    return _status("VmRSS")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}: line in /proc/self/status")


def stall(port: int, connections: int, seconds: float) -> subprocess.Popen[str]:
    return _support("stall", str(port), str(connections), str(seconds))


def scrape(url: str, seconds: float) -> subprocess.Popen[str]:
    return _support("scrape", url, str(seconds))


def _support(module: str, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", f"tests.support.{module}", *args]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def report(process: subprocess.Popen[str]) -> Any:
    return json.loads(process.communicate(timeout=60)[0])


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(int(len(ordered) * 0.99), len(ordered) - 1)]


def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def check_routes(served: Served) -> None:
    status, headers, body = served.get("/healthz", "HEAD")
    assert (status, headers["Content-Length"], body) == (200, "16", b"")
    status, _, body = served.get("/readyz")
    assert status == 200
    assert json.loads(body)["ready"] is True
    status, _, body = served.get("/v1/echo")
    assert (status, json.loads(body)) == (200, {"method": "GET", "path": "/v1/echo"})
    status, _, body = served.get("/nope")
    assert (status, json.loads(body)) == (404, {"error": "no route /nope"})


@pytest.mark.slow
def test_500_stalled_connections_for_30_s_cost_no_thread_and_metrics_p99_stays_under_50_ms() -> (
    None
):
    """500 slowloris connections, re-opened as they are dropped, for 30 s, on the defaults;
    /metrics scraped from another process meanwhile, as Prometheus does."""
    before = threads()
    with serve() as served:
        s = served.settings
        bound = before + 1 + s.http_workers
        attacker = stall(served.server.port, 500, 30)
        time.sleep(0.5)  # all 500 connected
        scraper = scrape(f"{served.server.url}/metrics", 29)
        most, memory = 0, [rss()]
        while scraper.poll() is None:
            most = max(most, threads())
            memory.append(rss())
            check_routes(served)
            time.sleep(0.2)
        scrapes, stalled = report(scraper), report(attacker)
        timeouts = served.dropped("read_timeout")
        evicted = served.dropped("evicted")

    latencies = scrapes["latencies"]
    closed = stalled["closed"]
    lifetimes = [lifetime for _, lifetime, _ in closed]
    timeout = s.http_read_timeout_seconds
    print(
        f"threads: at most {most} (before the server {before}, bound {bound}); /metrics:"
        f" {len(latencies)} scrapes, p99 {p99(latencies) * 1e3:.1f} ms, max"
        f" {max(latencies) * 1e3:.1f} ms; stalled: {len(closed)} dropped after"
        f" {min(lifetimes):.2f}-{max(lifetimes):.2f} s; RSS {memory[0] // 1024} MiB at the"
        f" start, {max(memory) // 1024} MiB at most, {memory[-1] // 1024} MiB at the end"
    )
    assert most <= bound
    assert max(memory) - memory[0] < 32 * 1024  # KiB: flat, not a buffer per connection
    assert scrapes["failures"] == []
    assert len(latencies) > 500
    assert p99(latencies) < 0.050
    assert stalled["failed"] == 0
    # Each was dropped at the read timeout (silent, partial and trickling alike), 5 rounds.
    assert len(closed) >= 4 * 500
    assert {how for _, _, how in closed} <= {"eof", "reset"}
    assert {kind for kind, _, _ in closed} == {"silent", "partial", "trickle"}
    assert timeout - 0.1 <= min(lifetimes) <= max(lifetimes) <= timeout + 1.0
    assert timeouts >= len(closed)
    assert evicted == 0


def test_past_the_cap_a_new_connection_displaces_the_oldest_stalled_one() -> None:
    """A flood of stalled connections beyond the cap, each re-opened as soon as it is
    displaced: every scrape still gets in and is answered, the stalled go."""
    before = threads()
    with serve(http_max_connections=32) as served:
        attacker = stall(served.server.port, 128, 5)
        scrapes = report(scrape(f"{served.server.url}/metrics", 4.5))
        stalled = report(attacker)
        most = threads()
        evicted = served.dropped("evicted")

    latencies = scrapes["latencies"]
    print(f"/metrics under a flood: p99 {p99(latencies) * 1e3:.1f} ms, {evicted:.0f} evicted")
    assert most <= before + 1 + served.settings.http_workers
    assert scrapes["failures"] == []  # not one reset, timed out or refused
    assert len(latencies) > 50
    assert evicted >= len(stalled["closed"]) > 0
    assert max(lifetime for _, lifetime, _ in stalled["closed"]) < 2.0


def test_a_reader_too_slow_for_the_response_is_dropped_at_the_write_timeout() -> None:
    """A client that never reads holds no worker: the one worker keeps answering."""
    with serve(http_workers=1, http_write_timeout_seconds=1.0) as served:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", served.server.port))
        slow.sendall(b"GET /v1/big HTTP/1.1\r\nHost: ctd\r\n\r\n")
        started = time.monotonic()
        while time.monotonic() - started < 0.8:
            assert served.get("/healthz")[0] == 200
        wait_for(lambda: served.dropped("write_timeout") == 1, 3, message="a write timeout")
        received = 0
        slow.settimeout(5)
        try:
            while chunk := slow.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        slow.close()
        assert 0 < received < len(BIG)


def test_at_the_cap_with_every_connection_being_answered_new_ones_wait_their_turn() -> None:
    """Nothing to displace: the next connection waits in the listen backlog, then is served."""
    with serve(http_workers=2, http_max_connections=2) as served:
        results: list[int] = []
        blocked = [
            threading.Thread(target=lambda: results.append(served.get("/v1/block")[0]))
            for _ in range(2)
        ]
        for thread in blocked:
            thread.start()
        wait_for(lambda: served.api.entered == 2, 5, message="both requests in the app")
        with socket.create_connection(("127.0.0.1", served.server.port), timeout=0.5) as third:
            third.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            with pytest.raises(TimeoutError):
                third.recv(1)
            served.api.gate.set()
            third.settimeout(5)
            assert third.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
        for thread in blocked:
            thread.join(10)
        assert results == [200, 200]
        assert sum(served.dropped(reason) for reason in DROP_REASONS) == 0


def test_the_oldest_stalled_connection_makes_room_at_the_cap() -> None:
    """The displaced connection sees the server close it; the new request is answered."""
    with serve(http_max_connections=2) as served:
        port = served.server.port
        old, young = (socket.create_connection(("127.0.0.1", port)) for _ in range(2))
        time.sleep(0.1)  # both accepted, in this order
        assert served.get("/healthz")[0] == 200
        old.settimeout(2)
        assert old.recv(1) == b""
        assert served.dropped("evicted") == 1
        young.close()
        old.close()


def test_a_stalled_connection_is_closed_at_the_read_timeout() -> None:
    with serve(http_read_timeout_seconds=0.5) as served:
        sock = socket.create_connection(("127.0.0.1", served.server.port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert 0.45 <= time.monotonic() - started < 1.5
        assert served.dropped("read_timeout") == 1
        sock.close()


def test_http_semantics_hold_over_the_real_server() -> None:
    """Content-Length, HEAD without a body, JSON 404, /readyz 503, 405, 500, bad requests."""
    with serve(ready=False) as served:
        status, headers, body = served.get("/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert headers["Content-Length"] == str(len(body))
        assert headers["Connection"] == "close"
        status, headers, body = served.get("/v1/echo", "HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["Content-Length"]) > 0
        status, _, body = served.get("/readyz")
        assert (status, json.loads(body)) == (
            503,
            {"ready": False, "checks": {"broker": False}, "quarantined": []},
        )
        assert served.get("/nope")[0] == 404
        assert served.get("/v1/echo", "POST", b'{"a": 1}')[0] == 405
        status, _, body = served.get("/v1/big")
        assert (status, len(body)) == (200, len(BIG))
        assert served.get("/v1/boom")[0] == 500
        port = served.server.port
        assert raw(port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000).startswith(b"HTTP/1.1 431 ")
        big_body = b"POST /v1/echo HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"
        assert raw(port, big_body).startswith(b"HTTP/1.1 413 ")
        chunked = b"POST /v1/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert raw(port, chunked).startswith(b"HTTP/1.1 411 ")
        assert served.dropped("bad_request") == 4
        status, _, body = served.get("/metrics?name[]=ctd_ready")
        assert status == 200
        assert b"ctd_ready" in body
        assert b"ctd_ingest" not in body


def test_stop_closes_open_connections_and_frees_the_port() -> None:
    with serve() as served:
        port = served.server.port
        sock = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.1)
    sock.settimeout(2)
    assert sock.recv(1) == b""
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
