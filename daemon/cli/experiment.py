"""``ctd experiment run FILE``: train a grid of trainers x params x seeds and keep the evidence.

Every grid point (``trainers.experiment.GridPoint``) is one ``train_symbol`` run
on the same bars, in its own directory of the evidence folder
``<out>/<name>-<UTC time>/``::

    experiment.json  <file copied>     what was asked: the file, the grid, the data, the config
    environment.json                   python, platform, CPU/GPU, ML stack versions, git commit
    runs/NN-<label>/                   each run's metadata.json, predictions.csv, model.onnx...
    metrics.csv  metrics.json          one row per candidate of each run
    report.md  accuracy.png            comparison table, paired tests, chart (rmse.png for a
                                       return target)

Nothing touches the registry or the first-champion significance budget: an
experiment measures, it deploys nothing. With ``CTD_MLFLOW_TRACKING_URI`` set every
candidate of every run is also an MLflow run in the experiment named after the
file's ``name``; a run MLflow refuses is reported, never a failed experiment.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from daemon.cli.backtest import load_bars
from daemon.cli.experiment_report import (
    Run,
    candidate_rows,
    chart_file,
    draw_chart,
    paired_tests,
    render_report,
    write_rows,
)
from daemon.settings import Settings
from daemon.training.tracking import MlflowTracker, as_fields
from trainers.config import TrainConfig, json_safe
from trainers.data import Bars
from trainers.environment import capture_environment
from trainers.errors import InvalidInputError
from trainers.evidence import candidate_file, evidence_names
from trainers.experiment import Experiment, ExperimentFileError, GridPoint, load_experiment
from trainers.metadata import CandidateRecord, ModelMetadata
from trainers.pipeline import METADATA_FILE, train_symbol
from trainers.repro import bars_sha256
from trainers.table import make_trainer

RUNS_DIR: Final = "runs"
MODEL_FILE: Final = "model.onnx"


@dataclass(frozen=True, slots=True)
class ExperimentOutcome:
    """What ``run_experiment`` did; ``rows`` are metrics.csv's rows."""

    experiment: Experiment
    folder: Path
    runs: list[Run]
    rows: list[dict[str, object]]
    tracked: int
    """Candidates logged to MLflow."""
    tracking_errors: list[str]

    @property
    def measured(self) -> bool:
        """Some candidate was scored; otherwise every one failed (the CLI exits 1)."""
        return any(c.metrics is not None for r in self.runs for c in r.result.metadata.candidates)


def run_experiment(settings: Settings, path: Path, out: Path | None = None) -> ExperimentOutcome:
    """Validate ``path``, train its grid, write the evidence folder under ``out``.

    ``out`` defaults to ``<CTD_DATA_DIR>/experiments``. The settings give every
    training setting the file does not (``settings.train_config``). Raises
    ExperimentFileError (exit 2) naming the key of a bad file, a missing CSV or a
    trainer parameter the trainer refuses, all before training; CsvFormatError;
    TrackingUnavailableError when MLflow is configured but unusable; the
    pipeline's errors (e.g. InsufficientDataError) for bars it cannot train on.
    """
    path = Path(path)
    experiment = load_experiment(path)
    base = _base_config(settings, experiment)
    grid = experiment.grid()
    _preflight(path, grid)
    csv = _csv(path, experiment)
    bars = load_bars(settings, experiment.data.symbol, csv)
    if experiment.data.last_bars is not None:
        bars = bars.tail(experiment.data.last_bars)
    tracker = (
        MlflowTracker(settings.mlflow_tracking_uri, experiment.name)
        if settings.mlflow_tracking_uri
        else None
    )
    started = datetime.now(UTC)
    folder = _new_folder(out or settings.data_dir / "experiments", experiment.name, started)
    shutil.copy2(path, folder / path.name)
    record: dict[str, object] = {
        "name": experiment.name,
        "description": experiment.description,
        "tags": experiment.tags,
        "file": path.name,
        "experiment": experiment.model_dump(mode="json"),
        "data": {
            "symbol": experiment.data.symbol,
            "csv": None if csv is None else str(csv.resolve()),
            "n_bars": len(bars),
            "first_ts": int(bars.ts[0]) if len(bars) else None,
            "last_ts": int(bars.ts[-1]) if len(bars) else None,
            "sha256": bars_sha256(bars),
        },
        "config": base.to_dict(),
        "grid": [
            {
                "index": p.index,
                "label": p.label,
                "trainer": p.trainer,
                "params": json_safe(dict(p.params)),
                "seed": p.seed,
                "dir": f"{RUNS_DIR}/{_run_dir_name(p)}",
            }
            for p in grid
        ],
        "started_at": _iso(started),
    }
    _write_json(folder / "experiment.json", record)
    environment = capture_environment()
    _write_json(folder / "environment.json", environment)

    runs: list[Run] = []
    tracked, errors = 0, []
    for point in grid:
        run = _train(experiment, point, base, bars, folder, first=not runs)
        runs.append(run)
        if tracker is None:
            continue
        for candidate in run.result.metadata.candidates:
            try:
                _track(tracker, experiment, run, candidate)
                tracked += 1
            except Exception as exc:  # MLflow trouble never sinks the experiment
                errors.append(f"{point.label}/{candidate.trainer}: {type(exc).__name__}: {exc}")

    rows = candidate_rows(experiment, runs)
    write_rows(folder, rows)
    draw_chart(folder / chart_file(experiment), experiment, runs)
    record["finished_at"] = _iso(datetime.now(UTC))
    # Not the tracking URI: one with credentials in it must not land in a shared folder.
    record["mlflow"] = {
        "experiment": experiment.name if tracker is not None else None,
        "runs_logged": tracked,
        "errors": errors,
    }
    _write_json(folder / "experiment.json", record)
    tests = paired_tests(runs, target=experiment.target, horizon=experiment.horizon_bars)
    report = render_report(experiment, record, runs, tests, environment)
    (folder / "report.md").write_text(report, encoding="utf-8")
    return ExperimentOutcome(experiment, folder, runs, rows, tracked, errors)


def _train(
    experiment: Experiment,
    point: GridPoint,
    base: TrainConfig,
    bars: Bars,
    folder: Path,
    *,
    first: bool,
) -> Run:
    """``train_symbol`` of one grid point into ``runs/NN-label``. Its errors are the bars'
    (a candidate's own failures are recorded in its metadata), so the first run raises
    them if any does: the folder is then removed, as it holds nothing worth keeping."""
    directory = folder / RUNS_DIR / _run_dir_name(point)
    config = replace(
        base,
        trainers=(point.trainer,),
        trainer_params={point.trainer: dict(point.params)},
        seed=point.seed,
    )
    try:
        result = train_symbol(experiment.data.symbol, bars, config, directory)
    except Exception:
        if first:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return Run(point, directory, result)


def _base_config(settings: Settings, experiment: Experiment) -> TrainConfig:
    """The settings' training config with the file's split and gate overrides, and its
    target and horizon (the file's, default direction over 1 bar: the daemon's live path
    serves direction models only, so the settings never choose a target)."""
    base = settings.train_config
    splits = {
        name: value for name, value in experiment.splits.model_dump().items() if value is not None
    }
    config = replace(
        base,
        gates=replace(base.gates, **experiment.gates.overrides()),
        target=experiment.target,
        horizon_bars=experiment.horizon_bars,
        **splits,
    )
    if config.val_fraction + config.test_fraction >= 0.8:
        raise InvalidInputError(
            f"val_fraction {config.val_fraction} + test_fraction {config.test_fraction} must "
            "leave at least 20% of the rows for training"
        )
    return config


def _preflight(path: Path, grid: list[GridPoint]) -> None:
    """Build each trainer once per params combination, so a misspelt or out-of-range
    hyperparameter fails the file now, naming its key, not as N failed candidates later."""
    problems: list[str] = []
    seen: set[str] = set()
    for point in grid:
        key = json.dumps([point.trainer, json_safe(dict(point.params))], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            make_trainer(point.trainer, **point.params)
        except (InvalidInputError, TypeError, ValueError) as exc:
            problem = f"params.{point.trainer}: {exc}"
            if problem not in problems:
                problems.append(problem)
    if problems:
        raise ExperimentFileError(path, problems)


def _csv(path: Path, experiment: Experiment) -> Path | None:
    """The data file, relative to the experiment file; ExperimentFileError if it is missing."""
    if experiment.data.csv is None:
        return None
    csv = Path(experiment.data.csv).expanduser()
    if not csv.is_absolute():
        csv = path.parent / csv
    if not csv.is_file():
        raise ExperimentFileError(path, [f"data.csv: no such file {str(csv)!r}"])
    return csv


def _run_dir_name(point: GridPoint) -> str:
    return f"{point.index:02d}-{point.label}"


def _new_folder(root: Path, name: str, started: datetime) -> Path:
    """``root/<name>-<YYYYmmddTHHMMSSZ>``, suffixed ``-2``, ``-3``... if taken."""
    stem = f"{name}-{started.strftime('%Y%m%dT%H%M%SZ')}"
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = root / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        (folder / RUNS_DIR).mkdir()
        return folder
    raise FileExistsError(root / stem)


def _track(
    tracker: MlflowTracker, experiment: Experiment, run: Run, candidate: CandidateRecord
) -> str:
    """One MLflow run for one candidate of one grid point: its params, every split's metrics,
    its gate verdicts, the grid point and the experiment's tags; metadata.json and its model."""
    meta: ModelMetadata = run.result.metadata
    point = run.point
    chosen = meta.passed and meta.trainer == candidate.trainer
    params: dict[str, object] = {
        "experiment": experiment.name,
        "grid_point": point.label,
        "trainer": candidate.trainer,
        "seed": meta.seed,
        "symbol": meta.symbol,
        "target": experiment.target,
        "horizon_bars": experiment.horizon_bars,
        "config_sha256": meta.config_sha256,
        "data.n_bars": meta.data.n_bars,
        "data.sha256": meta.data.sha256,
        **{f"param.{k}": v for k, v in candidate.params.items()},
    }
    metrics: dict[str, object] = {}
    if candidate.metrics is not None:
        for split, values in candidate.metrics.model_dump().items():
            metrics |= {f"{split}_{name}": value for name, value in values.items()}
    if candidate.score is not None:
        metrics["score"] = candidate.score
    tags: dict[str, object] = {
        **experiment.tags,
        "ctd.experiment": experiment.name,
        "ctd.grid_point": point.label,
        "ctd.grid_index": point.index,
        "ctd.grid_trainer": point.trainer,
        "ctd.candidate": candidate.trainer,
        "ctd.symbol": meta.symbol,
        "ctd.passed": str(candidate.passed).lower(),
        "ctd.chosen": str(chosen).lower(),
        "ctd.yardstick": meta.baseline.trainer,
    }
    for verdict in candidate.gates:
        tags[f"gate.{verdict.gate}"] = "pass" if verdict.passed else "fail"
    if candidate.error is not None:
        tags["ctd.error"] = candidate.error.model_dump()
    artifacts = [run.directory / METADATA_FILE]
    model = _candidate_model(run, candidate, chosen)
    if model is not None:
        artifacts.append(model)
    return tracker.log_fields(
        f"{point.label}/{candidate.trainer}",
        as_fields(params, metrics, tags),
        artifacts=artifacts,
        failed=candidate.error is not None,
    )


def _candidate_model(run: Run, candidate: CandidateRecord, chosen: bool) -> Path | None:
    """The candidate's ONNX file: model.onnx when chosen, else its file under candidates/."""
    if chosen:
        model = run.directory / MODEL_FILE
    else:
        candidates = run.result.metadata.candidates
        name = evidence_names([c.trainer for c in candidates])[candidates.index(candidate)]
        model = candidate_file(run.directory, name)
    return model if model.is_file() else None


def _write_json(path: Path, document: object) -> None:
    path.write_text(json.dumps(json_safe(document), indent=2) + "\n", encoding="utf-8")


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
