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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeGuard

from prometheus_client import CollectorRegistry, Counter

from daemon.errors import TrackingUnavailableError
from daemon.logs import get_logger
from trainers.metadata import ModelMetadata, SplitMetrics

_log = get_logger(component="tracking")

MAX_PENDING: Final = 100
"""Runs waiting for the tracking thread; more are dropped (and counted) rather than queued."""
_MAX_PARAM_CHARS: Final = 500
_MAX_TAG_CHARS: Final = 5000
_BATCH: Final = {"params": 100, "metrics": 1000, "tags": 100}  # MLflow's log_batch limits
_STOP: Final = object()


@dataclass(frozen=True, slots=True)
class TrackedRun:
    """A finished training job, as tracking needs it (nothing points into staging)."""

    symbol: str
    run_id: str
    outcome: str
    """champion, shadow, rejected or failed (``ctd_training_runs_total`` outcomes)."""
    duration_seconds: float
    metadata: ModelMetadata | None
    """The job's metadata; None when the worker sent none (a failed run)."""
    artifacts: tuple[Path, ...] = ()
    """Files to upload (the registry's model.onnx and metadata.json of a kept version)."""
    version: str | None = None
    error: str | None = None


class Tracker(Protocol):
    """Records one run; raises on any failure (the caller counts it)."""

    def log(self, run: TrackedRun) -> str:
        """Return the tracking system's id of the run."""


Fields = tuple[dict[str, str], dict[str, float], dict[str, str]]
"""(params, metrics, tags) of one MLflow run."""


def run_fields(run: TrackedRun) -> Fields:
    """(params, metrics, tags) of a run.

    Params: config hash and data range, and every candidate's trainer params as
    ``<trainer>.<name>``. Metrics: the chosen model's ``<split>_<metric>``, the
    same prefixed ``<trainer>.`` for every candidate and ``naive.`` for the
    baseline. Tags: outcome, version, reason, and each gate verdict as
    ``gate.<trainer>.<gate>`` = pass | fail.
    """
    meta = run.metadata
    params: dict[str, object] = {"symbol": run.symbol}
    metrics: dict[str, object] = {"duration_seconds": run.duration_seconds}
    tags: dict[str, object] = {
        "ctd.symbol": run.symbol,
        "ctd.run_id": run.run_id,
        "ctd.outcome": run.outcome,
        "ctd.version": run.version,
        "ctd.error": run.error,
    }
    if meta is not None:
        trainers = meta.config.get("trainers")
        params |= {
            "config_sha256": meta.config_sha256,
            "trainers": ",".join(map(str, trainers)) if isinstance(trainers, list) else None,
            "seed": meta.seed,
            "data.n_bars": meta.data.n_bars,
            "data.first_ts": meta.data.first_ts,
            "data.last_ts": meta.data.last_ts,
            "data.sha256": meta.data.sha256,
        }
        metrics |= _split_metrics("", meta.metrics)
        for baseline in meta.baselines or (meta.baseline,):
            metrics |= _split_metrics(f"{baseline.trainer}.", baseline.metrics)
        tags |= {
            "ctd.trainer": meta.trainer,
            "ctd.reason": meta.reason,
            "ctd.yardstick": meta.baseline.trainer,
        }
        for cand in meta.candidates:
            for key, value in cand.params.items():
                params[f"{cand.trainer}.{key}"] = value
            metrics |= _split_metrics(f"{cand.trainer}.", cand.metrics)
            if cand.score is not None:
                metrics[f"{cand.trainer}.score"] = cand.score
            for verdict in cand.gates:
                tags[f"gate.{cand.trainer}.{verdict.gate}"] = "pass" if verdict.passed else "fail"
            if cand.error is not None:
                tags[f"error.{cand.trainer}"] = cand.error.model_dump()
    return as_fields(params, metrics, tags)


def as_fields(
    params: Mapping[str, object], metrics: Mapping[str, object], tags: Mapping[str, object]
) -> Fields:
    """MLflow-ready (params, metrics, tags): text clipped to MLflow's limits, finite metrics
    only, None left out."""
    return (
        {k: str(v)[:_MAX_PARAM_CHARS] for k, v in params.items() if v is not None},
        {k: float(v) for k, v in metrics.items() if _finite(v)},
        {k: str(v)[:_MAX_TAG_CHARS] for k, v in tags.items() if v is not None},
    )


def _split_metrics(prefix: str, by_split: SplitMetrics | None) -> dict[str, object]:
    if by_split is None:
        return {}
    return {
        f"{prefix}{split}_{name}": value
        for split, values in by_split.model_dump().items()
        for name, value in values.items()
    }


def _finite(value: object) -> TypeGuard[float]:
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
        documents: dict[str, Mapping[str, Any]] = {}
        if not run.artifacts and run.metadata is not None:
            documents["metadata.json"] = run.metadata.to_dict()
        return self.log_fields(
            f"{run.symbol}/{run.run_id}",
            run_fields(run),
            artifacts=run.artifacts,
            documents=documents,
            failed=run.outcome == "failed",
        )

    def log_fields(
        self,
        run_name: str,
        fields: Fields,
        *,
        artifacts: Sequence[Path] = (),
        documents: Mapping[str, Mapping[str, Any]] | None = None,
        failed: bool = False,
    ) -> str:
        """One run from ready fields (``as_fields``), files and JSON documents; its MLflow id.

        For runs that are not one training job (``ctd experiment run`` logs a run per
        candidate). Raises whatever MLflow raises; the run is then marked FAILED.
        """
        client, entities = self._client, self._entities
        params, metrics, tags = fields
        created = client.create_run(self._experiment_id_or_create(), run_name=run_name)
        mlflow_id: str = created.info.run_id
        try:
            now = int(time.time() * 1000)
            self._log_batches(
                mlflow_id,
                params=[entities.Param(k, v) for k, v in params.items()],
                metrics=[entities.Metric(k, v, now, 0) for k, v in metrics.items()],
                tags=[entities.RunTag(k, v) for k, v in tags.items()],
            )
            for path in artifacts:
                client.log_artifact(mlflow_id, str(path))
            for name, document in (documents or {}).items():
                client.log_dict(mlflow_id, dict(document), name)
        except BaseException:
            client.set_terminated(mlflow_id, status="FAILED")
            raise
        client.set_terminated(mlflow_id, status="FAILED" if failed else "FINISHED")
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
