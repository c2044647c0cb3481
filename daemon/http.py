"""HTTP endpoints: /metrics (Prometheus), /healthz (process alive), /readyz (can do work).

A small WSGI app in front of prometheus-client's own, served by a threaded
wsgiref server so that a slow scrape never blocks a probe.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
ReadinessCheck = Callable[[], dict[str, bool]]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Access logs would drown the structured log; Prometheus scrapes every few seconds."""


def make_app(
    registry: CollectorRegistry, readiness: ReadinessCheck
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """The WSGI app. ``readiness`` returns named checks; ready when all are true."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            checks = readiness()
            ready = all(checks.values())
            status = "200 OK" if ready else "503 Service Unavailable"
            return _json(start_response, status, {"ready": ready, "checks": checks})
        return _json(start_response, "404 Not Found", {"error": f"no route {path}"})

    return app


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class HttpServer:
    """Serves the app on a background thread; ``port`` is the bound port (0 picks a free one)."""

    def __init__(
        self, host: str, port: int, app: Callable[[Environ, StartResponse], Iterable[bytes]]
    ) -> None:
        self._server = make_server(
            host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.host = host
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ctd-http", daemon=True
        )

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
