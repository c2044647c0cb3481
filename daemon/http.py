"""HTTP endpoints: /metrics (Prometheus), /healthz (process alive), /readyz (can do work),
and /v1/... handed to the read API (``daemon.api``): a small WSGI app in front of
prometheus-client's own, served by ``daemon.httpserver.HttpServer`` (bounded threads,
timeouts and connections).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app

from daemon.httpserver import Environ, StartResponse, WsgiApp
from deploy.quarantine import Quarantined

ReadinessCheck = Callable[[], dict[str, bool]]


@dataclass(frozen=True, slots=True)
class Response:
    status: str
    headers: list[tuple[str, str]]
    body: bytes


Api = Callable[[str, str], Response]
"""(method, path) -> the response of a /v1 route."""


def make_app(
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    api: Api | None = None,
    *,
    quarantined: Callable[[], Sequence[Quarantined]] = tuple,
) -> WsgiApp:
    """The WSGI app. ``readiness`` returns named checks; ready when all are true. Quarantined
    symbols are listed in /readyz's JSON but never make it unready: the others still work."""
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
            held = [entry.to_dict() for entry in quarantined()]
            body = {"ready": ready, "checks": checks, "quarantined": held}
            return _json(start_response, status, body)
        return _json(start_response, "404 Not Found", {"error": f"no route {path}"})

    return app


def json_response(status: str, body: dict[str, Any]) -> Response:
    return Response(status, [("Content-Type", "application/json")], json.dumps(body).encode())


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    response = json_response(status, body)
    start_response(status, [*response.headers, ("Content-Length", str(len(response.body)))])
    return [response.body]
