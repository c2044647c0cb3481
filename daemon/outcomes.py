"""What happens when a training run ends: slot, ledger, metrics, logs and tracking.

Runs on the retrain supervisor thread. Worker processes only stage a model
and reply; registering it here keeps the daemon the registry's single writer.
A rejected candidate and a failed run change no slot but leave a ledger line,
so a symbol's history explains every run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.jobs import candidate_summary
from daemon.logs import get_logger
from daemon.metrics import Metrics
from daemon.promotions import LivePath
from daemon.retrain import JobOutcome
from daemon.store import BarStore
from daemon.tracking import TrackedRun, TrackingWorker
from deploy.events import EventKind, RegistryEvent, utc_now
from deploy.registry import METADATA_FILE, Registry

_log = get_logger(component="daemon")


class RunRecorder:
    """Records finished (not cancelled) runs.

    ``trained`` is the daemon's per-symbol count of bars trained on, which its
    trigger policy reads; it is updated here and never moves back.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        store: BarStore,
        live: LivePath,
        metrics: Metrics,
        tracking: TrackingWorker | None,
        trained: dict[str, int],
    ) -> None:
        self.registry = registry
        self.store = store
        self.live = live
        self.metrics = metrics
        self.tracking = tracking
        self.trained = trained

    def record(self, outcome: JobOutcome) -> None:
        job = outcome.job
        if not outcome.ok:
            self._record_failure(outcome)
            self._track(outcome, "failed")
            return
        meta: Mapping[str, Any] = outcome.reply.get("metadata") or {}
        self._count_monitor_output(job.symbol, meta, job.run_id)
        # Jobs can finish out of order (a monitor-triggered one with an older count
        # after a newer one): the trained count never moves back.
        trained = max(job.bar_count, self.trained.get(job.symbol, 0))
        self.store.mark_trained(job.symbol, trained, time.time())
        self.trained[job.symbol] = trained
        if outcome.reply.get("passed"):
            self._register(outcome, meta)
        else:
            self._reject(outcome, meta)

    def _register(self, outcome: JobOutcome, meta: Mapping[str, Any]) -> None:
        job, m = outcome.job, self.metrics
        version = self.registry.add_version(job.symbol, outcome.staging_dir)
        m.registry_versions.labels(job.symbol).inc()
        events = self.live.place(job.symbol, version, reason=f"run {job.run_id}")
        bootstrapped = any(e.event == "champion_bootstrapped" for e in events)
        placed = "champion" if bootstrapped else "shadow"
        m.training_runs.labels(job.symbol, placed).inc()
        m.training_duration.labels(placed).observe(outcome.duration_seconds)
        _log.info(
            "model_registered",
            symbol=job.symbol,
            run_id=job.run_id,
            version=version,
            slot=placed,
            trainer=outcome.reply.get("chosen"),
            test_accuracy=(meta.get("metrics") or {}).get("test", {}).get("accuracy"),
            seconds=round(outcome.duration_seconds, 3),
        )
        self._track(outcome, placed, version)

    def _reject(self, outcome: JobOutcome, meta: Mapping[str, Any]) -> None:
        job = outcome.job
        reason = outcome.reply.get("reason")
        self._audit(
            "candidate_rejected",
            job.symbol,
            {"run_id": job.run_id, "reason": reason, "candidates": candidate_summary(meta)},
            reason=str(reason or ""),
        )
        self.metrics.training_runs.labels(job.symbol, "rejected").inc()
        self.metrics.training_duration.labels("rejected").observe(outcome.duration_seconds)
        _log.info("candidate_rejected", symbol=job.symbol, run_id=job.run_id, reason=reason)
        self._track(outcome, "rejected")

    def _record_failure(self, outcome: JobOutcome) -> None:
        job = outcome.job
        self.metrics.training_runs.labels(job.symbol, "failed").inc()
        self.metrics.training_duration.labels("failed").observe(outcome.duration_seconds)
        self._audit(
            "training_failed",
            job.symbol,
            {"run_id": job.run_id, "error": outcome.error, "bar_count": job.bar_count},
            reason=outcome.error or "",
        )
        _log.error("training_failed", symbol=job.symbol, run_id=job.run_id, error=outcome.error)

    def _audit(
        self, kind: EventKind, symbol: str, evidence: dict[str, Any], *, reason: str
    ) -> None:
        """A history line that changes no slot (failed runs, rejected candidates)."""
        self.registry.record(
            RegistryEvent(kind, symbol, None, None, evidence, utc_now(), reason=reason)
        )

    def _count_monitor_output(self, symbol: str, meta: Mapping[str, Any], run_id: str) -> None:
        """Every monitor warning and gate verdict of a run: a metric and a log event."""
        for cand in meta.get("candidates") or []:
            trainer = str(cand.get("trainer"))
            for warning in cand.get("warnings") or []:
                kind = str(warning.get("kind"))
                self.metrics.training_warnings.labels(symbol, trainer, kind).inc()
                _log.warning(
                    "training_warning",
                    symbol=symbol,
                    run_id=run_id,
                    trainer=trainer,
                    kind=kind,
                    step=warning.get("step"),
                    message=warning.get("message"),
                )
            for verdict in cand.get("gates") or []:
                outcome = "pass" if verdict.get("passed") else "fail"
                self.metrics.gate_verdicts.labels(trainer, str(verdict.get("gate")), outcome).inc()

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
                metadata=outcome.reply.get("metadata") or {},
                artifacts=artifacts,
                version=version,
                error=outcome.error,
            )
        )
