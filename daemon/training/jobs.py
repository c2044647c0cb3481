"""What a training job of a symbol is given, shared by the daemon and `ctd train`.

One place derives the TrainConfig from settings and applies the first-champion
significance budget, so offline training follows the daemon's rules exactly; the
daemon's jobs also carry the window of the symbol's last finished run, so that a job
that would only repeat it is dropped (``daemon.training.window``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from daemon.settings import Settings
from daemon.training.scheduler import TrainJob
from daemon.training.tuned import TunedStore
from daemon.training.window import FinishedWindows
from daemon.training.worker import JobSpec
from deploy.registry import Registry
from monitors.gates import bootstrap_alpha
from trainers.config import TrainConfig
from trainers.metadata import ModelMetadata


def job_spec(
    settings: Settings,
    base: TrainConfig,
    registry: Registry,
    job: TrainJob,
    staging: Path,
    *,
    windows: FinishedWindows | None = None,
) -> JobSpec:
    """What a worker process is told for ``job``: where the bars are, the window, the config,
    and the window of the symbol's last finished run in ``windows`` (none for a forced job)."""
    return JobSpec(
        symbol=job.symbol,
        run_id=job.run_id,
        store_path=settings.paths.bars,
        window_bars=settings.train_window_bars,
        staging_dir=staging,
        config=job_config(base, registry, job.symbol, tuned=TunedStore(settings.paths)),
        log_level=settings.log_level,
        previous=None if windows is None or job.force else windows.get(job.symbol),
        min_new_bars=settings.retrain_min_new_bars,
    )


def job_config(
    base: TrainConfig, registry: Registry, symbol: str, *, tuned: TunedStore | None = None
) -> TrainConfig:
    """``base`` for this symbol's next job.

    With ``tuned``, the symbol's tuned hyperparameters are merged in and recorded
    (``daemon.training.tuned``; the backtest passes none: params tuned on the whole
    history would look ahead in a replay).

    Until a symbol has a champion, attempt k (1 + the candidates rejected so
    far) is gated at alpha/(k(k+1)) (monitors.gates.bootstrap_alpha), so
    retrying a no-signal symbol cannot eventually sneak a champion in.
    """
    if tuned is not None:
        base = tuned.apply(base, symbol)
    if registry.slots(symbol).champion is not None:
        return base
    rejected = sum(1 for e in registry.history(symbol) if e.event == "candidate_rejected")
    alpha = bootstrap_alpha(base.gates.baseline_alpha, rejected + 1)
    return replace(base, gates=replace(base.gates, baseline_alpha=alpha))


def candidate_summary(meta: ModelMetadata) -> list[dict[str, object]]:
    """One small JSON object per candidate of a run, for the ledger's evidence."""
    return [
        {
            "trainer": c.trainer,
            "passed": c.passed,
            "test_accuracy": c.test_accuracy,
            "failed_gates": [g.reason for g in c.failed_gates],
            "failed_gate_names": [g.gate for g in c.failed_gates],
            "error": None if c.error is None else c.error.model_dump(),
        }
        for c in meta.candidates
    ]
