"""The registry on S3-compatible object storage (``s3://bucket/prefix``), through s3fs.

Credentials, endpoint and region come only from the standard AWS configuration
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, profiles, instance roles...), so one URL names the
same registry on every machine of a fleet.

Each method is one or a few plain S3 calls made through botocore (s3fs's
``_call_s3``): no listing cache and no instance cache, since other machines
write at the same time. ``put_if`` is a conditional PutObject (``IfMatch`` /
``IfNoneMatch``), which S3 applies atomically. s3fs filters keyword arguments
against botocore's model and drops those it does not know, so a botocore
without conditional writes would turn every compare-and-swap into a blind
overwrite: the constructor refuses to run on one.

Every storage failure raises ``S3StorageError`` (an ``OSError``, never a
``FileNotFoundError``: a missing bucket must not read as a missing object).
"""

from __future__ import annotations

import asyncio
import errno
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar
from urllib.parse import urlsplit

try:
    import aiohttp
    import botocore.exceptions
    import botocore.session
    import s3fs
    from fsspec.asyn import sync
except ImportError as exc:  # pragma: no branch - which one is missing varies
    raise ImportError(
        f"S3 registry storage needs the 's3' extra: pip install 'ctd[s3]' ({exc})",
        name=exc.name,
    ) from exc

from deploy import durable
from deploy.registry.storage import Conflict, Stored

DELETE_BATCH: Final = 1000
"""DeleteObjects takes at most 1000 keys per request."""

P = ParamSpec("P")
T = TypeVar("T")

_LOST_RACE_CODES: Final = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_HTTP_PRECONDITION_FAILED: Final = 412

# What a storage call can raise besides s3fs's own translation (an OSError): connection
# and protocol errors of botocore and aiohttp, timeouts.
_TRANSPORT_ERRORS: Final = (
    OSError,
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
)


class S3StorageError(OSError):
    """An S3 call failed: ``code`` and ``status`` are S3's error code and HTTP status, if any."""

    def __init__(self, where: str, operation: str, cause: BaseException) -> None:
        self.where, self.operation = where, operation
        self.code, self.status = _s3_error(cause)
        detail = f"{self.code} (HTTP {self.status})" if self.code or self.status else ""
        reason = f"{detail}: {cause}" if detail else f"{type(cause).__name__}: {cause}"
        super().__init__(errno.EIO, f"{where}: {operation} failed: {reason}")


class S3Storage:
    """``RegistryStorage`` on S3 (or any store speaking its API with conditional writes).

    Tags are ETags. ``cache_dir`` holds the local copies ``local_file`` gives,
    under ``<bucket>/<prefix>/<key>``.

    A transport-level retry (botocore's or s3fs's, after a timeout or a 5xx) can
    land the first attempt of a ``put_if`` and then be refused itself with 412.
    ``put_if`` therefore counts a refusal as success when the object now holds
    exactly the bytes it was writing. That is safe for the registry because
    every compare-and-swap it makes writes content that no other write repeats:
    slots.json carries the next seq, the decision lines (with their time and
    actor) and the owner's claim; the ledger carries every line with its seq; a
    version's metadata.json carries the version id. Equal bytes can only be our
    own write, or one that made the very same change. (If another writer replaces
    the landed attempt before the retry reads it, ``put_if`` raises Conflict for
    a write that did land; the registry's retry then reads slots.json with that
    write in it and its ledger lines re-appended, so the state stays whole.)
    """

    shared = True

    def __init__(self, url: str, cache_dir: Path) -> None:
        self.bucket, self.prefix = _parse_url(url)
        if not _conditional_put_supported():
            raise RuntimeError(
                f"botocore {botocore.__version__} has no conditional PutObject (IfMatch, "
                "IfNoneMatch); s3fs would silently drop them and put_if would overwrite "
                "blindly. Upgrade: pip install -U 'ctd[s3]'"
            )
        self._cache = Path(cache_dir).joinpath(self.bucket, *self.prefix.split("/"))
        self._fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    # -- the protocol ------------------------------------------------------------------------

    def get(self, key: str) -> Stored | None:
        return self._run(self._get, self._key(key))

    def put(self, key: str, data: bytes) -> None:
        full = self._key(key)
        self._run(self._call, "put_object", full, Key=full, Body=bytes(data))

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        return self._run(self._put_if, key, self._key(key), bytes(data), tag)

    def children(self, prefix: str) -> list[str]:
        return self._run(self._children, self._key(prefix))

    def delete(self, prefix: str) -> None:
        self._run(self._delete, self._key(prefix))

    def keys(self, prefix: str) -> list[str]:
        return self._run(self._keys, self._key(prefix))

    def local_file(self, key: str) -> Path:
        """A copy under ``cache_dir``, downloaded on first use only: the registry asks for
        version objects, which never change, so a cached copy stays true."""
        path = self._cache.joinpath(*_parts(key))
        if path.is_file():
            return path
        stored = self._run(self._get, self._key(key))
        if stored is None:
            raise FileNotFoundError(f"no object {key!r} in {self.url}")
        durable.write_atomic(path, stored.data)
        return path

    def sweep(self, scope: str) -> list[str]:
        """Nothing to sweep: a PutObject lands whole or not at all (no multipart uploads, no
        temp objects), so an interrupted write leaves nothing behind. An incomplete version
        (model.onnx without metadata.json) is ``Registry.recover``'s, which leaves it alone on
        shared storage: it may be another machine's copy in flight."""
        return []

    # -- S3 calls --------------------------------------------------------------------------

    async def _get(self, full: str) -> Stored | None:
        """One GetObject: bytes and ETag from the same response, so they always agree."""
        try:
            response = await self._call("get_object", full, Key=full)
        except S3StorageError as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        with self._failures("get_object", full):
            async with response["Body"] as body:
                data = await body.read()
        return Stored(data, response["ETag"])

    async def _put_if(self, key: str, full: str, data: bytes, tag: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        try:
            response = await self._call("put_object", full, Key=full, Body=data, **condition)
        except S3StorageError as exc:
            lost = (
                exc.code in _LOST_RACE_CODES
                or exc.status == _HTTP_PRECONDITION_FAILED
                or (tag is not None and exc.code == "NoSuchKey")
            )
            if not lost:
                raise
            current = await self._get(full)
            if current is not None and current.data == data:
                return current.tag  # our own earlier attempt landed (see the class docstring)
            raise Conflict(key, tag) from None
        etag: str = response["ETag"]
        return etag

    async def _children(self, full: str) -> list[str]:
        base = f"{full}/" if full else ""
        names: set[str] = set()
        async for page in self._pages(base, Delimiter="/"):
            names.update(o["Key"][len(base) :] for o in page.get("Contents", []))
            names.update(
                p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", [])
            )
        return sorted(n for n in names if n and not n.startswith("."))

    async def _keys(self, full: str) -> list[str]:
        """ListObjectsV2 without a delimiter: every key under ``full``, 1000 a page."""
        base = f"{full}/" if full else ""
        found: list[str] = []
        async for page in self._pages(base):
            found.extend(o["Key"][len(base) :] for o in page.get("Contents", []))
        return sorted(k for k in found if k and not any(p.startswith(".") for p in k.split("/")))

    async def _delete(self, full: str) -> None:
        keys = [full] if full != self.prefix else []
        async for page in self._pages(f"{full}/" if full else ""):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            objects = {"Objects": [{"Key": k} for k in batch], "Quiet": True}
            response = await self._call("delete_objects", full, Delete=objects)
            if errors := response.get("Errors"):
                first = errors[0]
                raise S3StorageError(
                    self._where(first.get("Key", full)),
                    "delete_objects",
                    botocore.exceptions.ClientError(
                        {"Error": {"Code": first.get("Code"), "Message": first.get("Message")}},
                        f"DeleteObjects ({len(errors)} of {len(batch)} keys)",
                    ),
                )

    async def _pages(self, prefix: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Every page of ListObjectsV2 under ``prefix`` (1000 entries per page at most)."""
        while True:
            page = await self._call("list_objects_v2", prefix, Prefix=prefix, **params)
            yield page
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def _call(self, operation: str, full: str, **params: Any) -> dict[str, Any]:
        """One botocore call on this bucket; every failure as ``S3StorageError``."""
        with self._failures(operation, full):
            response: dict[str, Any] = await self._fs._call_s3(
                operation, Bucket=self.bucket, **params
            )
        return response

    @contextmanager
    def _failures(self, operation: str, full: str) -> Iterator[None]:
        try:
            yield
        except S3StorageError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise S3StorageError(self._where(full), operation, exc) from exc

    def _run(self, fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a coroutine on s3fs's event loop thread and wait for it."""
        result: T = sync(self._fs.loop, fn, *args, **kwargs)
        return result

    def _key(self, key: str) -> str:
        """The object key of a registry key: under the prefix, normalised."""
        return "/".join([self.prefix, *_parts(key)] if self.prefix else _parts(key))

    def _where(self, full: str) -> str:
        return f"s3://{self.bucket}/{full}"


def _parts(key: str) -> list[str]:
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"registry key {key!r} leaves the storage root")
    return parts


def _parse_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    prefix = [p for p in parts.path.split("/") if p]
    if (
        parts.scheme != "s3"
        or not parts.netloc
        or parts.query
        or parts.fragment
        or any(p in (".", "..") for p in prefix)
    ):
        raise ValueError(f"an S3 registry URL looks like s3://bucket/prefix, got {url!r}")
    return parts.netloc, "/".join(prefix)


@functools.cache
def _conditional_put_supported() -> bool:
    """Whether the installed botocore's PutObject takes IfMatch and IfNoneMatch."""
    model = botocore.session.get_session().get_service_model("s3")
    members = model.operation_model("PutObject").input_shape.members
    return {"IfMatch", "IfNoneMatch"} <= set(members)


def _s3_error(exc: BaseException | None) -> tuple[str | None, int | None]:
    """(code, HTTP status) of the botocore ClientError behind ``exc`` (s3fs translates
    ClientErrors into OSErrors and keeps the original as ``__cause__``)."""
    while exc is not None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code, status
        exc = exc.__cause__
    return None, None
