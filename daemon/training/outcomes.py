"""What happens when a training run ends: slot, ledger, metrics, logs and tracking.

One implementation for the daemon (on the retrain supervisor thread, worker
outcomes) and for ``ctd train`` (an in-process run from a CSV file). Workers
only stage a model; registering it here keeps one writer of the registry per
process. A rejected candidate and a failed run change no slot but leave a ledger
line, so a symbol's history explains every run. A job the worker dropped because it
would repeat the last finished run (``daemon.training.window``) trained nothing: it is
counted and logged, with no ledger line. Once a run is recorded (passed or rejected),
its bar window is what the symbol's next job is compared with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from daemon.logs import get_logger
from daemon.metrics import Metrics
from daemon.training.jobs import candidate_summary
from daemon.training.scheduler import JobOutcome
from daemon.training.tracking import TrackedRun, TrackingWorker
from daemon.training.window import DataWindow, FinishedWindows, Skip
from deploy.events import EventKind, RegistryEvent, utc_now
from deploy.registry import METADATA_FILE, Registry
from trainers.metadata import ModelMetadata

_log = get_logger(component="outcomes")

RunResult = Literal["champion", "shadow", "rejected", "failed", "skipped"]


class Placer(Protocol):
    """Puts a new passing version in its slot, handing over the running shadow trial
    (``daemon.live.path.LivePath.place``, or ``SavedTrialPlacer`` without a daemon)."""

    def place(self, symbol: str, version: str, *, reason: str) -> list[RegistryEvent]: ...


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """What a finished run became: its result, and the version if one was registered."""

    result: RunResult
    version: str | None = None
    events: tuple[RegistryEvent, ...] = ()


@dataclass(kw_only=True)
class RunRecorder:
    """Records finished (not cancelled) runs.

    ``on_trained(symbol, bar_count)`` is told of every run that produced a
    metadata document (passed or rejected), so the trigger policy counts from it:
    the bars stored when the worker loaded them (at least the count the job was
    requested at). ``on_covered(symbol, bar_count)``, of a job dropped as ``same_data``:
    the last run covered that many bars too (no run happened, so no new training time).
    ``windows`` gets the bar window of each run once it is recorded.
    """

    registry: Registry
    placer: Placer
    metrics: Metrics
    tracking: TrackingWorker | None = None
    on_trained: Callable[[str, int], None] | None = None
    on_covered: Callable[[str, int], None] | None = None
    windows: FinishedWindows | None = None
    actor: str = "daemon"

    def record(self, outcome: JobOutcome) -> RecordedRun:
        job, meta = outcome.job, outcome.metadata
        if outcome.skipped is not None:
            self._record_skip(outcome, outcome.skipped)
            return RecordedRun("skipped")
        if not outcome.ok or meta is None:
            self._record_failure(outcome)
            self._track(outcome, "failed")
            return RecordedRun("failed")
        self._count_monitor_output(job.symbol, meta, job.run_id)
        if meta.data.excluded_rows:  # trained without them; the operator should find the bar
            _log.warning(
                "training_rows_excluded",
                symbol=job.symbol,
                run_id=job.run_id,
                rows=meta.data.excluded_rows,
                first_ts=meta.data.excluded_first_ts,
            )
        if self.on_trained is not None:
            self.on_trained(job.symbol, max(job.bar_count, outcome.stored_bars or 0))
        recorded = self._register(outcome, meta) if meta.passed else self._reject(outcome, meta)
        if self.windows is not None:
            self.windows.record(job.symbol, DataWindow.of_run(meta.data))
        return recorded

    def _register(self, outcome: JobOutcome, meta: ModelMetadata) -> RecordedRun:
        job, m = outcome.job, self.metrics
        version = self.registry.add_version(job.symbol, outcome.staging_dir)
        m.registry_versions.labels(job.symbol).inc()
        events = self.placer.place(job.symbol, version, reason=f"run {job.run_id}: {job.reason}")
        bootstrapped = any(e.event == "champion_bootstrapped" for e in events)
        placed: RunResult = "champion" if bootstrapped else "shadow"
        m.training_runs.labels(job.symbol, placed).inc()
        m.training_duration.labels(placed).observe(outcome.duration_seconds)
        _log.info(
            "model_registered",
            symbol=job.symbol,
            run_id=job.run_id,
            version=version,
            slot=placed,
            trainer=meta.trainer,
            test_accuracy=meta.test_accuracy,
            seconds=round(outcome.duration_seconds, 3),
        )
        self._track(outcome, placed, version)
        return RecordedRun(placed, version, tuple(events))

    def _reject(self, outcome: JobOutcome, meta: ModelMetadata) -> RecordedRun:
        job = outcome.job
        evidence = {
            "run_id": job.run_id,
            "reason": meta.reason,
            "candidates": candidate_summary(meta),
        }
        event = self._audit("candidate_rejected", job.symbol, evidence, reason=meta.reason)
        self.metrics.training_runs.labels(job.symbol, "rejected").inc()
        self.metrics.training_duration.labels("rejected").observe(outcome.duration_seconds)
        _log.info("candidate_rejected", symbol=job.symbol, run_id=job.run_id, reason=meta.reason)
        self._track(outcome, "rejected")
        return RecordedRun("rejected", None, (event,))

    def _record_skip(self, outcome: JobOutcome, skip: Skip) -> None:
        job, window = outcome.job, skip.window
        self.metrics.retrains_skipped.labels(job.symbol, skip.reason).inc()
        if skip.reason == "same_data" and self.on_covered is not None:
            self.on_covered(job.symbol, max(job.bar_count, outcome.stored_bars or 0))
        _log.info(
            "retrain_skipped",
            symbol=job.symbol,
            run_id=job.run_id,
            skip=skip.reason,
            reason=job.reason,
            new_bars=skip.new_bars,
            n_bars=window.n_bars,
            first_ts=window.first_ts,
            last_ts=window.last_ts,
        )

    def _record_failure(self, outcome: JobOutcome) -> None:
        job = outcome.job
        self.metrics.training_runs.labels(job.symbol, "failed").inc()
        self.metrics.training_duration.labels("failed").observe(outcome.duration_seconds)
        evidence = {"run_id": job.run_id, "error": outcome.error, "bar_count": job.bar_count}
        self._audit("training_failed", job.symbol, evidence, reason=outcome.error or "")
        _log.error("training_failed", symbol=job.symbol, run_id=job.run_id, error=outcome.error)

    def _audit(
        self, kind: EventKind, symbol: str, evidence: Mapping[str, object], *, reason: str
    ) -> RegistryEvent:
        """A ledger line that changes no slot (failed runs, rejected candidates)."""
        return self.registry.record(
            RegistryEvent(kind, symbol, None, None, evidence, utc_now(), self.actor, reason)
        )

    def _count_monitor_output(self, symbol: str, meta: ModelMetadata, run_id: str) -> None:
        """Every monitor warning and gate verdict of a run: a metric and a log event."""
        for cand in meta.candidates:
            self.metrics.init_trainer(symbol, cand.trainer)
            for warning in cand.warnings:
                self.metrics.training_warnings.labels(symbol, cand.trainer, warning.kind).inc()
                _log.warning(
                    "training_warning",
                    symbol=symbol,
                    run_id=run_id,
                    trainer=cand.trainer,
                    kind=warning.kind,
                    step=warning.step,
                    message=warning.message,
                )
            for verdict in cand.gates:
                for outcome in ("pass", "fail"):  # both at 0: a fail share reads 0, not nothing
                    self.metrics.gate_verdicts.labels(cand.trainer, verdict.gate, outcome)
                outcome = "pass" if verdict.passed else "fail"
                self.metrics.gate_verdicts.labels(cand.trainer, verdict.gate, outcome).inc()

    def _track(self, outcome: JobOutcome, result: str, version: str | None = None) -> None:
        """Hand the run to experiment tracking; artifacts from the registry (staging goes away)."""
        if self.tracking is None:
            return
        artifacts: tuple[Path, ...] = ()
        if version is not None:
            model = self.registry.model_path(outcome.job.symbol, version)
            artifacts = (model, model.with_name(METADATA_FILE))
        self.tracking.submit(
            TrackedRun(
                symbol=outcome.job.symbol,
                run_id=outcome.job.run_id,
                outcome=result,
                duration_seconds=outcome.duration_seconds,
                metadata=outcome.metadata,
                artifacts=artifacts,
                version=version,
                error=outcome.error,
            )
        )
