"""Stalled HTTP clients, run as their own process so they never share the GIL with the server.

    python -m tests.support.stall PORT CONNECTIONS SECONDS

Holds CONNECTIONS connections to 127.0.0.1:PORT for SECONDS, in three kinds taken in turn:
``silent`` (sends nothing), ``partial`` (half a request head, then nothing) and ``trickle``
(half a request head, then one header line a second, never the blank line). A connection
the server closes is opened again at once, as a slowloris attacker does. Prints one JSON
object: per closed connection its kind, lifetime in seconds and how it ended (``eof``,
``reset`` or ``data``: the server answered, e.g. a 503), and ``failed`` connects.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import sys
import time
from dataclasses import dataclass

KINDS = ("silent", "partial", "trickle")
PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: ctd\r\n"


@dataclass(eq=False)
class Stalled:
    sock: socket.socket
    kind: str
    opened: float


def _open(port: int, kind: str) -> Stalled:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind != "silent":
        sock.sendall(PARTIAL)
    sock.setblocking(False)
    return Stalled(sock, kind, time.monotonic())


def main(port: int, connections: int, seconds: float) -> dict[str, object]:
    selector = selectors.DefaultSelector()
    closed: list[tuple[str, float, str]] = []
    failed = 0

    def add(kind: str) -> None:
        nonlocal failed
        try:
            stalled = _open(port, kind)
        except OSError:
            failed += 1
            return
        selector.register(stalled.sock, selectors.EVENT_READ, stalled)

    for i in range(connections):
        add(KINDS[i % len(KINDS)])
    end = time.monotonic() + seconds
    next_trickle = time.monotonic() + 1
    while (now := time.monotonic()) < end:
        for key, _ in selector.select(min(end, next_trickle) - now):
            stalled: Stalled = key.data
            try:
                how = "data" if stalled.sock.recv(4096) else "eof"
            except ConnectionResetError:
                how = "reset"
            except BlockingIOError:
                continue
            selector.unregister(stalled.sock)
            stalled.sock.close()
            closed.append((stalled.kind, time.monotonic() - stalled.opened, how))
            add(stalled.kind)
        if time.monotonic() >= next_trickle:
            next_trickle += 1
            for key in list(selector.get_map().values()):
                if key.data.kind == "trickle":
                    # Closed by the server: the read above sees it next round.
                    with contextlib.suppress(OSError):
                        key.data.sock.send(b"X-Trickle: 1\r\n")
    still_open = len(selector.get_map())
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {"closed": closed, "failed": failed, "still_open": still_open}


if __name__ == "__main__":
    port, connections, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(main(port, connections, seconds)))
