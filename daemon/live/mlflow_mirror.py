"""Champion and shadow mirrored into MLflow's model registry (optional extra ``mlflow``).

For platforms that look models up in MLflow: each symbol is a registered model
``<prefix><SYMBOL>``, each ctd version that held a slot one model version of it
(tags ``ctd.version``, ``ctd.symbol``, ``ctd.trainer``; source: where the version
lives in ctd's registry), and the aliases ``champion`` / ``challenger`` follow the
champion and shadow slots.

ctd's registry stays the source of truth. On every slot-changing event the mirror
reads the symbol's slots as they are then and makes MLflow match, finding a model
version by its ``ctd.version`` tag before creating one: a re-delivered event
(announcements are at-least-once) changes nothing, a stale one moves no alias back,
and a decision MLflow missed is repaired by the symbol's next one. Like the webhook
(``deploy.alerts``), ``notify`` only enqueues and one thread talks to MLflow, so a
slow or unreachable server costs the daemon nothing but the counted failures.
"""

from __future__ import annotations

import contextlib
import importlib
import queue
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from daemon.errors import TrackingUnavailableError
from daemon.logs import get_logger
from deploy.events import EVENT_KINDS, RECORD_ONLY_KINDS, RegistryEvent
from deploy.registry import Registry

_log = get_logger(component="mlflow_mirror")

MIRRORED_KINDS: Final = EVENT_KINDS - RECORD_ONLY_KINDS
"""Every kind that moves a slot; training notes change nothing to mirror."""
VERSION_TAG: Final = "ctd.version"
_STOP: Final = object()
_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def version_source(registry_url: str, symbol: str, version: str) -> str:
    """Where ``version`` lives in ctd's registry, as an MLflow model-version source.

    A remote registry's own URL (``s3://bucket/prefix/SYMBOL/VERSION``). A local one
    is a ``ctd-file://`` URI: MLflow servers refuse a client's local path as a source
    (it would name the server's own files), and the path is the daemon host's anyway.
    """
    if _SCHEME.match(registry_url):
        return f"{registry_url.rstrip('/')}/{symbol}/{version}"
    return "ctd-" + (Path(registry_url).resolve() / symbol / version).as_uri()


class MlflowRegistryMirror:
    """An ``AlertSink`` ("mlflow") mirroring the slots of each symbol an event names into
    the MLflow model registry at ``tracking_uri``.

    Takes the kinds in ``MIRRORED_KINDS`` (others: False). Each event gets ``1 + retries``
    attempts, ``backoff * 2**i`` seconds apart (a close ends the retries), and is counted
    ``sent`` or ``failed``; a full queue or a closed mirror counts ``dropped``. MLflow's
    client retries each request too (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``_TIMEOUT``):
    against an outage an attempt lasts that long, on this thread only. ``prefix`` must be
    usable in an MLflow model name (the settings check it). Raises
    TrackingUnavailableError if mlflow is not installed or rejects ``tracking_uri``.
    """

    name = "mlflow"

    def __init__(
        self,
        registry: Registry,
        tracking_uri: str,
        *,
        prefix: str = "ctd-",
        retries: int = 3,
        backoff: float = 0.5,
        queue_size: int = 1000,
    ) -> None:
        if retries < 0:
            raise ValueError(f"mlflow mirror retries must be >= 0, got {retries!r}")
        if not backoff >= 0:
            raise ValueError(f"mlflow mirror backoff must be >= 0 seconds, got {backoff!r}")
        if queue_size < 1:
            raise ValueError(f"mlflow mirror queue_size must be >= 1, got {queue_size!r}")
        try:
            tracking = importlib.import_module("mlflow.tracking")
        except ImportError:
            raise TrackingUnavailableError(
                "mlflow is not installed (the registry mirror needs it): pip install 'ctd[mlflow]'"
            ) from None
        try:
            # Imported by name (an optional extra): the client is Any, confined to this module.
            self._client: Any = tracking.MlflowClient(tracking_uri=tracking_uri)
        except Exception as exc:  # MlflowException: unknown scheme, store refused, ...
            raise TrackingUnavailableError(f"MLflow cannot use it: {exc}") from None
        self.registry, self.prefix = registry, prefix
        self.retries, self.backoff = retries, backoff
        self._counts = {"sent": 0, "failed": 0, "dropped": 0}
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ctd-mlflow-mirror", daemon=True)
        self._thread.start()

    def notify(self, event: RegistryEvent) -> bool:
        """Queue a mirror of ``event``'s symbol; never blocks. True if queued."""
        if event.event not in MIRRORED_KINDS:
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

    def deliveries(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._counts)

    def close(self, timeout: float = 5.0) -> None:
        """Mirror what is queued within ``timeout`` seconds (one attempt each, no backoff),
        then stop. Returns after ``timeout`` at the latest; idempotent."""
        self._closing.set()
        # A full queue means the worker is busy; it stops by itself once the queue is empty.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            if isinstance(item, RegistryEvent):
                self._count("sent" if self._deliver(item) else "failed")
            if self._closing.is_set() and self._queue.empty():
                return

    def _deliver(self, event: RegistryEvent) -> bool:
        log = _log.bind(symbol=event.symbol, kind=event.event)
        error, tries = "", 0
        for attempt in range(self.retries + 1):
            # A close ends the backoff and the retries: shutdown waits for no outage.
            if attempt and self._closing.wait(self.backoff * 2 ** (attempt - 1)):
                break
            tries += 1
            try:
                champion, challenger = self._sync(event.symbol)
            except Exception as exc:  # MLflow down or refusing, a registry read failed, ...
                error = f"{type(exc).__name__}: {exc}"
                continue
            log.info("mlflow_mirrored", champion=champion, challenger=challenger)
            return True
        log.error("mlflow_mirror_failed", attempts=tries, error=error)
        return False

    def _sync(self, symbol: str) -> tuple[str | None, str | None]:
        """Make the MLflow aliases of ``symbol`` name its current slots; return the MLflow
        version numbers of (champion, challenger)."""
        slots = self.registry.slots(symbol)
        name = self.prefix + symbol
        aliases = self._aliases(name, symbol)
        numbers: list[str | None] = []
        for alias, version in (("champion", slots.champion), ("challenger", slots.shadow)):
            number = None if version is None else self._model_version(name, symbol, version)
            if number is None and alias in aliases:
                self._client.delete_registered_model_alias(name, alias)
            elif number is not None and aliases.get(alias) != number:
                self._client.set_registered_model_alias(name, alias, number)
            numbers.append(number)
        return numbers[0], numbers[1]

    def _aliases(self, name: str, symbol: str) -> Mapping[str, str]:
        """The registered model's aliases (alias -> version number); creates the model."""
        try:
            return dict(self._client.get_registered_model(name).aliases)
        except Exception as exc:
            if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            self._client.create_registered_model(
                name,
                tags={"ctd.symbol": symbol},
                description=f"ctd's champion and challenger of {symbol}, mirrored from its "
                "registry: aliases set here by hand are overwritten at the next decision.",
            )
        except Exception as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":  # another daemon was first
                raise
        return {}

    def _model_version(self, name: str, symbol: str, version: str) -> str:
        """The MLflow version number of ctd ``version``: found by tag, else created."""
        found = self._client.search_model_versions(
            f"name = '{name}' and tags.`{VERSION_TAG}` = '{version}'"
        )
        if found:  # two daemons racing may both have created one: the first stands
            return str(min(int(mv.version) for mv in found))
        trainer = self.registry.metadata(symbol, version).trainer
        created = self._client.create_model_version(
            name,
            version_source(self.registry.url, symbol, version),
            tags={VERSION_TAG: version, "ctd.symbol": symbol, "ctd.trainer": trainer or ""},
            await_creation_for=0,
        )
        return str(created.version)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1


def _error_code(exc: Exception) -> str | None:
    """MLflow's error code of ``exc`` (``MlflowException.error_code``), None for others."""
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, str) else None
