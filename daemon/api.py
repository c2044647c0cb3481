"""The read API under /v1 on the daemon's HTTP server: what a downstream service needs.

    GET /v1/symbols                              status of every symbol (daemon.status)
    GET /v1/predictions/{symbol}                 the latest served prediction record
    GET /v1/models/{symbol}/champion             the champion's metadata.json
    GET /v1/models/{symbol}/champion/model.onnx  its ONNX file; ETag = its sha256

Read-only (GET and HEAD). Symbols are validated before any lookup; an unknown
symbol, version or route is a 404 with a JSON reason. A prediction is known
only to the daemon that serves the symbol (its owner in a fleet), and only
once a bar was scored since it started.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from daemon.http import Response, json_response
from daemon.live.publish import PredictionRecord
from daemon.status import all_status
from daemon.store.bars import BarStore
from deploy.errors import RegistryError, UnknownVersionError
from deploy.registry import Registry
from trainers.data import InvalidSymbolError, validate_symbol


class ReadApi:
    """Routes /v1 paths to the registry, the bar store and the published predictions."""

    def __init__(
        self,
        registry: Registry,
        store: BarStore,
        latest: Callable[[str], PredictionRecord | None],
    ) -> None:
        self._registry, self._store, self._latest = registry, store, latest

    def __call__(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return json_response("405 Method Not Allowed", {"error": "read-only API: GET"})
        try:
            return self._route(path)
        except (InvalidSymbolError, UnknownVersionError) as exc:
            return json_response("404 Not Found", {"error": str(exc)})
        except (RegistryError, OSError) as exc:
            return json_response("503 Service Unavailable", {"error": str(exc)})

    def _route(self, path: str) -> Response:
        parts = path.strip("/").split("/")[1:]  # after "v1"
        if parts == ["symbols"]:
            rows = all_status(self._store, self._registry)
            return json_response("200 OK", {"symbols": [r.to_dict() for r in rows]})
        if len(parts) == 2 and parts[0] == "predictions":
            return self._prediction(validate_symbol(parts[1]))
        if parts[:1] == ["models"] and parts[2:3] == ["champion"] and len(parts) <= 4:
            return self._champion(validate_symbol(parts[1]), parts[3:])
        return json_response("404 Not Found", {"error": f"no route {path}"})

    def _prediction(self, symbol: str) -> Response:
        record = self._latest(symbol)
        if record is None:
            return json_response(
                "404 Not Found", {"error": f"no prediction for {symbol} served by this daemon"}
            )
        return json_response("200 OK", record.to_dict())

    def _champion(self, symbol: str, rest: list[str]) -> Response:
        file = rest == ["model.onnx"]
        if rest and not file:
            return json_response("404 Not Found", {"error": f"no route .../champion/{rest[0]}"})
        champion = self._registry.slots(symbol).champion
        if champion is None:
            return json_response("404 Not Found", {"error": f"{symbol} has no champion"})
        if not file:
            meta: dict[str, Any] = self._registry.metadata(symbol, champion).to_dict()
            return json_response("200 OK", meta)
        data = self._registry.model_path(symbol, champion).read_bytes()  # sha256 checked
        digest = hashlib.sha256(data).hexdigest()
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("ETag", f'"{digest}"'),
            ("X-Ctd-Version", champion),
        ]
        return Response("200 OK", headers, data)
