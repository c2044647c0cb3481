# Over 400 lines: one evidence folder (rows, paired tests, report, chart, summary) for both targets.
"""The evidence of ``ctd experiment run``: metrics rows, paired tests, report.md, chart, summary.

Pure functions of the finished runs (``Run``) and their files: the runner
(``daemon.cli.experiment``) trains, this module compares and writes. What is compared
follows the file's target (``trainers.targets``): for ``direction`` runs are ranked by
test accuracy and paired by McNemar's test on the rows one got right; for ``return``
by test RMSE (lowest best) and paired by Diebold-Mariano on per-row squared error, with
a HAC variance over ``horizon_bars - 1`` lags (neighbouring labels overlap that much).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from trainers.comparison import PairedTest, diebold_mariano, mcnemar
from trainers.evidence import PREDICTIONS_FILE, evidence_names, read_predictions
from trainers.experiment import PRIMARY_METRIC, Experiment, GridPoint
from trainers.metadata import CandidateRecord
from trainers.pipeline import TrainResult
from trainers.targets import DIRECTION, RETURN, Target

SPLITS: Final = ("test", "val")
CHART_FILES: Final[dict[Target, str]] = {DIRECTION: "accuracy.png", RETURN: "rmse.png"}
_LABEL_WIDTH: Final = 30
_SHORT: Final = {"accuracy": "test acc", "rmse": "testRMSE"}
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Run:
    """One finished grid point: where its files are and what ``train_symbol`` returned."""

    point: GridPoint
    directory: Path
    result: TrainResult

    def own(self) -> CandidateRecord | None:
        """The candidate of the grid point's trainer (a run may also hold persistence)."""
        return next(
            (c for c in self.result.metadata.candidates if c.trainer == self.point.trainer), None
        )


def chart_file(experiment: Experiment) -> str:
    """The chart's file name: what it plots, test accuracy or test RMSE."""
    return CHART_FILES[experiment.target]


def metric_on_test(candidate: CandidateRecord | None, metric: str) -> float | None:
    """``candidate``'s test value of ``metric``; None when unscored or undefined."""
    if candidate is None or candidate.metrics is None:
        return None
    value = candidate.metrics.test.get(metric)
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Paired:
    """The grid point ``run``'s own candidate against the best run's, on the same test rows
    (``test.a_wins``: rows this one got right alone, or had the lower squared error)."""

    run: int
    best: int
    test: PairedTest
    holm_p: float
    """``test.p_value`` adjusted for every comparison of the report (Holm 1979)."""


def candidate_rows(experiment: Experiment, runs: Sequence[Run]) -> list[dict[str, object]]:
    """metrics.csv: one row per candidate of each run, with the file's metrics on val and test."""
    rows: list[dict[str, object]] = []
    for run in runs:
        meta = run.result.metadata
        for cand in meta.candidates:
            row: dict[str, object] = {
                "run": run.point.index,
                "label": run.point.label,
                "trainer": run.point.trainer,
                "seed": run.point.seed,
                "params": json.dumps(dict(run.point.params), sort_keys=True),
                "candidate": cand.trainer,
                "passed": cand.passed,
                "chosen": meta.passed and meta.trainer == cand.trainer,
                "score": cand.score,
            }
            values = cand.metrics.model_dump() if cand.metrics is not None else {}
            for split in SPLITS:
                for metric in experiment.metrics:
                    row[f"{split}_{metric}"] = values.get(split, {}).get(metric)
            row["baseline"] = meta.baseline.trainer
            primary = experiment.primary_metric
            row[f"baseline_test_{primary}"] = meta.baseline.metrics.test.get(primary)
            row["fit_seconds"] = cand.timings.get("fit_seconds")
            row["failed_gates"] = ";".join(g.gate for g in cand.failed_gates)
            row["error"] = None if cand.error is None else f"{cand.error.stage}: {cand.error.type}"
            rows.append(row)
    return rows


def write_rows(folder: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """metrics.json (the rows as JSON) and metrics.csv (empty cells for None)."""
    (folder / "metrics.json").write_text(json.dumps(list(rows), indent=2) + "\n", "utf-8")
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    (folder / "metrics.csv").write_text(buffer.getvalue(), "utf-8")


def own_predictions(run: Run) -> tuple[npt.NDArray[np.int64], FloatArray, FloatArray] | None:
    """(test rows, the run's own candidate's predictions, labels) from its predictions.csv;
    None when the file or the candidate's column is missing (an error stopped it)."""
    path = run.directory / PREDICTIONS_FILE
    names = [c.trainer for c in run.result.metadata.candidates]
    if not path.is_file() or run.point.trainer not in names:
        return None
    column = evidence_names(names)[names.index(run.point.trainer)]
    table = read_predictions(path)
    if column not in table:
        return None
    return table["row"].astype(np.int64), table[column], table["label"]


def paired_tests(
    runs: Sequence[Run], *, target: Target = DIRECTION, horizon: int = 1
) -> list[Paired]:
    """Every run's own candidate against the best run's on the test rows both predicted,
    Holm-adjusted over the comparisons made. ``direction``: the best has the highest test
    accuracy, McNemar's test; ``return``: the lowest test RMSE, Diebold-Mariano on squared
    error with HAC lag ``horizon - 1``."""
    primary = PRIMARY_METRIC[target]
    scored = {}
    for run in runs:
        value = metric_on_test(run.own(), primary)
        found = own_predictions(run)
        if value is not None and found is not None:
            # Higher is better: accuracy, or minus RMSE.
            scored[run.point.index] = (value if target == DIRECTION else -value, found)
    if len(scored) < 2:
        return []
    best = max(scored, key=lambda i: (scored[i][0], -i))
    best_rows, best_pred, labels = scored[best][1]
    tests: list[tuple[int, PairedTest]] = []
    for index, (_, (rows, pred, _labels)) in scored.items():
        if index == best:
            continue
        common, mine, theirs = np.intersect1d(rows, best_rows, return_indices=True)
        if target == RETURN and len(common) >= 2:
            y = labels[theirs]
            tests.append(
                (
                    index,
                    diebold_mariano((pred[mine] - y) ** 2, (best_pred[theirs] - y) ** 2, horizon),
                )
            )
        elif target == DIRECTION and len(common):
            up = labels[theirs] == 1.0
            tests.append(
                (index, mcnemar((pred[mine] >= 0.5) == up, (best_pred[theirs] >= 0.5) == up))
            )
    adjusted = holm([t.p_value for _, t in tests])
    return [Paired(index, best, test, p) for (index, test), p in zip(tests, adjusted, strict=True)]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: reject where adjusted p <= alpha keeps the family-wise
    error rate at alpha over all the comparisons."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def draw_chart(path: Path, experiment: Experiment, runs: Sequence[Run]) -> None:
    """PNG bar chart of every candidate's test value of the target's primary metric per run
    (accuracy, or RMSE for returns), the yardstick as a tick."""
    # Lazy: matplotlib is only needed here, and importing it costs ~0.5 s.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = experiment.primary_metric
    labels = [f"{r.point.index:02d} {r.point.label}" for r in runs]
    names = sorted({c.trainer for r in runs for c in r.result.metadata.candidates})
    fig = Figure(
        figsize=(max(6.0, 0.6 * len(runs) * max(1, len(names)) + 2), 5), layout="constrained"
    )
    FigureCanvasAgg(fig)  # Agg: renders without a display
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    x = np.arange(len(runs), dtype=np.float64)
    drawn: list[float] = []
    for k, name in enumerate(names):
        heights = [
            next(
                (
                    metric_on_test(c, metric) or 0.0
                    for c in r.result.metadata.candidates
                    if c.trainer == name
                ),
                0.0,
            )
            for r in runs
        ]
        ax.bar(x + (k - (len(names) - 1) / 2) * width, heights, width, label=name)
        drawn += [h for h in heights if h > 0]
    baseline = [_number(r.result.metadata.baseline.metrics.test.get(metric)) for r in runs]
    ax.scatter(x, baseline, marker="_", s=400, color="black", label="yardstick", zorder=3)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{experiment.name}: test {metric} per run and candidate")
    if experiment.target == DIRECTION:
        low = min([*baseline, *drawn], default=0.5)
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
    else:  # RMSE: from 0, with room above the largest
        ax.set_ylim(0.0, max([*baseline, *drawn], default=1.0) * 1.15 or 1.0)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=100)


def render_report(
    experiment: Experiment,
    record: Mapping[str, object],
    runs: Sequence[Run],
    tests: Sequence[Paired],
    environment: Mapping[str, object],
) -> str:
    """report.md: what was run on what, a table per run and per candidate, the paired tests."""
    data = _mapping(record.get("data"))
    env_python = _mapping(environment.get("python"))
    env_cpu = _mapping(environment.get("cpu"))
    git = _mapping(environment.get("git"))
    lines = [f"# Experiment {experiment.name}", ""]
    if experiment.description:
        lines += [experiment.description, ""]
    source = data.get("csv") or "the local bar store"
    lines += [
        f"- data: {data.get('symbol')}, {data.get('n_bars')} bars from {source} "
        f"(sha256 {str(data.get('sha256'))[:12]})",
        f"- grid: {len(runs)} runs ({', '.join(experiment.trainers)}; seeds "
        f"{', '.join(map(str, experiment.seeds))})",
        f"- started {record.get('started_at')}, finished {record.get('finished_at')}",
        f"- python {env_python.get('version')}, {env_cpu.get('model')} x{env_cpu.get('count')}, "
        f"GPU {_gpu(_mapping(environment.get('gpu')))}, git "
        + (
            f"{str(git.get('commit'))[:12]}{' (dirty)' if git.get('dirty') else ''}" if git else "-"
        ),
    ]
    if experiment.tags:
        lines.append("- tags: " + ", ".join(f"{k}={v}" for k, v in experiment.tags.items()))
    if experiment.target != DIRECTION or experiment.horizon_bars != 1:
        lines.append(
            f"- target: {experiment.target} over {experiment.horizon_bars} bar(s)"
            + (" (forward log return; lower RMSE is better)" if experiment.target == RETURN else "")
        )
    primary = experiment.primary_metric
    lines += ["", "## Runs", ""]
    metrics = list(experiment.metrics)
    lines.append("| run | label | params | chosen | yardstick | " + " | ".join(metrics) + " |")
    lines.append("|---" * (5 + len(metrics)) + "|")
    for run in runs:
        meta, own = run.result.metadata, run.own()
        test = own.metrics.test if own is not None and own.metrics is not None else {}
        yard = meta.baseline.metrics.test.get(primary)
        lines.append(
            f"| {run.point.index:02d} | {run.point.label} | "
            f"{json.dumps(dict(run.point.params), sort_keys=True)} | {meta.trainer or '-'} | "
            f"{meta.baseline.trainer} {_num(yard)} | "
            + " | ".join(_num(test.get(m)) for m in metrics)
            + " |"
        )
    lines += ["", "Test-split metrics of the run's own candidate (the grid point's trainer).", ""]
    lines += ["## Candidates", ""]
    lines.append(f"| run | candidate | passed | score | test {primary} | failed gates / error |")
    lines.append("|---|---|---|---|---|---|")
    for run in runs:
        for cand in run.result.metadata.candidates:
            problem = ", ".join(g.gate for g in cand.failed_gates)
            if cand.error is not None:
                problem = f"{cand.error.stage}: {cand.error.type}: {cand.error.message}"
            lines.append(
                f"| {run.point.index:02d} | {cand.trainer} | {'yes' if cand.passed else 'no'} | "
                f"{_num(cand.score)} | {_num(metric_on_test(cand, primary))} | {problem or '-'} |"
            )
    lines += ["", "## Paired comparisons", ""]
    lines += _paired_section(experiment, runs, tests)
    chart = chart_file(experiment)
    lines += ["", "## Chart", "", f"![test {primary}]({chart})", ""]
    lines += [
        "Files: `experiment.json` (the file, the grid, the data, the config), "
        "`environment.json`, `metrics.csv` / `metrics.json` (one row per candidate of each "
        "run), `runs/NN-label/` (metadata.json, predictions.csv, model.onnx, candidates/).",
        "",
    ]
    return "\n".join(lines)


def _paired_section(
    experiment: Experiment, runs: Sequence[Run], tests: Sequence[Paired]
) -> list[str]:
    """The paired tests' explanation and table, or why there are none."""
    if not tests:
        missing = [r.point.label for r in runs if own_predictions(r) is None]
        return [
            "None: fewer than two runs have test predictions of their own candidate"
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + "."
        ]
    best = tests[0].best
    if experiment.target == RETURN:
        lag = experiment.horizon_bars - 1
        lines = [
            f"Each run's own candidate against the one with the lowest test RMSE (run "
            f"{best:02d}) on the same test rows: Diebold-Mariano on per-row squared error "
            f"(HAC variance over {lag} lag(s), Harvey-Leybourne-Newbold corrected, two-sided); "
            "Holm's adjustment over the comparisons below.",
            "",
            "| run | rows | lower error here | lower error best | MSE diff (best - this) "
            "| DM t | p | Holm p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in tests:
            lines.append(
                f"| {t.run:02d} | {t.test.rows} | {t.test.a_wins} | {t.test.b_wins} | "
                f"{t.test.effect:+.3g} | {t.test.statistic:+.2f} | {t.test.p_value:.3g} | "
                f"{t.holm_p:.3g} |"
            )
        return lines
    lines = [
        f"Each run's own candidate against the most accurate one (run {best:02d}) on the "
        "same test rows: McNemar's test (two-sided mid-p) on the rows exactly one of the "
        "two got right; Holm's adjustment over the comparisons below.",
        "",
        "| run | rows | only this right | only best right | accuracy diff | p | Holm p |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tests:
        lines.append(
            f"| {t.run:02d} | {t.test.rows} | {t.test.a_wins} | {t.test.b_wins} | "
            f"{t.test.effect:+.3f} | {t.test.p_value:.3g} | {t.holm_p:.3g} |"
        )
    return lines


def summary_table(experiment: Experiment, runs: Sequence[Run]) -> str:
    """At most 80 columns: one line per candidate of each run; the target's primary test
    metric, then the file's first other metric."""
    primary = experiment.primary_metric
    extra = next((m for m in experiment.metrics if m != primary), None)
    head = (
        f"{'#':>2}  {'run':<{_LABEL_WIDTH}} {'candidate':<14} {'passed':<6} "
        f"{_SHORT.get(primary, primary[:8]):>8}"
    )
    lines = [head + (f" {extra[:9]:>9}" if extra else "")]
    for run in runs:
        for cand in run.result.metadata.candidates:
            label = run.point.label
            if len(label) > _LABEL_WIDTH:
                label = label[: _LABEL_WIDTH - 1] + "~"
            chosen = "*" if run.result.chosen == cand.trainer else " "
            line = (
                f"{run.point.index:>2}  {label:<{_LABEL_WIDTH}} {cand.trainer[:13] + chosen:<14} "
                f"{'yes' if cand.passed else 'no':<6} {_num(metric_on_test(cand, primary)):>8}"
            )
            if extra:
                value = cand.metrics.test.get(extra) if cand.metrics is not None else None
                line += f" {_num(value):>9}"
            lines.append(line)
    return "\n".join(lines)


def _gpu(gpu: Mapping[str, object]) -> str:
    if not gpu.get("probed"):
        return "not probed (no torch trainer)"
    devices = gpu.get("devices")
    return ", ".join(map(str, devices)) if isinstance(devices, list) and devices else "none"


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _num(value: object) -> str:
    """Three decimals, or three significant digits for small values (returns' RMSE is
    ~1e-3: fixed decimals would print 0.001 for all of them)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.3g}" if value != 0 and abs(value) < 0.01 else f"{value:.3f}"
    return "-"


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
