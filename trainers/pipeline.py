"""One symbol's training job: bars in, a gated ONNX model and its metadata out.

Runs inside a worker process and knows nothing of Kafka or the registry: the
caller hands it bars and an empty output directory and reads back
``metadata.json`` (always written) and ``model.onnx`` (only when a candidate
passed every gate), beside the evidence ``trainers.evidence`` describes: the
evaluation CSV ``predictions.csv`` (always) and the losers' ``candidates/*.onnx``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Final

from monitors.base import TrainingMonitor
from monitors.drift import FeatureReference
from monitors.training import MonitorConfig, build_monitor
from trainers.baselines import MAJORITY, PERSISTENCE, choose_yardstick, fit_yardsticks
from trainers.candidate import MODEL_FILE, CandidateRun, run_candidate
from trainers.config import ENSEMBLE, TrainConfig
from trainers.data import Bars, validate_symbol
from trainers.ensemble import run_ensemble
from trainers.evidence import clear_candidates, evidence_names, keep_candidate, write_predictions
from trainers.features import FEATURE_SPEC, TrainingMatrix, training_matrix
from trainers.metadata import DataRange, ModelMetadata, SplitRecord
from trainers.repro import bars_sha256, config_sha256, package_versions
from trainers.selection import compare_candidates
from trainers.targets import RETURN

METADATA_FILE: Final = "metadata.json"
RETURN_BASELINE_LOSS: Final = 1.0
"""A return trainer's loss for predicting zero: its MSE is over the training labels' variance."""


@dataclass(frozen=True, slots=True)
class TrainResult:
    """Outcome of ``train_symbol``; ``metadata`` is exactly what ``metadata.json`` holds."""

    symbol: str
    passed: bool
    chosen: str | None
    reason: str
    metadata: ModelMetadata
    model_path: Path | None


def train_symbol(
    symbol: str,
    bars: Bars,
    config: TrainConfig,
    out_dir: Path,
    *,
    monitor_factory: Callable[[], TrainingMonitor] | None = None,
) -> TrainResult:
    """Train every configured candidate on ``bars``, gate them, keep the best one.

    Steps: ``training_matrix(bars, target=config.target, horizon=config.horizon_bars)``;
    ``chronological_split`` of its rows with embargo ``FEATURE_SPEC.lookback +
    horizon_bars``; the naive baselines (majority class and persistence; for a return
    target zero, mean and last return, ``trainers.baselines``), the one better on
    validation being the yardstick every candidate must beat; each candidate
    (``trainers.candidate``) with a fresh monitor from ``monitor_factory``
    (default: ``config.monitor``'s rules); the passing candidate with the best
    ``candidate_score`` becomes ``out_dir/model.onnx``.

    When persistence is the yardstick it is also a candidate itself, judged
    against the majority class on the test split alone (validation chose it, so
    rows that overlap validation would flatter it): a series whose best
    predictor is "same direction as the last bar" can still be served that rule.

    Recorded metrics are those of the exported ONNX model on the same test rows
    for every candidate, so they can be reproduced exactly::

        m = training_matrix(bars)          # the same bars: data.n_bars / first_ts / last_ts
        start, stop = metadata.split.test
        scorer = OnnxScorer(out_dir / "model.onnx")
        x = sequence_windows(m.X.astype(np.float32), slice(start, stop), scorer.window)
        # (for window 1, x = m.X[start:stop] instead)
        classification_metrics(m.y[start:stop], scorer.predict_proba(x), m.fwd_returns[start:stop])
        # a return target: training_matrix(bars, target="return", horizon=h) and
        # regression_metrics(m.y[start:stop], scorer.predict(x))

    A row whose features are not finite in float32 (a bar the features cannot
    represent in its window) is left out and reported in ``metadata.data``
    (``excluded_rows``, ``excluded_first_ts``); the run goes on without it.

    Raises ``InvalidSymbolError`` for a bad symbol, ``InsufficientDataError``
    when the bars are too few for features and a split, and
    ``InvalidInputError`` for invalid bars or labels the baseline cannot fit
    (e.g. a price that never moves); nothing is written then.
    """
    started = time.perf_counter()
    validate_symbol(symbol)
    factory = monitor_factory or partial(build_monitor, _monitor_config(config))
    timings: dict[str, float] = {}

    t = time.perf_counter()
    matrix = training_matrix(bars, target=config.target, horizon=config.horizon_bars)
    timings["features_seconds"] = time.perf_counter() - t

    data = matrix.dataset(val_fraction=config.val_fraction, test_fraction=config.test_fraction)
    split = data.split
    out_dir.mkdir(parents=True, exist_ok=True)
    # A stale model from an earlier run in this directory must not outlive a failed run.
    (out_dir / MODEL_FILE).unlink(missing_ok=True)

    t = time.perf_counter()
    baselines = fit_yardsticks(data, matrix.fwd_returns, config, past_returns=matrix.past_returns)
    yardstick = choose_yardstick(baselines)
    # Direction only: persistence as a candidate is judged against the majority class.
    majority = next((b for b in baselines if b.name == MAJORITY), yardstick)
    timings["baseline_seconds"] = time.perf_counter() - t

    names = [n for n in config.trainers if n != ENSEMBLE]  # the ensemble runs after them
    if yardstick.name == PERSISTENCE and PERSISTENCE not in names:
        names.append(PERSISTENCE)
    t = time.perf_counter()
    runs = [
        run_candidate(
            index,
            name,
            config=config,
            data=data,
            fwd_returns=matrix.fwd_returns,
            yardstick=majority.test_split_only(data) if name == yardstick.name else yardstick,
            out_dir=out_dir,
            monitor_factory=factory,
        )
        for index, name in enumerate(names)
    ]
    timings["candidates_seconds"] = time.perf_counter() - t
    if ENSEMBLE in config.trainers:  # the passing candidates combined, gated like one
        t = time.perf_counter()
        ensemble = run_ensemble(
            len(runs),
            runs,
            config=config,
            data=data,
            fwd_returns=matrix.fwd_returns,
            yardstick=yardstick,
            out_dir=out_dir,
        )
        runs.append(ensemble)
        timings["ensemble_seconds"] = time.perf_counter() - t

    best = _choose(runs)
    model_path = _keep_only(runs, best, out_dir)
    write_predictions(out_dir, runs, matrix, split.test)  # the evaluation CSV, trainers.evidence
    chosen = best.record if best is not None else None
    timings["total_seconds"] = time.perf_counter() - started
    config_dict = config.to_dict()
    reference = FeatureReference.from_matrix(matrix.X[split.train], FEATURE_SPEC.names)
    metadata = ModelMetadata(
        symbol=symbol,
        trainer=chosen.trainer if chosen else None,
        params=chosen.params if chosen else None,
        seed=config.seed,
        data=_data_range(bars, matrix),
        target=config.target,
        feature_spec=matrix.feature_spec,
        # The training distribution live drift is measured against (monitors.drift).
        feature_reference=reference,
        split=SplitRecord(
            train=(split.train.start, split.train.stop),
            val=(split.val.start, split.val.stop),
            test=(split.test.start, split.test.stop),
            embargo=split.embargo,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
        ),
        metrics=chosen.metrics if chosen else None,
        walk_forward=chosen.walk_forward if chosen else None,
        baseline=yardstick.record(),
        baselines=tuple(b.record() for b in baselines),
        candidates=tuple(r.record for r in runs),
        gates=chosen.gates if chosen else (),
        warnings=chosen.warnings if chosen else (),
        onnx=best.onnx if best is not None else None,
        gate_config=config.gates,
        config=config_dict,
        config_sha256=config_sha256(config_dict),
        timings=timings,
        code_version=package_versions(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        passed=chosen is not None,
        reason=_reason(runs, best),
        # Paired tests between the scored candidates, and why this one (trainers.selection).
        comparison=compare_candidates(
            runs,
            data.labels,
            split.test.start,
            best,
            target=config.target,
            horizon=config.horizon_bars,
        ),
    )
    (out_dir / METADATA_FILE).write_bytes(metadata.to_json())
    return TrainResult(
        symbol=symbol,
        passed=chosen is not None,
        chosen=chosen.trainer if chosen else None,
        reason=metadata.reason,
        metadata=metadata,
        model_path=model_path,
    )


def _monitor_config(config: TrainConfig) -> MonitorConfig:
    """The run's monitor rules; for a return target the divergence rule's "uninformed
    baseline" is 1.0, the loss of predicting zero (return trainers report MSE over the
    training labels' variance), where the default ln 2 is a log loss."""
    monitor = config.monitor
    if config.target == RETURN and monitor.divergence_baseline_loss == math.log(2.0):
        return replace(monitor, divergence_baseline_loss=RETURN_BASELINE_LOSS)
    return monitor


def _choose(runs: list[CandidateRun]) -> CandidateRun | None:
    """The passing candidate with the best score (the first of equals)."""
    passing = [r for r in runs if r.record.passed]
    return max(passing, key=lambda r: r.record.score or 0.0, default=None)


def _keep_only(runs: list[CandidateRun], best: CandidateRun | None, out_dir: Path) -> Path | None:
    """Move the chosen model to ``out_dir/model.onnx`` and every other exported candidate's to
    ``out_dir/candidates/<name>.onnx`` (``trainers.evidence``): the losers stay comparable."""
    kept = None
    clear_candidates(out_dir)
    for run, name in zip(runs, evidence_names([r.record.trainer for r in runs]), strict=True):
        if run.path is None:
            continue
        if run is best:
            kept = out_dir / MODEL_FILE
            run.path.replace(kept)
        else:
            keep_candidate(run.path, out_dir, name)
    return kept


def _reason(runs: list[CandidateRun], best: CandidateRun | None) -> str:
    if best is not None:
        return f"chose {best.record.trainer} (score {best.record.score:.3f}): every gate passed"
    if not runs:
        return "no candidate trainers configured"
    parts = []
    for run in runs:
        c = run.record
        if c.error is not None:
            parts.append(f"{c.trainer}: {c.error.stage} failed: {c.error.type}: {c.error.message}")
        else:
            parts.append(f"{c.trainer}: " + "; ".join(g.reason for g in c.failed_gates))
    return "no candidate passed the gates: " + " | ".join(parts)


def _data_range(bars: Bars, matrix: TrainingMatrix) -> DataRange:
    return DataRange(
        n_bars=len(bars),
        first_ts=int(bars.ts[0]) if len(bars) else None,
        last_ts=int(bars.ts[-1]) if len(bars) else None,
        n_rows=len(matrix),
        sha256=bars_sha256(bars),
        excluded_rows=len(matrix.excluded_ts),
        excluded_first_ts=int(matrix.excluded_ts[0]) if len(matrix.excluded_ts) else None,
    )
