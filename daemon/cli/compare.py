"""``ctd compare``: every version x candidate of a symbol as a table and a chart, and one
version's statistical comparison of its candidates (``trainers.selection``).

Reads only what the registry holds, so it works with or without a daemon running.
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

LATENCY_CALLS: Final = 200
_LATENCY_WARMUP: Final = 20


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One candidate of one version. ``latency_ms`` only for the version's served model."""

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


@dataclass(frozen=True, slots=True)
class CompareReport:
    """What ``compare`` found: every row, and the comparison record of ``version``
    (None when its metadata predates comparisons)."""

    rows: list[CompareRow]
    version: str
    comparison: ComparisonRecord | None


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
    comparison = None
    for v in versions:
        meta = registry.metadata(symbol, v)
        latency = onnx_latency_ms(registry.model_path(symbol, v))
        rows.extend(version_rows(v, slot_of(slots, v), meta, latency))
        if v == picked:
            comparison = meta.comparison
    report = CompareReport(rows, picked, comparison)
    write_compare_png(report, symbol, out_png or settings.paths.compare_png(symbol))
    return report


def onnx_latency_ms(path: Path, calls: int = LATENCY_CALLS) -> float:
    """Median wall time of one single-row ``predict_proba`` in milliseconds.

    The row is a fixed standard-normal draw of the model's input shape: these
    models do the same work whatever the values, and a fixed row keeps runs comparable.
    """
    scorer = OnnxScorer(path)
    shape = (1, scorer.n_features) if scorer.window == 1 else (1, scorer.window, scorer.n_features)
    row = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(_LATENCY_WARMUP):
        scorer.predict_proba(row)
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        scorer.predict_proba(row)
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
    rows = []
    for cand in meta.candidates:
        m = cand.metrics
        train, val = (None, None) if m is None else (m.train.get("accuracy"), m.val.get("accuracy"))
        test = {} if m is None else m.test
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
                train_val_gap=None if train is None or val is None else train - val,
                fit_seconds=cand.timings.get("fit_seconds"),
                latency_ms=latency_ms if cand is chosen else None,
                n_params=cand.n_params,
                baseline_accuracy=meta.baseline_test_accuracy,
                error=None if cand.error is None else error_text(cand.error),
            )
        )
    return rows


def error_text(error: CandidateError) -> str:
    return f"{error.stage}: {error.type}: {error.message}"


def write_compare_png(report: CompareReport, symbol: str, path: Path) -> None:
    """Grouped bars of test accuracy per version and trainer (naive baseline as a dashed
    line per version), each served model's single-row ONNX latency below, and at the
    bottom the critical-difference chart of ``report.version``'s candidates."""
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
            bars = acc_ax.bar(
                x - 0.4 + width * (j + 0.5),
                r.test_accuracy if r.test_accuracy is not None else 0.0,
                width * 0.9,
                color=colors[r.trainer],
                alpha=1.0 if r.passed else 0.35,
                hatch="" if r.passed else "//",
                edgecolor="black" if r.chosen else "none",
            )
            acc_ax.bar_label(bars, [pct(r.test_accuracy)], fontsize=7)
        if group[0].baseline_accuracy is not None:
            acc_ax.hlines(
                group[0].baseline_accuracy, x - 0.45, x + 0.45, colors="black", linestyles="dashed"
            )
    accuracies = [r.test_accuracy for r in rows if r.test_accuracy is not None]
    baselines = [r.baseline_accuracy for r in rows if r.baseline_accuracy is not None]
    low, high = min([*accuracies, *baselines], default=0.5), max(accuracies, default=0.5)
    acc_ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.08))
    acc_ax.set_xticks(ticks, labels, fontsize=8)
    acc_ax.set_ylabel("test accuracy")
    acc_ax.set_title(f"{symbol}: test accuracy per version and trainer (outlined: served)")
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
