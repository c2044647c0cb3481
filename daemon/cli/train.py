"""``ctd train``: train a symbol from an OHLCV CSV file on the daemon's own job path.

Same settings, same ``settings.train_config``, same first-champion significance budget,
and the same outcome recorder as the daemon (``daemon.training.outcomes``): a
model trained from a file is judged, deployed and written into the ledger
exactly like one trained from live bars. A shadow it replaces hands over the
evidence its trial had when the prediction log last saved it. With
``CTD_MLFLOW_TRACKING_URI`` set the run is logged to MLflow as the daemon logs its
runs (``daemon.training.tracking``).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry

from daemon.cli.csvfile import read_ohlcv_csv
from daemon.live.path import SavedTrialPlacer
from daemon.metrics import Metrics
from daemon.registry import open_registry
from daemon.settings import Settings
from daemon.store.predictions import PredictionStore
from daemon.training.jobs import candidate_summary, job_config
from daemon.training.outcomes import RunRecorder
from daemon.training.scheduler import JobOutcome, TrainJob
from daemon.training.tracking import MlflowTracker, TrackingWorker
from daemon.training.tuned import TunedStore
from trainers.config import ENSEMBLE
from trainers.data import validate_symbol
from trainers.errors import InvalidInputError, UnknownTrainerError
from trainers.pipeline import train_symbol
from trainers.table import TRAINERS

ACTOR = "cli"
TRACKING_TIMEOUT_SECONDS = 60.0
"""How long the run may take to reach MLflow after training; a failure is logged, not raised."""


@dataclass(frozen=True, slots=True)
class TrainOutcome:
    """What ``train_csv`` did. ``version``/``slot`` are None when no candidate passed.

    ``metrics``: the chosen model's test metrics. ``candidates``: one summary per
    candidate (trainer, passed, test_accuracy, failed_gates, error).
    """

    symbol: str
    n_bars: int
    passed: bool
    version: str | None
    slot: Literal["champion", "shadow"] | None
    trainer: str | None
    reason: str
    metrics: Mapping[str, float | int | None] | None
    candidates: list[dict[str, object]]
    events: list[str]


def train_csv(
    settings: Settings,
    csv_path: Path,
    symbol: str,
    trainers: Sequence[str] | None = None,
) -> TrainOutcome:
    """Train ``symbol`` on the bars of ``csv_path`` into the registry, as the daemon would.

    Uses the newest ``settings.train_window_bars`` bars and ``settings.train_config``
    (``trainers`` replaces its candidate list). A passing model is added as a new
    version and placed (first one: champion, else shadow; a running daemon's live
    path picks the change up from slots.json); otherwise a ``candidate_rejected``
    line is recorded, and a run that raises records ``training_failed`` before the
    error propagates. Writes only under ``settings.data_dir``.

    Raises InvalidSymbolError (before touching anything), CsvFormatError,
    UnknownTrainerError, and the pipeline's errors (e.g. InsufficientDataError).
    """
    validate_symbol(symbol)
    names = _trainer_names(trainers)
    bars = read_ohlcv_csv(csv_path).tail(settings.train_window_bars)
    registry = open_registry(settings)
    base = settings.train_config
    config = job_config(
        base if names is None else replace(base, trainers=names),
        registry,
        symbol,
        tuned=TunedStore(settings.paths),  # the symbol's `ctd tune` results, as the daemon does
    )
    job = TrainJob(
        symbol,
        uuid.uuid4().hex[:12],
        len(bars),
        f"ctd train --csv {Path(csv_path).name}",
        time.time(),
    )
    metrics = Metrics(CollectorRegistry(), version="cli")
    tracking = _tracking(settings, metrics)  # first: an unusable MLflow leaves nothing open
    log = (
        PredictionStore(settings.paths.predictions) if settings.paths.predictions.exists() else None
    )
    recorder = RunRecorder(
        registry=registry,
        placer=SavedTrialPlacer(registry, log, actor=ACTOR),
        metrics=metrics,
        tracking=tracking,
        actor=ACTOR,
    )
    staging_root = settings.paths.staging
    staging_root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix=f"offline-{symbol}-", dir=staging_root) as tmp:
            try:
                result = train_symbol(symbol, bars, config, Path(tmp))
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                recorder.record(
                    JobOutcome(job, False, Path(tmp), time.monotonic() - started, error=error)
                )
                raise
            outcome = JobOutcome(
                job, True, Path(tmp), time.monotonic() - started, metadata=result.metadata
            )
            recorded = recorder.record(outcome)
    finally:
        if log is not None:
            log.close()
        if tracking is not None:
            tracking.close(TRACKING_TIMEOUT_SECONDS)
    meta = result.metadata
    slot: Literal["champion", "shadow"] | None = None
    if recorded.result in ("champion", "shadow"):
        slot = recorded.result
    return TrainOutcome(
        symbol=symbol,
        n_bars=len(bars),
        passed=meta.passed,
        version=recorded.version,
        slot=slot,
        trainer=result.chosen,
        reason=result.reason,
        metrics=None if meta.metrics is None else meta.metrics.test,
        candidates=candidate_summary(meta),
        events=[e.event for e in recorded.events],
    )


def _tracking(settings: Settings, metrics: Metrics) -> TrackingWorker | None:
    """The daemon's MLflow tracking when ``CTD_MLFLOW_TRACKING_URI`` is set (mlflow imported
    only then); TrackingUnavailableError, before any training, if mlflow cannot be used."""
    if not settings.mlflow_tracking_uri:
        return None
    tracker = MlflowTracker(settings.mlflow_tracking_uri, settings.mlflow_experiment)
    return TrackingWorker(tracker, metrics.registry)


def _trainer_names(trainers: Sequence[str] | None) -> tuple[str, ...] | None:
    if trainers is None:
        return None
    names = tuple(trainers)
    if not names:
        raise InvalidInputError("at least one trainer is required, got an empty list")
    known = {*TRAINERS, ENSEMBLE}
    for name in names:
        if name not in known:
            raise UnknownTrainerError(name, known)
    return names
