"""Experiment tracking: one MLflow run per finished training job (optional extra ``mlflow``).

The daemon logs runs from a thread of its own, after the job: the worker stays
lean, and a slow or unreachable tracking server never delays training, the
registry or shutdown beyond its budget. A tracking failure is logged and
counted (``ctd_tracking_errors_total``), never a failed job. mlflow is
imported only when ``CTD_MLFLOW_TRACKING_URI`` is set.
"""

from __future__ import annotations

import importlib
import math
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter

from daemon.logs import get_logger

_log = get_logger(component="tracking")

MAX_PENDING: Final = 100
"""Runs waiting for the tracking thread; more are dropped (and counted) rather than queued."""
_MAX_PARAM_CHARS: Final = 500
_MAX_TAG_CHARS: Final = 5000
_BATCH: Final = {"params": 100, "metrics": 1000, "tags": 100}  # MLflow's log_batch limits
_STOP: Final = object()


class TrackingUnavailableError(RuntimeError):
    """``CTD_MLFLOW_TRACKING_URI`` is set but mlflow cannot be imported or set up."""

    def __init__(self, cause: str) -> None:
        self.cause = cause
        super().__init__(f"CTD_MLFLOW_TRACKING_URI is set but {cause}")


@dataclass(frozen=True, slots=True)
class TrackedRun:
    """A finished training job, as tracking needs it (nothing points into staging)."""

    symbol: str
    run_id: str
    outcome: str
    """champion, shadow, rejected or failed (``ctd_training_runs_total`` outcomes)."""
    duration_seconds: float
    metadata: Mapping[str, Any]
    """The job's metadata.json document; empty when the worker sent none."""
    artifacts: tuple[Path, ...] = ()
    """Files to upload (the registry's model.onnx and metadata.json of a kept version)."""
    version: str | None = None
    error: str | None = None


class Tracker(Protocol):
    """Records one run; raises on any failure (the caller counts it)."""

    def log(self, run: TrackedRun) -> str:
        """Return the tracking system's id of the run."""


def run_fields(run: TrackedRun) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """(params, metrics, tags) of a run.

    Params: config hash and data range, and every candidate's trainer params as
    ``<trainer>.<name>``. Metrics: the chosen model's ``<split>_<metric>``, the
    same prefixed ``<trainer>.`` for every candidate and ``naive.`` for the
    baseline. Tags: outcome, version, reason, and each gate verdict as
    ``gate.<trainer>.<gate>`` = pass | fail.
    """
    meta = run.metadata
    config = meta.get("config") or {}
    data = meta.get("data") or {}
    params: dict[str, Any] = {
        "symbol": run.symbol,
        "config_sha256": meta.get("config_sha256"),
        "trainers": ",".join(config["trainers"]) if config.get("trainers") else None,
        "seed": meta.get("seed"),
        "data.n_bars": data.get("n_bars"),
        "data.first_ts": data.get("first_ts"),
        "data.last_ts": data.get("last_ts"),
        "data.sha256": data.get("sha256"),
    }
    metrics = _split_metrics("", meta.get("metrics"))
    metrics |= _split_metrics("naive.", (meta.get("baseline") or {}).get("metrics"))
    metrics["duration_seconds"] = run.duration_seconds
    tags: dict[str, Any] = {
        "ctd.symbol": run.symbol,
        "ctd.run_id": run.run_id,
        "ctd.outcome": run.outcome,
        "ctd.version": run.version,
        "ctd.trainer": meta.get("trainer"),
        "ctd.reason": meta.get("reason"),
        "ctd.error": run.error,
    }
    for cand in meta.get("candidates") or []:
        name = str(cand.get("trainer"))
        for key, value in (cand.get("params") or {}).items():
            params[f"{name}.{key}"] = value
        metrics |= _split_metrics(f"{name}.", cand.get("metrics"))
        if cand.get("score") is not None:
            metrics[f"{name}.score"] = cand["score"]
        for verdict in cand.get("gates") or []:
            tags[f"gate.{name}.{verdict.get('gate')}"] = "pass" if verdict.get("passed") else "fail"
        if cand.get("error"):
            tags[f"error.{name}"] = cand["error"]
    return (
        {k: str(v)[:_MAX_PARAM_CHARS] for k, v in params.items() if v is not None},
        {k: float(v) for k, v in metrics.items() if _finite(v)},
        {k: str(v)[:_MAX_TAG_CHARS] for k, v in tags.items() if v is not None},
    )


def _split_metrics(prefix: str, by_split: Any) -> dict[str, Any]:
    if not isinstance(by_split, Mapping):
        return {}
    return {
        f"{prefix}{split}_{name}": value
        for split, values in by_split.items()
        if isinstance(values, Mapping)
        for name, value in values.items()
    }


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class MlflowTracker:
    """Logs runs to MLflow through its client API (no global state, one thread)."""

    def __init__(self, uri: str, experiment: str) -> None:
        """Raises TrackingUnavailableError if mlflow is missing or rejects ``uri``."""
        try:
            mlflow = importlib.import_module("mlflow")
            self._entities = importlib.import_module("mlflow.entities")
        except ImportError:
            raise TrackingUnavailableError(
                "mlflow is not installed: pip install 'ctd[mlflow]', or unset it"
            ) from None
        try:
            self._client = mlflow.MlflowClient(tracking_uri=uri)
        except Exception as exc:  # MlflowException: unknown scheme, store refused, ...
            raise TrackingUnavailableError(f"MLflow cannot use it: {exc}") from None
        self._experiment = experiment
        self._experiment_id: str | None = None

    def log(self, run: TrackedRun) -> str:
        client, entities = self._client, self._entities
        params, metrics, tags = run_fields(run)
        created = client.create_run(
            self._experiment_id_or_create(), run_name=f"{run.symbol}/{run.run_id}"
        )
        mlflow_id: str = created.info.run_id
        try:
            now = int(time.time() * 1000)
            self._log_batches(
                mlflow_id,
                params=[entities.Param(k, v) for k, v in params.items()],
                metrics=[entities.Metric(k, v, now, 0) for k, v in metrics.items()],
                tags=[entities.RunTag(k, v) for k, v in tags.items()],
            )
            for path in run.artifacts:
                client.log_artifact(mlflow_id, str(path))
            if not run.artifacts and run.metadata:
                client.log_dict(mlflow_id, dict(run.metadata), "metadata.json")
        except BaseException:
            client.set_terminated(mlflow_id, status="FAILED")
            raise
        status = "FAILED" if run.outcome == "failed" else "FINISHED"
        client.set_terminated(mlflow_id, status=status)
        return mlflow_id

    def _experiment_id_or_create(self) -> str:
        if self._experiment_id is None:
            found = self._client.get_experiment_by_name(self._experiment)
            if found is not None:
                self._experiment_id = str(found.experiment_id)
            else:
                self._experiment_id = str(self._client.create_experiment(self._experiment))
        return self._experiment_id

    def _log_batches(self, run_id: str, **entries: list[Any]) -> None:
        for kind, items in entries.items():
            size = _BATCH[kind]
            for i in range(0, len(items), size):
                self._client.log_batch(run_id, **{kind: items[i : i + size]})


class TrackingWorker:
    """A bounded queue and one thread in front of a Tracker; never raises into its caller."""

    def __init__(
        self, tracker: Tracker, registry: CollectorRegistry, *, max_pending: int = MAX_PENDING
    ) -> None:
        self._tracker = tracker
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self.errors = Counter(
            "ctd_tracking_errors_total",
            "Training runs that could not be logged to experiment tracking, by stage.",
            ["stage"],
            registry=registry,
        )
        for stage in ("log", "dropped"):
            self.errors.labels(stage)
        self._thread = threading.Thread(target=self._run, name="ctd-tracking", daemon=True)
        self._thread.start()

    def submit(self, run: TrackedRun) -> None:
        """Queue ``run``; when the queue is full it is dropped, logged and counted."""
        try:
            self._queue.put_nowait(run)
        except queue.Full:
            self.errors.labels("dropped").inc()
            _log.error("tracking_dropped", symbol=run.symbol, run_id=run.run_id)

    def close(self, timeout: float) -> None:
        """Log what is queued for at most ``timeout`` seconds, then stop; the rest is lost."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(_STOP, timeout=max(deadline - time.monotonic(), 0.001))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            _log.warning("tracking_abandoned", pending=self._queue.qsize())

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            run: TrackedRun = item
            log = _log.bind(symbol=run.symbol, run_id=run.run_id)
            try:
                mlflow_id = self._tracker.log(run)
            except Exception as exc:
                self.errors.labels("log").inc()
                log.error("tracking_failed", error=f"{type(exc).__name__}: {exc}")
            else:
                log.info("run_tracked", mlflow_run_id=mlflow_id, outcome=run.outcome)
