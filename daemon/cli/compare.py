"""``ctd compare``: every version x candidate of a symbol as a table and a chart, and one
version's statistical comparison of its candidates (``trainers.selection``).

Reads only what the registry holds, so it works with or without a daemon running.
A version's metrics follow its target (``ModelMetadata.target``; metadata from before
targets is ``direction``): accuracy, ROC AUC and log loss of P(up), or RMSE, R^2 and
hit rate of predicted returns.
The terminal tables are drawn by ``daemon.cli.compare_render``; the chart's
critical-difference panel by ``daemon.cli.compare_chart``.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from daemon.cli.compare_chart import draw_critical_difference
from daemon.cli.fmt import pct
from daemon.errors import NothingToReportError
from daemon.registry import open_registry
from daemon.settings import Settings
from deploy.durable import write_atomic
from deploy.registry import Slots
from trainers.metadata import CandidateError, ComparisonRecord, ModelMetadata
from trainers.onnx_io import OnnxScorer
from trainers.targets import DIRECTION, RETURN, Target

LATENCY_CALLS: Final = 200
_LATENCY_WARMUP: Final = 20


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One candidate of one version. ``latency_ms`` only for the version's served model.

    A direction version fills ``test_accuracy``, ``roc_auc``, ``log_loss`` and
    ``baseline_accuracy``; a return version (``target``) ``rmse``, ``r2``, ``hit_rate`` and
    ``baseline_rmse``. ``train_val_gap``: how much worse validation is than train
    (accuracy train - val, or RMSE val - train): positive means overfitting either way.
    """

    version: str
    slot: str  # champion | shadow | retired | -
    trainer: str
    chosen: bool
    passed: bool
    test_accuracy: float | None
    roc_auc: float | None
    log_loss: float | None
    train_val_gap: float | None
    fit_seconds: float | None
    latency_ms: float | None
    n_params: int | None
    baseline_accuracy: float | None
    error: str | None
    target: Target = DIRECTION
    rmse: float | None = None
    r2: float | None = None
    hit_rate: float | None = None
    baseline_rmse: float | None = None


@dataclass(frozen=True, slots=True)
class CompareReport:
    """What ``compare`` found: every row, and the comparison record of ``version``
    (None when its metadata predates comparisons), with that version's target and
    label horizon (what its paired tests' loss and HAC lag were)."""

    rows: list[CompareRow]
    version: str
    comparison: ComparisonRecord | None
    target: Target = DIRECTION
    horizon: int = 1


def compare(
    settings: Settings, symbol: str, out_png: Path | None = None, *, version: str | None = None
) -> CompareReport:
    """Rows for every (version, candidate), oldest version first, the statistical
    comparison of ``version`` (default: the newest); also writes the PNG chart.

    Latency is measured now: the median of ``LATENCY_CALLS`` single-row
    ``OnnxScorer`` calls on each version's model.onnx (the model live scoring
    runs). The chart goes to ``out_png`` (default under the data directory). Raises
    NothingToReportError when the symbol has no version, or not ``version``.
    """
    registry = open_registry(settings)
    versions = registry.versions(symbol)
    if not versions:
        raise NothingToReportError(symbol, f"no model versions in {registry.url}")
    picked = versions[-1] if version is None else version
    if picked not in versions:
        known = ", ".join(versions)
        raise NothingToReportError(symbol, f"no version {picked!r} (versions: {known})")
    slots = registry.slots(symbol)
    rows: list[CompareRow] = []
    report = CompareReport(rows, picked, None)
    for v in versions:
        meta = registry.metadata(symbol, v)
        latency = onnx_latency_ms(registry.model_path(symbol, v))
        rows.extend(version_rows(v, slot_of(slots, v), meta, latency))
        if v == picked:
            report = CompareReport(
                rows, picked, meta.comparison, meta.target, meta.feature_spec.label_horizon
            )
    write_compare_png(report, symbol, out_png or settings.paths.compare_png(symbol))
    return report


def onnx_latency_ms(path: Path, calls: int = LATENCY_CALLS) -> float:
    """Median wall time of one single-row ``predict`` in milliseconds (P(up) or a return).

    The row is a fixed standard-normal draw of the model's input shape: these
    models do the same work whatever the values, and a fixed row keeps runs comparable.
    """
    scorer = OnnxScorer(path)
    shape = (1, scorer.n_features) if scorer.window == 1 else (1, scorer.window, scorer.n_features)
    row = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(_LATENCY_WARMUP):
        scorer.predict(row)
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        scorer.predict(row)
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1e6


def slot_of(slots: Slots, version: str) -> str:
    if version == slots.champion:
        return "champion"
    if version == slots.shadow:
        return "shadow"
    return "retired" if version in slots.retired else "-"


def version_rows(
    version: str, slot: str, meta: ModelMetadata, latency_ms: float | None
) -> list[CompareRow]:
    """One row per candidate; ``chosen`` marks the one whose model is the version's model.onnx."""
    chosen = meta.chosen
    returns = meta.target == RETURN
    key = "rmse" if returns else "accuracy"
    baseline = meta.baseline.metrics.test
    rows = []
    for cand in meta.candidates:
        m = cand.metrics
        train, val = (None, None) if m is None else (_num(m.train.get(key)), _num(m.val.get(key)))
        test = {} if m is None else m.test
        gap = None if train is None or val is None else (val - train if returns else train - val)
        rows.append(
            CompareRow(
                version=version,
                slot=slot,
                trainer=cand.trainer,
                chosen=cand is chosen,
                passed=cand.passed,
                test_accuracy=test.get("accuracy"),
                roc_auc=test.get("roc_auc"),
                log_loss=test.get("log_loss"),
                train_val_gap=gap,
                fit_seconds=cand.timings.get("fit_seconds"),
                latency_ms=latency_ms if cand is chosen else None,
                n_params=cand.n_params,
                baseline_accuracy=meta.baseline_test_accuracy,
                error=None if cand.error is None else error_text(cand.error),
                target=meta.target,
                rmse=_num(test.get("rmse")),
                r2=_num(test.get("r2")),
                hit_rate=_num(test.get("hit_rate")),
                baseline_rmse=_num(baseline.get("rmse")),
            )
        )
    return rows


def _num(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def bar_value(row: CompareRow) -> float | None:
    """The chart's bar: test accuracy, or a return version's hit rate (same 0..1 scale)."""
    return row.hit_rate if row.target == RETURN else row.test_accuracy


def error_text(error: CandidateError) -> str:
    return f"{error.stage}: {error.type}: {error.message}"


def write_compare_png(report: CompareReport, symbol: str, path: Path) -> None:
    """Grouped bars of test accuracy per version and trainer (naive baseline as a dashed
    line per version; a return version's bars are its hit rate, the share of rows whose
    predicted return has the realised sign: the same scale), each served model's
    single-row ONNX latency below, and at the bottom the critical-difference chart of
    ``report.version``'s candidates."""
    # Lazy: matplotlib is only needed here, and importing it costs ~0.5 s.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = report.rows
    versions = list(dict.fromkeys(r.version for r in rows))
    groups = [[r for r in rows if r.version == v] for v in versions]
    trainers = sorted({r.trainer for r in rows})
    colors = {t: f"C{i % 10}" for i, t in enumerate(trainers)}
    ticks = list(range(len(versions)))
    labels = [f"{v[:15]}\n{g[0].slot}" for v, g in zip(versions, groups, strict=True)]
    fig = Figure(figsize=(max(8.0, 1.6 * len(versions) + 3), 11), layout="constrained")
    FigureCanvasAgg(fig)  # Agg: renders without a display
    acc_ax, lat_ax, cd_ax = fig.subplots(3, 1, height_ratios=(2, 1, 1.2))

    for x, group in enumerate(groups):
        width = 0.8 / len(group)
        for j, r in enumerate(group):
            value = bar_value(r)
            bars = acc_ax.bar(
                x - 0.4 + width * (j + 0.5),
                value if value is not None else 0.0,
                width * 0.9,
                color=colors[r.trainer],
                alpha=1.0 if r.passed else 0.35,
                hatch="" if r.passed else "//",
                edgecolor="black" if r.chosen else "none",
            )
            acc_ax.bar_label(bars, [pct(value)], fontsize=7)
        if group[0].baseline_accuracy is not None:
            acc_ax.hlines(
                group[0].baseline_accuracy, x - 0.45, x + 0.45, colors="black", linestyles="dashed"
            )
    accuracies = [v for v in map(bar_value, rows) if v is not None]
    baselines = [r.baseline_accuracy for r in rows if r.baseline_accuracy is not None]
    low, high = min([*accuracies, *baselines], default=0.5), max(accuracies, default=0.5)
    acc_ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.08))
    acc_ax.set_xticks(ticks, labels, fontsize=8)
    returns = any(r.target == RETURN for r in rows)
    acc_ax.set_ylabel("test accuracy" + (" / hit rate" if returns else ""))
    acc_ax.set_title(
        f"{symbol}: test accuracy per version and trainer (outlined: served)"
        + ("; return versions: hit rate" if returns else "")
    )
    handles = [Patch(color=colors[t], label=t) for t in trainers]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="failed gates"))
    handles.append(acc_ax.plot([], [], "k--", label="naive baseline")[0])
    acc_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)

    served = [next((r for r in g if r.chosen), None) for g in groups]
    latencies = [r.latency_ms if r and r.latency_ms is not None else 0.0 for r in served]
    lat_bars = lat_ax.bar(
        ticks, latencies, width=0.5, color=[colors[r.trainer] if r else "grey" for r in served]
    )
    lat_ax.bar_label(
        lat_bars,
        [f"{r.trainer} {v:.3f} ms" if r else "-" for r, v in zip(served, latencies, strict=True)],
        fontsize=8,
    )
    lat_ax.set_xticks(ticks, labels, fontsize=8)
    lat_ax.set_ylabel("ms")
    lat_ax.set_ylim(0, max(latencies, default=0.0) * 1.25 or 1.0)
    lat_ax.set_title("served model: ONNX single-row latency (median)")
    draw_critical_difference(cd_ax, report.version, report.comparison, colors)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())
