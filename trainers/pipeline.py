"""One symbol's training job: bars in, a gated ONNX model and its metadata out.

Runs inside a worker process and knows nothing of Kafka or the registry: the
caller hands it bars and an empty output directory and reads back
``metadata.json`` (always written) and ``model.onnx`` (only when a candidate
passed every gate).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from monitors.base import NullMonitor, TrainingMonitor
from monitors.drift import FeatureReference
from monitors.gates import GateConfig, PairedCounts, candidate_score, evaluate_gates
from monitors.training import default_monitor
from trainers.base import FittedModel
from trainers.data import Bars, validate_symbol
from trainers.dataset import PARTS, Dataset
from trainers.errors import InvalidInputError
from trainers.features import FEATURE_SPEC, TrainingMatrix, training_matrix
from trainers.metrics import classification_metrics
from trainers.onnx_io import OnnxScorer, max_abs_diff
from trainers.repro import bars_sha256, config_sha256, package_versions, seed_everything
from trainers.splits import chronological_split
from trainers.table import make_trainer
from trainers.walk_forward import fold_accuracy_std, walk_forward

MODEL_FILE: Final = "model.onnx"
METADATA_FILE: Final = "metadata.json"


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """What to train and how to judge it.

    ``trainers``: candidate names (``trainers.base.TRAINERS``), each trained
    beside the naive baseline. ``trainer_params`` maps a trainer name to its
    keywords, e.g. ``{"tcn": {"preset": "deep"}}``. ``walk_forward_folds``: 0
    disables walk-forward evaluation, else at least 2 folds. ``augment``
    passes ``augment=True`` to every candidate (small-data augmentation of
    the training split).
    """

    trainers: tuple[str, ...] = ("xgboost", "tcn", "lstm")
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    gates: GateConfig = field(default_factory=GateConfig)
    trainer_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    walk_forward_folds: int = 3
    augment: bool = False

    def __post_init__(self) -> None:
        folds = self.walk_forward_folds
        if not (folds == 0 or folds >= 2):
            raise InvalidInputError(f"walk_forward_folds must be 0 (off) or >= 2, got {folds}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the input of the config hash in metadata."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["gates"] = asdict(self.gates)
        out["trainer_params"] = {k: dict(v) for k, v in self.trainer_params.items()}
        safe: dict[str, Any] = _json_safe(out)
        return safe


@dataclass(frozen=True, slots=True)
class TrainResult:
    """Outcome of ``train_symbol``; ``metadata`` is exactly what ``metadata.json`` holds."""

    symbol: str
    passed: bool
    chosen: str | None
    reason: str
    metadata: dict[str, Any]
    model_path: Path | None


def train_symbol(
    symbol: str,
    bars: Bars,
    config: TrainConfig,
    out_dir: Path,
    *,
    monitor_factory: Callable[[], TrainingMonitor] = default_monitor,
) -> TrainResult:
    """Train every configured candidate on ``bars``, gate them, keep the best one.

    Steps: ``training_matrix(bars)``; ``chronological_split`` of its rows with
    embargo ``FEATURE_SPEC.lookback + label_horizon``; the naive baseline; each
    candidate with a fresh monitor from ``monitor_factory`` (a candidate that
    raises is recorded with its error, the others go on); ONNX export and
    parity on the test rows; walk-forward folds; gates; the passing candidate
    with the best ``candidate_score`` becomes ``out_dir/model.onnx``.

    Recorded metrics are those of the exported ONNX model (the artifact that
    will be served) on the same test rows for every candidate, so they can be
    reproduced exactly::

        m = training_matrix(bars)          # the same bars: data.n_bars / first_ts / last_ts
        start, stop = metadata["split"]["test"]
        scorer = OnnxScorer(out_dir / "model.onnx")
        x = sequence_windows(m.X.astype(np.float32), slice(start, stop), scorer.window)
        # (for window 1, x = m.X[start:stop] instead)
        classification_metrics(m.y[start:stop], scorer.predict_proba(x), m.fwd_returns[start:stop])

    ``metadata["split"]`` also holds the fractions and embargo, so
    ``chronological_split(metadata["data"]["n_rows"], ...)`` gives the same rows.

    Raises ``InvalidSymbolError`` for a bad symbol, ``InsufficientDataError``
    when the bars are too few for features and a split, and
    ``InvalidInputError`` for invalid bars or labels the baseline cannot fit
    (e.g. a price that never moves); nothing is written then.
    """
    started = time.perf_counter()
    validate_symbol(symbol)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    matrix = training_matrix(bars)
    timings["features_seconds"] = time.perf_counter() - t

    embargo = FEATURE_SPEC.lookback + FEATURE_SPEC.label_horizon
    split = chronological_split(
        len(matrix),
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        embargo=embargo,
    )
    data = Dataset.from_split(matrix.X, matrix.y, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A stale model from an earlier run in this directory must not outlive a failed run.
    (out_dir / MODEL_FILE).unlink(missing_ok=True)

    t = time.perf_counter()
    # The baseline is a yardstick, not a candidate: nothing for a monitor to stop.
    baseline = make_trainer("naive").fit(data, NullMonitor(), config.seed)
    baseline_metrics = _metrics(baseline.predict_proba, data, matrix.fwd_returns, window=1)
    baseline_test_proba = baseline.predict_proba(data.X_test)
    timings["baseline_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    candidates: list[dict[str, Any]] = []
    files: list[Path | None] = []
    for index, name in enumerate(config.trainers):
        record, path = _run_candidate(
            index,
            name,
            config=config,
            data=data,
            fwd_returns=matrix.fwd_returns,
            baseline_test=baseline_metrics["test"],
            baseline_test_proba=baseline_test_proba,
            out_dir=out_dir,
            monitor_factory=monitor_factory,
        )
        candidates.append(record)
        files.append(path)
    timings["candidates_seconds"] = time.perf_counter() - t

    onnx_info = [c.pop("onnx") for c in candidates]  # only the chosen one's file survives
    passing = [i for i, c in enumerate(candidates) if c["passed"]]
    chosen = max(passing, key=lambda i: candidates[i]["score"], default=None)
    model_path: Path | None = None
    for i, path in enumerate(files):
        if path is None:
            continue
        if i == chosen:
            model_path = out_dir / MODEL_FILE
            path.replace(model_path)
        else:
            path.unlink(missing_ok=True)

    best = candidates[chosen] if chosen is not None else None
    reason = _reason(candidates, chosen)
    timings["total_seconds"] = time.perf_counter() - started
    config_dict = config.to_dict()
    metadata: dict[str, Any] = {
        "symbol": symbol,
        "trainer": best["trainer"] if best else None,
        "params": best["params"] if best else None,
        "seed": config.seed,
        "data": _data_section(bars, matrix),
        "feature_spec": FEATURE_SPEC.to_dict(),
        # The training distribution live drift is measured against (monitors.drift).
        "feature_reference": FeatureReference.from_matrix(
            matrix.X[split.train], FEATURE_SPEC.names
        ).to_dict(),
        "split": {
            **split.to_dict(),
            "val_fraction": config.val_fraction,
            "test_fraction": config.test_fraction,
        },
        "metrics": best["metrics"] if best else None,
        "walk_forward": best["walk_forward"] if best else None,
        "baseline": {
            "trainer": "naive",
            "params": dict(baseline.params),
            "metrics": baseline_metrics,
        },
        "candidates": candidates,
        "gates": best["gates"] if best else [],
        "warnings": best["warnings"] if best else [],
        "onnx": onnx_info[chosen] if chosen is not None else None,
        "gate_config": asdict(config.gates),
        "config": config_dict,
        "config_sha256": config_sha256(config_dict),
        "timings": timings,
        "code_version": package_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "passed": best is not None,
        "reason": reason,
    }
    metadata = _json_safe(metadata)
    _write_json(out_dir / METADATA_FILE, metadata)
    return TrainResult(
        symbol=symbol,
        passed=best is not None,
        chosen=best["trainer"] if best else None,
        reason=reason,
        metadata=metadata,
        model_path=model_path,
    )


def _metrics(
    predict: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]],
    data: Dataset,
    fwd_returns: npt.NDArray[np.float64],
    *,
    window: int,
) -> dict[str, dict[str, float | None]]:
    """Metrics of every split part, each row scored from its own (windowed) input."""
    return {
        part: classification_metrics(
            data.y(part), predict(data.inputs(part, window)), fwd_returns[data.rows(part)]
        )
        for part in PARTS
    }


def _run_candidate(
    index: int,
    name: str,
    *,
    config: TrainConfig,
    data: Dataset,
    fwd_returns: npt.NDArray[np.float64],
    baseline_test: Mapping[str, float | None],
    baseline_test_proba: npt.NDArray[np.float64],
    out_dir: Path,
    monitor_factory: Callable[[], TrainingMonitor],
) -> tuple[dict[str, Any], Path | None]:
    """Fit, export, score, walk forward and gate one candidate; any exception is recorded."""
    params = dict(config.trainer_params.get(name, {}))
    if config.augment:
        params["augment"] = True
    record = _empty_record(name, params)
    path = out_dir / f".candidate-{index}.onnx"  # index, not name: names never touch paths
    stage = "init"
    monitor = monitor_factory()
    timings = record["timings"]
    try:
        trainer = make_trainer(name, **params)
        stage = "fit"
        # Global generators reset per candidate: its result never depends on the order.
        seed_everything(config.seed)
        with _timed(timings, "fit_seconds"):
            model: FittedModel = trainer.fit(data, monitor, config.seed)
        record.update(params=dict(model.params), n_params=model.n_params, window=model.window)
        test_x = data.inputs("test", model.window)

        stage = "export"
        with _timed(timings, "export_seconds"):
            model.export_onnx(path)
            scorer = OnnxScorer(path)

        stage = "parity"
        with _timed(timings, "parity_seconds"):
            parity = max_abs_diff(model, scorer, test_x)
        record["parity_max_abs_diff"] = parity

        stage = "metrics"
        # Metrics of the artifact that will be served, so they reproduce from model.onnx alone.
        metrics = _metrics(scorer.predict_proba, data, fwd_returns, window=scorer.window)
        record["metrics"] = metrics
        paired = _paired_counts(scorer.predict_proba(test_x), baseline_test_proba, data.y_test)
        record["baseline_comparison"] = asdict(paired) | {"p_value": paired.p_value}

        stage = "walk_forward"
        with _timed(timings, "walk_forward_seconds"):
            record["walk_forward"] = _walk_forward(
                name,
                params,
                config,
                data,
                fwd_returns,
                model=model,
                monitor_factory=monitor_factory,
            )

        stage = "gates"
        verdicts = evaluate_gates(
            metrics,
            baseline_test,
            parity,
            config.gates,
            paired,
            test_rows=len(data.y_test),
            fold_accuracy_std=fold_accuracy_std(record["walk_forward"]),
            warning_kinds=[w.kind for w in monitor.warnings],
        )
        record["gates"] = [v.to_dict() for v in verdicts]
        record["score"] = candidate_score(metrics)
        record["passed"] = all(v.passed for v in verdicts)
        record["onnx"] = _onnx_info(scorer, parity)
    except Exception as exc:  # one broken candidate must not sink the others
        record["error"] = {"stage": stage, "type": type(exc).__name__, "message": str(exc)}
        record["passed"] = False
    finally:
        record["warnings"] = [w.to_dict() for w in monitor.warnings]
    if not record["passed"]:
        path.unlink(missing_ok=True)
        return record, None
    return record, path


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
    params: Mapping[str, Any],
    config: TrainConfig,
    data: Dataset,
    fwd_returns: npt.NDArray[np.float64],
    *,
    model: FittedModel,
    monitor_factory: Callable[[], TrainingMonitor],
) -> dict[str, Any] | None:
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
        monitor_factory=monitor_factory,
    )


def _onnx_info(scorer: OnnxScorer, parity: float) -> dict[str, Any]:
    """What a consumer of model.onnx needs to feed it (``window`` 1: rows, else windows)."""
    return {
        "path": MODEL_FILE,
        "input": scorer.input_name,
        "output": scorer.output_name,
        "n_features": scorer.n_features,
        "window": scorer.window,
        "parity_max_abs_diff": parity,
    }


def _empty_record(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A candidate's metadata entry before anything about it is known."""
    return {
        "trainer": name,
        "params": dict(params),
        "window": None,
        "metrics": None,
        "walk_forward": None,
        "gates": [],
        "parity_max_abs_diff": None,
        "warnings": [],
        "n_params": None,
        "timings": {},
        "onnx": None,
        "score": None,
        "passed": False,
        "error": None,
    }


def _paired_counts(
    candidate: npt.NDArray[np.float64],
    baseline: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
) -> PairedCounts:
    """Discordant test rows of candidate vs baseline, at the 0.5 decision threshold."""
    cand_right = (candidate >= 0.5) == (y == 1.0)
    base_right = (baseline >= 0.5) == (y == 1.0)
    return PairedCounts(
        candidate_only=int(np.sum(cand_right & ~base_right)),
        baseline_only=int(np.sum(base_right & ~cand_right)),
    )


def _reason(candidates: list[dict[str, Any]], chosen: int | None) -> str:
    if chosen is not None:
        c = candidates[chosen]
        return f"chose {c['trainer']} (score {c['score']:.3f}): every gate passed"
    if not candidates:
        return "no candidate trainers configured"
    parts = []
    for c in candidates:
        if c["error"] is not None:
            err = c["error"]
            parts.append(f"{c['trainer']}: {err['stage']} failed: {err['type']}: {err['message']}")
        else:
            failed = "; ".join(g["reason"] for g in c["gates"] if not g["passed"])
            parts.append(f"{c['trainer']}: {failed}")
    return "no candidate passed the gates: " + " | ".join(parts)


def _data_section(bars: Bars, matrix: TrainingMatrix) -> dict[str, Any]:
    return {
        "n_bars": len(bars),
        "first_ts": int(bars.ts[0]) if len(bars) else None,
        "last_ts": int(bars.ts[-1]) if len(bars) else None,
        "n_rows": len(matrix),
        "sha256": bars_sha256(bars),
    }


def _json_safe(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Atomically: a reader sees the previous file or the complete new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
