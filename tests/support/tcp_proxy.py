"""A loopback TCP proxy that a test can cut and restore, to simulate a network outage.

The local broker keeps its data in memory, so an outage cannot be simulated by
stopping it. Instead the broker advertises the proxy's port (``LocalBroker(
advertised_port=proxy.port)``): every client connection, bootstrap and
per-broker alike, then goes through the proxy, which the test controls:

- ``drop()`` closes every open connection (both directions), as a network reset does;
- ``refuse()`` stops listening, so new connections are refused (ECONNREFUSED);
- ``cut()`` does both; ``restore()`` listens again on the same port.

Threads: one acceptor (accept() with a short timeout, so ``refuse()`` waits at
most ``_TICK`` seconds), two pumps per connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading

_TICK = 0.1
_CHUNK = 64 * 1024


class TcpProxy:
    """Forwards ``host:port`` to ``upstream``; set ``upstream`` before clients connect."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, upstream: tuple[str, int] | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.upstream = upstream
        self._lock = threading.Lock()
        # Held by the acceptor around accept(): refuse() closes the listener only between
        # two accepts, never under a thread blocked on it.
        self._accept_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._stopped = threading.Event()
        self._acceptor: threading.Thread | None = None
        self.accepted = 0
        """Connections accepted so far (a client that reconnected shows up here)."""

    # -- control -------------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._listen()
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._acceptor.start()
        return self

    def drop(self) -> int:
        """Close every open connection; return how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for client, server in pairs:
            _close(client)
            _close(server)
        return len(pairs)

    def refuse(self) -> None:
        """Stop listening: new connections are refused until ``restore()``."""
        with self._accept_lock:
            with self._lock:
                listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()

    def cut(self) -> int:
        """Refuse new connections and drop the open ones (a full outage)."""
        self.refuse()
        return self.drop()

    def restore(self) -> None:
        """Listen again on the same port."""
        self._listen()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._listener is not None

    def stop(self) -> None:
        self._stopped.set()
        self.cut()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- machinery -----------------------------------------------------------------
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        sock.settimeout(_TICK)
        self.port = sock.getsockname()[1]
        with self._accept_lock:
            with self._lock:
                old, self._listener = self._listener, sock
            if old is not None:
                old.close()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            with self._accept_lock:
                listener = self._listener
                client: socket.socket | None = None
                if listener is not None:
                    with contextlib.suppress(TimeoutError):
                        client, _ = listener.accept()
            if client is not None:
                self._connect(client)
            elif listener is None:
                self._stopped.wait(_TICK)

    def _connect(self, client: socket.socket) -> None:
        upstream = self.upstream
        try:
            if upstream is None:
                raise ConnectionRefusedError("no upstream set")
            server = socket.create_connection(upstream, timeout=5)
        except OSError:
            _close(client)
            return
        for sock in (client, server):
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = (client, server)
        with self._lock:
            if self._listener is None:  # cut while connecting: this one is dropped too
                _close(client)
                _close(server)
                return
            self._pairs.add(pair)
            self.accepted += 1
        for src, dst in (pair, (server, client)):
            threading.Thread(
                target=self._pump, args=(src, dst, pair), name="tcp-proxy-pump", daemon=True
            ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    """Shut down before closing: close() alone does not wake a thread blocked in recv()."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
