"""One candidate of a training run: fit, export to ONNX, check parity, score, walk forward, gate.

Any exception is recorded in the candidate's record (stage, type, message): one
broken candidate never sinks the others. Metrics are those of the exported
ONNX model, the artifact that will be served, so they reproduce from
model.onnx alone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from monitors.base import MonitorWarning, TrainingMonitor
from monitors.gates import candidate_score, evaluate_gates
from monitors.return_gates import evaluate_return_gates, return_candidate_score
from trainers.base import FittedModel
from trainers.baselines import Yardstick
from trainers.config import TrainConfig, json_safe
from trainers.dataset import Dataset
from trainers.errors import InvalidInputError
from trainers.evaluation import paired_counts, paired_losses, split_metrics
from trainers.metadata import (
    BaselineComparison,
    CandidateError,
    CandidateRecord,
    OnnxInfo,
    SplitMetrics,
    WalkForwardRecord,
)
from trainers.onnx_io import OnnxScorer, max_abs_diff
from trainers.repro import seed_everything
from trainers.table import make_trainer
from trainers.targets import RETURN
from trainers.walk_forward import walk_forward

MODEL_FILE = "model.onnx"


@dataclass(frozen=True, slots=True)
class Predictions:
    """A candidate's out-of-sample predictions (P(up), or returns for a return target):
    validation rows, and every test block it predicted.

    ``blocks`` maps a block's first row to its rows' predictions: the test split
    (the ONNX model) and the earlier walk-forward test blocks (refitted models).
    Ensembles are fit on ``val``; paired comparisons use the blocks.
    """

    val: npt.NDArray[np.float64]
    blocks: Mapping[int, npt.NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class CandidateRun:
    """A finished candidate: its record, its ONNX file and contract when it got through the
    gates (passing, or failed by a gate: kept as evidence; ``record.passed`` says which), and
    its predictions when it got as far as scoring (also when a gate failed it). A candidate
    an error stopped has no file: what it exported is not trustworthy."""

    record: CandidateRecord
    path: Path | None
    onnx: OnnxInfo | None
    predictions: Predictions | None = None


def run_candidate(
    index: int,
    name: str,
    *,
    config: TrainConfig,
    data: Dataset,
    fwd_returns: npt.NDArray[np.float64],
    yardstick: Yardstick,
    out_dir: Path,
    monitor_factory: Callable[[], TrainingMonitor],
) -> CandidateRun:
    """Fit, export, score, walk forward and gate one candidate; any exception is recorded.

    The baseline gates compare it with ``yardstick`` on every out-of-sample block
    both predicted: the test split (the ONNX model) and the earlier walk-forward
    test blocks (the refitted native models).
    """
    params = dict(config.trainer_params.get(name, {}))
    if config.augment:
        params["augment"] = True
    path = out_dir / f".candidate-{index}.onnx"  # index, not name: names never touch paths
    fields: dict[str, object] = {"trainer": name, "params": json_safe(params)}
    timings: dict[str, float] = {}
    stage = "init"
    monitor = monitor_factory()
    onnx: OnnxInfo | None = None
    predictions: Predictions | None = None
    try:
        trainer = make_trainer(name, **params)
        stage = "fit"
        # Global generators reset per candidate: its result never depends on the order.
        seed_everything(config.seed)
        with _timed(timings, "fit_seconds"):
            model: FittedModel = trainer.fit(data, monitor, config.seed)
        fields.update(params=json_safe(dict(model.params)), n_params=model.n_params)
        fields["window"] = model.window
        test_x = data.inputs("test", model.window)

        stage = "export"
        with _timed(timings, "export_seconds"):
            model.export_onnx(path)
            scorer = OnnxScorer(path)
        if scorer.target != data.target:
            raise InvalidInputError(
                f"{name}'s exported model predicts {scorer.target}, the run's target is "
                f"{data.target}"
            )

        stage = "parity"
        with _timed(timings, "parity_seconds"):
            parity = max_abs_diff(model, scorer, test_x)
        fields["parity_max_abs_diff"] = parity

        stage = "metrics"
        # scorer.predict: P(up) or the return, whichever the data's target asks for.
        metrics = split_metrics(scorer.predict, data, fwd_returns, window=scorer.window)
        fields["metrics"] = metrics
        blocks = {data.split.test.start: scorer.predict(test_x)}

        stage = "walk_forward"
        with _timed(timings, "walk_forward_seconds"):
            wf = _walk_forward(
                name,
                params,
                config,
                data,
                fwd_returns,
                model=model,
                factory=monitor_factory,
                predictions=blocks,
            )
        fields["walk_forward"] = wf
        predictions = Predictions(scorer.predict(data.inputs("val", scorer.window)), blocks)

        stage = "gates"
        onnx = judge(
            fields,
            scorer=scorer,
            parity=parity,
            metrics=metrics,
            blocks=blocks,
            walk_forward=wf,
            warning_kinds=[w.kind for w in monitor.warnings],
            config=config,
            data=data,
            yardstick=yardstick,
        )
    except Exception as exc:  # one broken candidate must not sink the others
        fields["error"] = CandidateError(stage=stage, type=type(exc).__name__, message=str(exc))
    return finish(
        fields,
        timings=timings,
        warnings=monitor.warnings,
        path=path,
        onnx=onnx,
        predictions=predictions,
    )


def judge(
    fields: dict[str, object],
    *,
    scorer: OnnxScorer,
    parity: float,
    metrics: SplitMetrics,
    blocks: Mapping[int, npt.NDArray[np.float64]],
    walk_forward: WalkForwardRecord | None,
    warning_kinds: Sequence[str],
    config: TrainConfig,
    data: Dataset,
    yardstick: Yardstick,
) -> OnnxInfo:
    """Compare an exported candidate with ``yardstick`` on ``blocks``, gate and score it.

    Writes ``baseline_comparison``, ``gates``, ``score`` and ``passed`` into
    ``fields`` and returns the ONNX contract it would be served under. Every
    candidate (the ensemble too) is judged by this one code path; a return target
    (``config.target``) by squared-error loss and Diebold-Mariano (``_judge_returns``).
    """
    if config.target == RETURN:
        _judge_returns(
            fields,
            parity=parity,
            metrics=metrics,
            blocks=blocks,
            warning_kinds=warning_kinds,
            config=config,
            data=data,
            yardstick=yardstick,
        )
        return _onnx_info(scorer, parity)
    paired = paired_counts(data.labels, blocks, yardstick.blocks, yardstick.name)
    fields["baseline_comparison"] = BaselineComparison(
        baseline=paired.baseline,
        rows=paired.rows,
        blocks=len(blocks),
        candidate_only=paired.candidate_only,
        baseline_only=paired.baseline_only,
        p_value=paired.p_value,
    )
    verdicts = evaluate_gates(
        metrics.model_dump(),
        parity,
        config.gates,
        paired,
        test_rows=len(data.y_test),
        fold_accuracy_std=None if walk_forward is None else walk_forward.accuracy_std,
        warning_kinds=warning_kinds,
    )
    fields["gates"] = tuple(verdicts)
    fields["score"] = candidate_score(metrics.model_dump())
    fields["passed"] = all(v.passed for v in verdicts)
    return _onnx_info(scorer, parity)


def _judge_returns(
    fields: dict[str, object],
    *,
    parity: float,
    metrics: SplitMetrics,
    blocks: Mapping[int, npt.NDArray[np.float64]],
    warning_kinds: Sequence[str],
    config: TrainConfig,
    data: Dataset,
    yardstick: Yardstick,
) -> None:
    """``judge`` for a return target: squared-error losses against ``yardstick`` on the pooled
    blocks, the one-sided Diebold-Mariano test with HAC lag ``horizon_bars - 1``
    (``trainers.evaluation.paired_losses``), the return gates and score
    (``monitors.return_gates.evaluate_return_gates``, ``return_candidate_score``)."""
    labels = np.asarray(data.labels, dtype=np.float64)
    losses = paired_losses(
        labels, blocks, yardstick.blocks, yardstick.name, horizon=config.horizon_bars
    )
    cand_wins, base_wins = _loss_wins(labels, blocks, yardstick.blocks)
    fields["baseline_comparison"] = BaselineComparison(
        baseline=losses.baseline,
        rows=losses.rows,
        blocks=losses.blocks,
        candidate_only=cand_wins,
        baseline_only=base_wins,
        p_value=losses.p_value,
        test="diebold_mariano",
        statistic=losses.statistic,
        horizon=losses.horizon,
        candidate_mse=losses.candidate_mse,
        baseline_mse=losses.baseline_mse,
    )
    verdicts = evaluate_return_gates(
        parity,
        config.gates,
        losses,
        test_rows=len(data.y_test),
        warning_kinds=warning_kinds,
    )
    fields["gates"] = tuple(verdicts)
    fields["score"] = return_candidate_score(metrics.model_dump(), yardstick.metrics.model_dump())
    fields["passed"] = all(v.passed for v in verdicts)


def _loss_wins(
    labels: npt.NDArray[np.float64],
    candidate: Mapping[int, npt.NDArray[np.float64]],
    baseline: Mapping[int, npt.NDArray[np.float64]],
) -> tuple[int, int]:
    """Rows (of the blocks both predicted) where the candidate's squared error is the lower,
    and where the baseline's is."""
    cand_wins = base_wins = 0
    for start, cand in candidate.items():
        base = baseline.get(start)
        if base is None or len(base) != len(cand):
            continue
        y = labels[start : start + len(cand)]
        diff = (base - y) ** 2 - (cand - y) ** 2
        cand_wins += int(np.sum(diff > 0))
        base_wins += int(np.sum(diff < 0))
    return cand_wins, base_wins


def _onnx_info(scorer: OnnxScorer, parity: float) -> OnnxInfo:
    return OnnxInfo(
        path=MODEL_FILE,
        input=scorer.input_name,
        output=scorer.output_name,
        n_features=scorer.n_features,
        window=scorer.window,
        parity_max_abs_diff=parity,
        sha256=hashlib.sha256(scorer.path.read_bytes()).hexdigest(),
    )


def finish(
    fields: dict[str, object],
    *,
    timings: dict[str, float],
    warnings: Sequence[MonitorWarning],
    path: Path,
    onnx: OnnxInfo | None,
    predictions: Predictions | None,
) -> CandidateRun:
    """The candidate's ``CandidateRun`` from ``fields`` (``error`` set: failed).

    The ONNX file at ``path`` is deleted when an error stopped the candidate
    (or it never got a contract): what it exported is not trustworthy.
    """
    if "error" in fields:
        fields["passed"] = False
    record = CandidateRecord.model_validate(
        {"passed": False, **fields, "timings": timings, "warnings": tuple(warnings)}
    )
    return _finished(record, path, onnx, predictions)


def _finished(
    record: CandidateRecord, path: Path, onnx: OnnxInfo | None, predictions: Predictions | None
) -> CandidateRun:
    """The run, keeping the ONNX file when the candidate got through the gates (passed or
    failed by one: evidence); deleting it when an error stopped the candidate."""
    if record.error is not None or onnx is None:
        path.unlink(missing_ok=True)
        return CandidateRun(record, None, None, predictions)
    return CandidateRun(record, path, onnx, predictions)


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the block's wall time under ``key``, also when it raises."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = time.perf_counter() - started


def _walk_forward(
    name: str,
    params: Mapping[str, object],
    config: TrainConfig,
    data: Dataset,
    fwd_returns: npt.NDArray[np.float64],
    *,
    model: FittedModel,
    factory: Callable[[], TrainingMonitor],
    predictions: dict[int, npt.NDArray[np.float64]],
) -> WalkForwardRecord | None:
    """The candidate's walk-forward record; None when the config turns it off."""
    if not config.walk_forward_folds:
        return None
    return walk_forward(
        name,
        params,
        data,
        fwd_returns,
        folds=config.walk_forward_folds,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        last_model=model,
        monitor_factory=factory,
        predictions=predictions,
    )
