# Over 400 lines: one selector loop; accept, read, dispatch and write share connection state.
"""``HttpServer``: serves a WSGI app (``daemon.http.make_app``), bounded whatever its
clients do (issue 17: a thread per connection let 684 stalled
connections make 697 threads):

- one selector thread accepts connections, reads each request without blocking and writes
  each response; a fixed pool of ``workers`` threads runs the app on complete requests only.
  A stalled or slow client costs a socket and a small buffer, never a thread: HTTP uses at
  most ``1 + workers`` threads.
- a connection has ``read_timeout`` seconds from its accept to send its whole request, and
  ``write_timeout`` seconds to take the response; then it is dropped.
- at most ``max_connections`` are open. One more displaces the oldest connection still
  sending its request (the likeliest to be stalled) once that one has had ``_EVICT_GRACE``
  to send it, so a scrape always gets in; until then, or when every open connection is
  being answered, new ones wait in the kernel's listen backlog.
- one request per connection (``Connection: close``); request heads are capped at 16 KiB,
  bodies (the API is read-only) at 64 KiB. Requests over those get a 4xx from the server.

Every dropped connection is reported to ``on_drop`` with one of ``DROP_REASONS``.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from io import BytesIO
from typing import Any, Final, Literal, get_args
from urllib.parse import unquote

from daemon.logs import get_logger

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

DropReason = Literal["evicted", "read_timeout", "write_timeout", "bad_request"]
"""Why the server closed a connection before a whole exchange: ``evicted`` (displaced at the
cap while still sending its request), ``read_timeout`` / ``write_timeout`` (too slow to send
the request / to take the response), ``bad_request`` (malformed or too large, answered 4xx)."""
DROP_REASONS: Final[tuple[DropReason, ...]] = get_args(DropReason)

MAX_HEAD_BYTES: Final = 16 * 1024
MAX_BODY_BYTES: Final = 64 * 1024
_RECV_BYTES: Final = 16 * 1024  # so a request buffer stays under head + body + 16 KiB
_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets
_ACCEPT_BATCH: Final = 32  # per round, so that reads keep up with a flood of connects
_EVICT_GRACE: Final = 0.01
"""Seconds a connection has to send its request before a new one may displace it: a
scraper accepted while its request is still on the way is read, not displaced by the
flood accepted right after it (the listener waits, connects queue in the backlog)."""

_log = get_logger(component="http")


class _BadRequest(Exception):
    """A request the server answers itself with ``status`` and closes."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(eq=False, slots=True)
class _Conn:
    """One client connection; owned by the selector thread except while a worker runs it."""

    sock: socket.socket
    peer: str
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: memoryview | None = None
    # After a 4xx the server gives itself: read and discard what the client still sends, so
    # that closing with unread data (a reset) does not destroy the answer in flight.
    linger: bool = False


class HttpServer:
    """Serves ``app`` on a background thread, bounded as the module docstring says.

    ``port`` is the bound port (0 picks a free one); the socket is bound on construction.
    ``on_drop`` is called on the selector thread with the reason of each dropped connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        app: WsgiApp,
        *,
        workers: int = 4,
        max_connections: int = 512,
        read_timeout: float = 5.0,
        write_timeout: float = 10.0,
        on_drop: Callable[[DropReason], None] = lambda reason: None,
    ) -> None:
        if workers < 1 or max_connections < 1:
            raise ValueError(
                f"workers and max_connections must be >= 1, got {workers}, {max_connections}"
            )
        self._app, self._on_drop = app, on_drop
        self._max_connections = max_connections
        self._read_timeout, self._write_timeout = read_timeout, write_timeout
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # The kernel's longest backlog: it holds connects beyond the cap until they are taken
        # (displacing a stalled one); a short one would drop SYNs (a 1 s retry for a scrape).
        self._listener = socket.create_server((host, port), family=family, backlog=socket.SOMAXCONN)
        self._listener.setblocking(False)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ctd-http-worker")
        self._done: queue.SimpleQueue[tuple[_Conn, bytes]] = queue.SimpleQueue()
        # Both are ordered by deadline: a deadline is the insertion time plus a constant.
        self._reading: dict[_Conn, None] = {}
        self._writing: dict[_Conn, None] = {}
        self._conns: set[_Conn] = set()  # every open one, reading, running or writing
        self._paused = False  # the listener, at the cap with no connection to displace
        self._resume_at: float | None = None  # paused until the oldest reader's grace ends
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="ctd-http", daemon=True)

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the socket; an app call in progress finishes unheard."""
        if self._stopping:
            return
        self._stopping = True
        if self._thread.is_alive():
            self._wake()
            self._thread.join()
        else:
            self._close_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # The selector thread.

    def _serve(self) -> None:
        try:
            while not self._stopping:
                # Accepts last: a connection accepted in the previous round is read before
                # new ones can displace it at the cap.
                events = sorted(self._selector.select(self._timeout()), key=_accepts_last)
                for key, mask in events:
                    try:
                        self._handle(key.data, mask)
                    except Exception:  # one bad connection never stops the server
                        _log.exception("http_loop_failed")
                        if isinstance(key.data, _Conn):
                            self._close(key.data)
                now = time.monotonic()
                self._expire(now)
                if self._resume_at is not None and now >= self._resume_at:
                    self._resume()
        finally:
            self._close_all()

    def _handle(self, data: object, mask: int) -> None:
        if data == "accept":
            self._accept()
        elif data == "wake":
            self._drain_wake()
        elif isinstance(data, _Conn) and data in self._conns:
            try:
                if mask & selectors.EVENT_READ:
                    self._read(data)
                else:
                    self._write(data)
            except OSError:
                self._close(data)  # the client went away

    def _timeout(self) -> float | None:
        deadlines = [next(iter(d)).deadline for d in (self._reading, self._writing) if d]
        if self._resume_at is not None:
            deadlines.append(self._resume_at)
        return max(min(deadlines) - time.monotonic(), 0.0) if deadlines else None

    def _expire(self, now: float) -> None:
        phases: tuple[tuple[dict[_Conn, None], DropReason], ...] = (
            (self._reading, "read_timeout"),
            (self._writing, "write_timeout"),
        )
        for phase, reason in phases:
            while phase and (conn := next(iter(phase))).deadline <= now:
                if conn.outbox is not None and not conn.outbox:
                    self._close(conn)  # answered; lingered long enough
                else:
                    self._drop(conn, reason)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            full = len(self._conns) >= self._max_connections
            if full and not self._reading:  # all being answered: the backlog holds the rest
                self._pause(None)
                return
            if full:
                oldest = next(iter(self._reading))
                graced = oldest.deadline - self._read_timeout + _EVICT_GRACE
                if graced > time.monotonic():
                    self._pause(graced)
                    return
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: those open time out and free some
                _log.warning("http_accept_failed", error=str(exc))
                return
            if full:
                self._drop(next(iter(self._reading)), "evicted")
            sock.setblocking(False)
            conn = _Conn(sock, str(address[0]), time.monotonic() + self._read_timeout)
            self._conns.add(conn)
            self._reading[conn] = None
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._read(conn)  # a scraper's request is often in already

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            self._close(conn)
            return
        if conn.linger:
            return
        conn.inbox += chunk
        try:
            environ = self._parse(conn)
        except _BadRequest as exc:
            self._on_drop("bad_request")
            self._selector.unregister(conn.sock)
            del self._reading[conn]
            conn.linger = True
            self._reply(conn, _plain(exc.status))
            return
        if environ is not None:
            self._selector.unregister(conn.sock)
            del self._reading[conn]
            self._pool.submit(self._run, conn, environ)

    def _reply(self, conn: _Conn, data: bytes) -> None:
        conn.outbox = memoryview(data)
        conn.deadline = time.monotonic() + self._write_timeout
        self._writing[conn] = None
        self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)  # most responses fit in the socket buffer at once

    def _write(self, conn: _Conn) -> None:
        assert conn.outbox is not None
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return
        conn.outbox = conn.outbox[sent:]
        if conn.outbox:
            return
        if conn.linger:  # until the client closes too, or the write deadline
            conn.sock.shutdown(socket.SHUT_WR)
            conn.inbox.clear()
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        else:
            self._close(conn)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            try:
                conn, data = self._done.get_nowait()
            except queue.Empty:
                return
            try:
                self._reply(conn, data)
            except OSError:
                self._close(conn)

    def _drop(self, conn: _Conn, reason: DropReason) -> None:
        self._on_drop(reason)
        if reason == "write_timeout":  # a reset: the kernel drops the unsent rest at once
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self._reading.pop(conn, None)
        self._writing.pop(conn, None)
        # Not registered while a worker runs it, or once closed.
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        self._conns.discard(conn)
        conn.sock.close()
        self._resume()

    def _pause(self, until: float | None) -> None:
        """Stop accepting until a connection closes (or, given, until ``until``)."""
        if not self._paused:
            self._selector.unregister(self._listener)
            self._paused = True
        self._resume_at = until

    def _resume(self) -> None:
        self._resume_at = None
        if self._paused and not self._stopping:
            self._paused = False
            self._selector.register(self._listener, selectors.EVENT_READ, "accept")

    def _close_all(self) -> None:
        for conn in list(self._conns):
            self._close(conn)
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def _wake(self) -> None:
        # Full: the selector wakes anyway. Closed: the server stopped.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _parse(self, conn: _Conn) -> Environ | None:
        """The WSGI environ once the whole request is in ``conn.inbox``, else None."""
        end = conn.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbox) > MAX_HEAD_BYTES:
                raise _BadRequest("431 Request Header Fields Too Large")
            return None
        environ = _environ(bytes(conn.inbox[:end]), self.host, self.port, conn.peer)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = conn.inbox[end + 4 :]
        if len(body) < length:
            return None
        environ["wsgi.input"] = BytesIO(bytes(body[:length]))
        return environ

    # The workers.

    def _run(self, conn: _Conn, environ: Environ) -> None:
        try:
            data = _call(self._app, environ)
        except Exception:
            _log.exception("http_app_failed", path=environ.get("PATH_INFO"))
            data = _plain("500 Internal Server Error")
        self._done.put((conn, data))
        self._wake()


def _accepts_last(event: tuple[selectors.SelectorKey, int]) -> bool:
    return bool(event[0].data == "accept")


def _environ(head: bytes, host: str, port: int, peer: str) -> Environ:
    """The WSGI environ of a request head (request line and headers, without the blank line)."""
    line, *fields = head.decode("latin-1").split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[1].startswith("/") or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest("400 Bad Request")
    method, target, protocol = parts
    path, _, query = target.partition("?")
    environ: Environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, "latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": protocol,
        "REMOTE_ADDR": peer,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for item in fields:
        name, colon, value = item.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest("400 Bad Request")
        if "_" in name:
            continue  # would alias a dash header in the environ (as wsgiref does)
        key = name.upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
        value = value.strip()
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    if "HTTP_TRANSFER_ENCODING" in environ:
        raise _BadRequest("411 Length Required")
    length = environ.get("CONTENT_LENGTH", "0")
    if not (length.isascii() and length.isdigit()):
        raise _BadRequest("400 Bad Request")
    if int(length) > MAX_BODY_BYTES:
        raise _BadRequest("413 Content Too Large")
    return environ


def _call(app: WsgiApp, environ: Environ) -> bytes:
    """Run ``app`` on one request; the whole response, head and body, ready to send."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    chunks: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [(status, headers)]
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(chunk for chunk in result if chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the app returned without calling start_response")
    status, headers = started[0]
    body = b"".join(chunks)
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
    if not any(name.lower() == "content-length" for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"Date: {formatdate(usegmt=True)}", "Server: ctd", "Connection: close"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if environ["REQUEST_METHOD"] == "HEAD" else head + body


def _plain(status: str) -> bytes:
    """A response the server gives itself: status line, text body, ``Connection: close``."""
    body = f"{status}\n".encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
