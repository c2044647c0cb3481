"""The webhook notifier against real HTTP servers on loopback: delivery, retries, dead ends."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from deploy.alerts import WebhookNotifier
from deploy.events import RegistryEvent, utc_now
from tests.support.helpers import wait_for

V1, V2 = "20250101T000000000001Z-aaaa", "20250101T000000000002Z-bbbb"


def event(kind: Any = "promoted", symbol: str = "BTCUSDT") -> RegistryEvent:
    return RegistryEvent(kind, symbol, V1, V2, {"n": 412, "statistic": 1.7}, utc_now())


class Hook:
    """A webhook endpoint that answers ``statuses`` in turn (then 200) and records bodies."""

    def __init__(self, statuses: list[int] | None = None, hang: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.headers: list[dict[str, str]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.attempts += 1
                hook.headers.append(dict(self.headers))
                if hang:
                    time.sleep(hang)
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.stop()


def refused_url() -> str:
    """A loopback URL whose port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_posts_the_event_json(hook: Hook) -> None:
    """A promotion event arrives as its to_dict() JSON with a JSON content type."""
    notifier = WebhookNotifier(hook.url)
    e = event()
    assert notifier.notify(e)
    wait_for(lambda: notifier.sent == 1, message="one event sent")
    assert hook.bodies == [e.to_dict()]
    assert hook.headers[0]["Content-Type"] == "application/json"
    notifier.close()


def test_only_promotion_topic_kinds_are_posted(hook: Hook) -> None:
    """Shadow placements are not alerts: only the promotions-topic kinds go out, in order."""
    notifier = WebhookNotifier(hook.url)
    assert not notifier.notify(event("shadow_placed"))
    for kind in ("rejected", "rolled_back"):
        assert notifier.notify(event(kind))
    wait_for(lambda: notifier.sent == 2, message="two events sent")
    assert [b["event"] for b in hook.bodies] == ["rejected", "rolled_back"]
    notifier.close()


def test_retries_a_failing_endpoint_until_it_answers() -> None:
    """Two 500s then a 200: the event is delivered on the third attempt and counted sent."""
    hook = Hook(statuses=[500, 503])
    notifier = WebhookNotifier(hook.url, retries=3, backoff=0.01)
    try:
        notifier.notify(event())
        wait_for(lambda: notifier.sent == 1, message="sent after retries")
        assert (hook.attempts, notifier.retried, notifier.failed) == (3, 2, 0)
        assert hook.bodies[0]["event"] == "promoted"
    finally:
        notifier.close()
        hook.stop()


def test_gives_up_after_the_last_retry() -> None:
    """An endpoint that always fails gets 1 + retries attempts, then the event counts failed."""
    hook = Hook(statuses=[500] * 10)
    notifier = WebhookNotifier(hook.url, retries=2, backoff=0.01)
    try:
        notifier.notify(event())
        wait_for(lambda: notifier.failed == 1, message="event given up")
        assert (hook.attempts, notifier.sent) == (3, 0)
    finally:
        notifier.close()
        hook.stop()


def test_client_errors_are_not_retried() -> None:
    """A 400 will not change on retry: one attempt, counted failed."""
    hook = Hook(statuses=[400])
    notifier = WebhookNotifier(hook.url, retries=3, backoff=0.01)
    try:
        notifier.notify(event())
        wait_for(lambda: notifier.failed == 1, message="event failed")
        assert hook.attempts == 1
    finally:
        notifier.close()
        hook.stop()


def test_refused_connection_never_blocks_notify() -> None:
    """With nobody listening, 5000 notifications return at once; the overflow is dropped and
    close returns within its timeout."""
    notifier = WebhookNotifier(refused_url(), retries=3, backoff=0.2, queue_size=10)
    started = time.monotonic()
    queued = sum(notifier.notify(event()) for _ in range(5000))
    assert time.monotonic() - started < 1.0
    assert queued + notifier.dropped == 5000
    assert notifier.dropped >= 5000 - 11  # queue of 10 plus the one being posted
    started = time.monotonic()
    notifier.close(timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert notifier.sent == 0


def test_hanging_endpoint_times_out_and_never_blocks_notify() -> None:
    """An endpoint that does not answer within the timeout fails the attempt; notify stays
    instant meanwhile."""
    hook = Hook(hang=2.0)
    notifier = WebhookNotifier(hook.url, timeout=0.2, retries=0, queue_size=5)
    try:
        started = time.monotonic()
        for _ in range(50):
            notifier.notify(event())
        assert time.monotonic() - started < 0.5
        wait_for(lambda: notifier.failed >= 1, timeout=5.0, message="attempt timed out")
        assert notifier.sent == 0
    finally:
        notifier.close(timeout=0.2)
        hook.stop()


def test_disabled_without_url() -> None:
    """With no URL nothing is queued or counted."""
    notifier = WebhookNotifier(None)
    assert not notifier.enabled
    assert not notifier.notify(event())
    assert (notifier.sent, notifier.failed, notifier.dropped) == (0, 0, 0)
    notifier.close()


def test_notify_after_close_is_dropped(hook: Hook) -> None:
    """Events notified after close are counted dropped, not queued forever."""
    notifier = WebhookNotifier(hook.url)
    notifier.close()
    assert not notifier.notify(event())
    assert notifier.dropped == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "ftp://example.com/x"}, "ftp://example.com/x"),
        ({"url": "http:///nohost"}, "nohost"),
        ({"url": "http://h/x", "timeout": 0}, "timeout"),
        ({"url": "http://h/x", "retries": -1}, "retries"),
        ({"url": "http://h/x", "queue_size": 0}, "queue_size"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, Any], match: str) -> None:
    """Invalid settings raise ValueError naming the setting or the bad URL."""
    with pytest.raises(ValueError, match=match):
        WebhookNotifier(**kwargs)
