"""Alert sinks: where registry decisions are announced. One protocol; the webhook first.

``AlertSink`` is the extension point: the daemon (``daemon.live.announce``) hands
every registry event to each configured sink, which takes the kinds it is for (the
promotions topic and the webhook: promotion-topic kinds; the MLflow mirror: every slot
change), and exports each sink's delivery counts as ``ctd_alert_deliveries_total{sink,
outcome}``.

The webhook: ``notify`` only enqueues (a full queue drops the event and counts it); one
background thread posts, with a timeout per attempt and exponential backoff
between retries. A webhook that is slow, failing or gone costs the daemon
nothing but the counters it exports (``sent``, ``failed``, ``dropped``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Final, Protocol

from deploy.events import RegistryEvent

_STOP: Final = object()
# 408 (timeout) and 429 (rate limited) are worth retrying; other 4xx will not change.
_RETRYABLE_4XX: Final = frozenset({408, 429})


class AlertSink(Protocol):
    """Takes registry decisions somewhere people or systems see them.

    ``notify`` never raises and never blocks for long: a sink that cannot
    deliver counts it and carries on. It returns whether the event was accepted
    (queued or delivered). ``deliveries`` maps an outcome ("sent", "failed",
    "dropped") to its count so far. ``close`` delivers what it can within
    ``timeout`` seconds.
    """

    name: str

    def notify(self, event: RegistryEvent) -> bool: ...

    def deliveries(self) -> Mapping[str, int]: ...

    def close(self, timeout: float) -> None: ...


class WebhookNotifier:
    """An ``AlertSink`` that POSTs ``RegistryEvent.to_json()`` of promotion-topic events to
    ``url``.

    ``url=None`` disables it (``notify`` returns False). Each event gets
    ``1 + retries`` attempts, sleeping ``backoff * 2**i`` before retry i+1;
    2xx is success, 5xx / 408 / 429 / connection errors / timeouts are retried,
    other statuses fail at once. Counters are read without a lock (ints).
    """

    def __init__(
        self,
        url: str | None,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        queue_size: int = 1000,
    ) -> None:
        if url is not None:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"webhook url must be an http(s) URL with a host, got {url!r}")
        if not timeout > 0:
            raise ValueError(f"webhook timeout must be > 0 seconds, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"webhook retries must be >= 0, got {retries!r}")
        if not backoff >= 0:
            raise ValueError(f"webhook backoff must be >= 0 seconds, got {backoff!r}")
        if queue_size < 1:
            raise ValueError(f"webhook queue_size must be >= 1, got {queue_size!r}")
        self.url = url
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.sent = 0
        """Events delivered (a 2xx answer)."""
        self.failed = 0
        """Events given up on after their last attempt."""
        self.dropped = 0
        """Events not queued: the queue was full, or the notifier was closed."""
        self.retried = 0
        """Attempts after the first, over all events."""
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if url is not None:
            self._thread = threading.Thread(target=self._run, name="ctd-webhook", daemon=True)
            self._thread.start()

    name = "webhook"

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def deliveries(self) -> Mapping[str, int]:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped}

    @property
    def pending(self) -> int:
        """Events queued and not yet finished."""
        return self._queue.qsize()

    def notify(self, event: RegistryEvent) -> bool:
        """Queue ``event`` for delivery; never blocks. True if queued.

        Kinds outside the promotions topic (shadow placements, training notes) are
        not alerts and are skipped.
        """
        if self.url is None or not event.is_promotion_topic_event:
            return False
        if self._closing.is_set():
            self._count("dropped")
            return False
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._count("dropped")
            return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout`` seconds (one attempt each, no backoff),
        then stop. Returns after ``timeout`` at the latest; idempotent."""
        self._closing.set()
        thread = self._thread
        if thread is None:
            return
        # A full queue means the worker is busy; it stops by itself once the queue is empty.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, RegistryEvent):
                self._count("sent" if self._deliver(item) else "failed")
            if self._closing.is_set() and self._queue.empty():
                return

    def _deliver(self, event: RegistryEvent) -> bool:
        body = event.to_json()
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retried")
                # Backoff waits end early on close: shutdown tries each event once more, at most.
                if self._closing.wait(self.backoff * 2 ** (attempt - 1)):
                    return self._post(body) is True
            outcome = self._post(body)
            if outcome is not None:
                return outcome
        return False

    def _post(self, body: bytes) -> bool | None:
        """True on 2xx, False on a status not worth retrying, None on a retryable failure."""
        assert self.url is not None
        request = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "ctd-webhook"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read()
                return 200 <= int(response.status) < 300
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code in _RETRYABLE_4XX:
                return None
            return False
        except (OSError, ValueError):  # URLError, timeouts, resets; bad responses
            return None

    def _count(self, name: str) -> None:
        with self._count_lock:
            setattr(self, name, getattr(self, name) + 1)
