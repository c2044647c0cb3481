"""A real S3 HTTP API for tests: moto's S3 server in-process on loopback, one request at a time.

``s3_server`` (session) serves moto's WSGI app on a free loopback port and
points the standard AWS environment at it (endpoint, dummy credentials,
region) until the session ends, so s3fs, boto3 and subprocesses reach it with
no configuration of their own. ``s3_bucket`` creates a fresh bucket per test.

Every request is handled under one lock. Real S3 applies a conditional PUT
atomically, but moto checks the condition and then stores the object without a
lock, and its werkzeug server runs each request in a thread: two truly
concurrent conditional PUTs could both succeed there. Serialising requests
gives the tests the atomicity real S3 has.

``fail_once_after`` injects the fault a transport-level retry answers: the
server applies a request, then answers 500 instead of its response, so the
client's retry meets the state its first attempt left.

moto, boto3 and werkzeug are imported on first use: registering this plugin
costs a session that never touches S3 nothing.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

# Removed for the session, with the config files pointed nowhere, so a developer's own AWS
# setup cannot leak in (AWS_ENDPOINT_URL_S3 would win over AWS_ENDPOINT_URL).
_REMOVED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3")
_INJECTED_500 = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"


class MotoS3Server:
    """moto's S3 API on ``host``, on a port the OS picks, every request under one lock."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                pass  # no line per request; errors are still logged

        self._app = DomainDispatcherApplication(create_backend_app)
        self._lock = threading.Lock()
        self._faults: list[Callable[[Environ], bool]] = []
        self._server = make_server(
            host, 0, self._serve, threaded=True, request_handler=QuietHandler
        )
        self.endpoint = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="moto-s3", daemon=True
        )
        self._client: Any = None

    def start(self) -> MotoS3Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def client(self) -> Any:
        """A boto3 S3 client of this server, for what a test does behind the storage's back."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            )
        return self._client

    def fail_once_after(self, matches: Callable[[Environ], bool]) -> None:
        """The next request ``matches`` accepts is applied, then answered 500 (InternalError)
        instead of its real response."""
        with self._lock:
            self._faults.append(matches)

    @property
    def pending_faults(self) -> int:
        """Faults set with ``fail_once_after`` that no request has met yet."""
        with self._lock:
            return len(self._faults)

    def seed(self, bucket: str, objects: Mapping[str, bytes]) -> None:
        """Store ``objects`` in ``bucket`` straight into moto's in-process backend: a fast way to
        fill a bucket (over HTTP, moto takes 10-20 ms per object)."""
        from moto.s3.models import s3_backends

        with self._lock:
            partition, account = s3_backends.bucket_accounts[bucket]
            backend = s3_backends[account][partition]
            for key, value in objects.items():
                backend.put_object(bucket, key, value)

    def _serve(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            fault = next((f for f in self._faults if f(environ)), None)
            if fault is None:
                return _consume(self._app(environ, start_response))  # whole, under the lock
            self._faults.remove(fault)
            _consume(self._app(environ, lambda *_: None))
        start_response("500 Internal Server Error", [("Content-Type", "application/xml")])
        return [_INJECTED_500]


def _consume(response: Iterable[bytes]) -> list[bytes]:
    try:
        return list(response)
    finally:
        close = getattr(response, "close", None)
        if close is not None:
            close()


def is_put_of(key: str) -> Callable[[Environ], bool]:
    """Matches a PutObject of ``key`` (a path-style request: PUT /bucket/key)."""

    def matches(environ: Environ) -> bool:
        path = str(environ.get("PATH_INFO", ""))
        return environ.get("REQUEST_METHOD") == "PUT" and path.endswith(f"/{key}")

    return matches


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3Server]:
    """moto's S3 server for the session, with the AWS environment pointing at it."""
    server = MotoS3Server().start()
    nowhere = tmp_path_factory.mktemp("aws") / "none"
    settings = {
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(nowhere),
        "AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
    }
    saved = {name: os.environ.get(name) for name in (*settings, *_REMOVED)}
    for name in _REMOVED:
        os.environ.pop(name, None)
    os.environ.update(settings)
    try:
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoS3Server) -> str:
    """A new, empty bucket on the session's S3 server; its name."""
    name = f"ctd-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name
