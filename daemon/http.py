"""HTTP endpoints: /metrics (Prometheus), /healthz (process alive), /readyz (can do work),
and /v1/... handed to the read API (``daemon.api``).

A small WSGI app in front of prometheus-client's own, served by a threaded
wsgiref server so that a slow scrape never blocks a probe.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
ReadinessCheck = Callable[[], dict[str, bool]]


@dataclass(frozen=True, slots=True)
class Response:
    status: str
    headers: list[tuple[str, str]]
    body: bytes


Api = Callable[[str, str], Response]
"""(method, path) -> the response of a /v1 route."""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Access logs would drown the structured log; Prometheus scrapes every few seconds."""


def make_app(
    registry: CollectorRegistry, readiness: ReadinessCheck, api: Api | None = None
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """The WSGI app. ``readiness`` returns named checks; ready when all are true."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if api is not None and path.startswith("/v1/"):
            method = environ.get("REQUEST_METHOD", "GET")
            response = api(method, path)
            headers = [*response.headers, ("Content-Length", str(len(response.body)))]
            start_response(response.status, headers)
            return [] if method == "HEAD" else [response.body]
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


def json_response(status: str, body: dict[str, Any]) -> Response:
    return Response(status, [("Content-Type", "application/json")], json.dumps(body).encode())


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    response = json_response(status, body)
    start_response(status, [*response.headers, ("Content-Length", str(len(response.body)))])
    return [response.body]


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
