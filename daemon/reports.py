"""Read-only views of one symbol's registry: a comparison table and chart, a markdown report.

Both read only what the registry (and, for live evidence, the prediction log)
already holds, so they work with or without a daemon running. Metadata is read
defensively: versions written by older or newer trainers may lack a key, and a
missing number shows as ``-`` rather than failing the report.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from rich.table import Table

from daemon.offline import write_atomic
from daemon.predictions import PredictionStore
from daemon.settings import Settings
from daemon.store import StoreError
from deploy.events import utc_now
from deploy.registry import Registry, Slots
from deploy.sequential import Decision, PairedSequentialTest
from trainers.data import validate_symbol
from trainers.onnx_io import OnnxScorer

LATENCY_CALLS: Final = 200
_LATENCY_WARMUP: Final = 20
HISTORY_LINES: Final = 20
DETAILED_VERSIONS: Final = 10


class NothingToReportError(LookupError):
    """The registry holds nothing (of the kind asked for) for a symbol."""

    def __init__(self, symbol: str, problem: str) -> None:
        self.symbol, self.problem = symbol, problem
        super().__init__(f"{symbol}: {problem}")

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0])


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


# --- compare ------------------------------------------------------------------------


def default_png_path(settings: Settings, symbol: str) -> Path:
    return settings.data_dir / "reports" / f"{validate_symbol(symbol)}-compare.png"


def compare(settings: Settings, symbol: str, out_png: Path | None = None) -> list[CompareRow]:
    """Rows for every (version, candidate), oldest version first; also writes the PNG chart.

    Latency is measured now: the median of ``LATENCY_CALLS`` single-row
    ``OnnxScorer`` calls on each version's model.onnx (the model live scoring
    runs). Raises NothingToReportError when the symbol has no version.
    """
    registry = Registry(settings.registry_dir)
    versions = registry.versions(symbol)
    if not versions:
        raise NothingToReportError(symbol, f"no model versions in {registry.root}")
    slots = registry.slots(symbol)
    rows: list[CompareRow] = []
    for version in versions:
        meta = registry.metadata(symbol, version)
        latency = onnx_latency_ms(registry.model_path(symbol, version))
        rows.extend(_version_rows(version, _slot_of(slots, version), meta, latency))
    write_compare_png(rows, symbol, out_png or default_png_path(settings, symbol))
    return rows


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


def _slot_of(slots: Slots, version: str) -> str:
    if version == slots.champion:
        return "champion"
    if version == slots.shadow:
        return "shadow"
    return "retired" if version in slots.retired else "-"


def _version_rows(
    version: str, slot: str, meta: Mapping[str, Any], latency_ms: float | None
) -> list[CompareRow]:
    baseline = _num(_dig(meta, "baseline", "metrics", "test", "accuracy"))
    candidates = [c for c in meta.get("candidates") or [] if isinstance(c, Mapping)]
    if not candidates:  # metadata without a candidates list: the served model only
        candidates = [{**meta, "passed": True}]
    chosen = _chosen_index(meta, candidates)
    rows = []
    for i, cand in enumerate(candidates):
        metrics = cand.get("metrics") or {}
        train, val = (_num(_dig(metrics, p, "accuracy")) for p in ("train", "val"))
        error = cand.get("error")
        n_params = cand.get("n_params")
        rows.append(
            CompareRow(
                version=version,
                slot=slot,
                trainer=str(cand.get("trainer") or "?"),
                chosen=i == chosen,
                passed=bool(cand.get("passed")),
                test_accuracy=_num(_dig(metrics, "test", "accuracy")),
                roc_auc=_num(_dig(metrics, "test", "roc_auc")),
                log_loss=_num(_dig(metrics, "test", "log_loss")),
                train_val_gap=None if train is None or val is None else train - val,
                fit_seconds=_num(_dig(cand, "timings", "fit_seconds")),
                latency_ms=latency_ms if i == chosen else None,
                n_params=n_params if isinstance(n_params, int) else None,
                baseline_accuracy=baseline,
                error=_error_text(error) if isinstance(error, Mapping) else None,
            )
        )
    return rows


def _chosen_index(meta: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> int | None:
    """The candidate whose model is the version's model.onnx: the best-scoring passing one."""
    passing = [
        i
        for i, c in enumerate(candidates)
        if c.get("passed") and c.get("trainer") == meta.get("trainer")
    ]

    def score(i: int) -> float:
        value = _num(candidates[i].get("score"))
        return -math.inf if value is None else value

    return max(passing, key=score, default=None)


def _error_text(error: Mapping[str, Any]) -> str:
    return f"{error.get('stage')}: {error.get('type')}: {error.get('message')}"


def render_compare_table(rows: Sequence[CompareRow]) -> Table:
    """A rich table of ``compare`` rows; ``*`` marks each version's served model."""
    table = Table(title="versions and candidates (* = served model.onnx)")
    for col in (
        "version",
        "slot",
        "trainer",
        "test acc",
        "baseline",
        "ROC AUC",
        "log loss",
        "gap",
        "fit s",
        "latency ms",
        "params",
        "passed",
    ):
        table.add_column(col, justify="left" if col in ("version", "slot", "trainer") else "right")
    for r in rows:
        passed = "yes" if r.passed else ("error" if r.error else "no")
        table.add_row(
            r.version,
            r.slot,
            f"{r.trainer}{' *' if r.chosen else ''}",
            _pct(r.test_accuracy),
            _pct(r.baseline_accuracy),
            _fmt(r.roc_auc, 3),
            _fmt(r.log_loss, 3),
            _fmt(r.train_val_gap, 3),
            _fmt(r.fit_seconds, 2),
            _fmt(r.latency_ms, 3),
            "-" if r.n_params is None else f"{r.n_params:,}",
            passed,
        )
    return table


def write_compare_png(rows: Sequence[CompareRow], symbol: str, path: Path) -> None:
    """Grouped bars of test accuracy per version and trainer (naive baseline as a dashed
    line per version), and each served model's single-row ONNX latency below."""
    # Lazy: matplotlib is only needed here, and importing it costs ~0.5 s.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    versions = list(dict.fromkeys(r.version for r in rows))
    groups = [[r for r in rows if r.version == v] for v in versions]
    trainers = sorted({r.trainer for r in rows})
    colors = {t: f"C{i % 10}" for i, t in enumerate(trainers)}
    ticks = list(range(len(versions)))
    labels = [f"{v[:15]}\n{g[0].slot}" for v, g in zip(versions, groups, strict=True)]
    fig = Figure(figsize=(max(8.0, 1.6 * len(versions) + 3), 8), layout="constrained")
    FigureCanvasAgg(fig)  # Agg: renders without a display
    acc_ax, lat_ax = fig.subplots(2, 1, height_ratios=(2, 1))

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
            acc_ax.bar_label(bars, [_pct(r.test_accuracy)], fontsize=7)
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

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())


# --- markdown report ------------------------------------------------------------------


def default_report_path(settings: Settings, symbol: str) -> Path:
    return settings.data_dir / "reports" / f"{validate_symbol(symbol)}.md"


def report(settings: Settings, symbol: str, out_md: Path | None = None) -> Path:
    """Write the symbol's markdown report and return its path.

    Sections: recommendation, slots, each version's candidates with gate verdicts,
    monitor warnings and walk-forward statistics (newest ``DETAILED_VERSIONS``
    plus the slot holders), rejected runs, and the last ``HISTORY_LINES`` ledger
    lines. Raises NothingToReportError for a symbol with no version and no history.
    """
    registry = Registry(settings.registry_dir)
    versions = registry.versions(symbol)
    history = registry.history(symbol)
    if not versions and not history:
        raise NothingToReportError(symbol, f"no versions and no history in {registry.root}")
    slots = registry.slots(symbol)
    metas = {v: registry.metadata(symbol, v) for v in versions}
    trial, trial_note = _live_trial(settings, symbol, slots)
    lines = [
        f"# ctd report: {symbol}",
        "",
        f"Generated {utc_now()} from `{registry.root}`.",
        "",
        "## Recommendation",
        "",
        recommendation(slots, metas, history, trial),
        "",
        "## Slots",
        "",
        *_slots_table(slots, metas),
        "",
    ]
    if trial_note:
        lines += [trial_note, ""]
    detailed = [
        v
        for v in reversed(versions)
        if v in versions[-DETAILED_VERSIONS:] or v in (slots.champion, slots.shadow)
    ]
    lines += ["## Versions", ""]
    if not detailed:
        lines += ["No version has passed the gates yet.", ""]
    for version in detailed:
        lines += _version_section(version, _slot_of(slots, version), metas[version])
    rejected = [e for e in history if e.get("event") in ("candidate_rejected", "training_failed")]
    if rejected:
        lines += ["## Runs that produced no version", ""]
        lines += _table(
            ("ts", "event", "actor", "reason"),
            [
                (e.get("ts"), e.get("event"), e.get("actor"), e.get("reason"))
                for e in rejected[-HISTORY_LINES:]
            ],
        )
        lines.append("")
    lines += [f"## Recent history (last {HISTORY_LINES} ledger lines)", ""]
    lines += _table(
        ("seq", "ts", "event", "from", "to", "actor", "reason"),
        [
            (
                e.get("seq"),
                e.get("ts"),
                e.get("event"),
                e.get("from_version"),
                e.get("to_version"),
                e.get("actor"),
                e.get("reason"),
            )
            for e in history[-HISTORY_LINES:]
        ],
    )
    target = default_report_path(settings, symbol) if out_md is None else Path(out_md)
    write_atomic(target, ("\n".join(lines) + "\n").encode())
    return target


def _live_trial(
    settings: Settings, symbol: str, slots: Slots
) -> tuple[PairedSequentialTest | None, str | None]:
    """The running shadow trial from the prediction log, if there is one for this shadow."""
    path = settings.data_dir / "predictions.sqlite"
    if slots.shadow is None or not path.is_file():
        return None, None
    try:
        store = PredictionStore(path)
        try:
            state = store.load_state(symbol)
        finally:
            store.close()
        if state is None or state.test is None or state.shadow_version != slots.shadow:
            return None, None
        return PairedSequentialTest.from_dict(state.test), None
    except (StoreError, ValueError) as exc:
        return None, f"Live evidence unavailable: {exc}"


def recommendation(
    slots: Slots,
    metas: Mapping[str, Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    trial: PairedSequentialTest | None,
) -> str:
    """One paragraph of advice derived from the slots, metadata, ledger and live trial."""
    if slots.champion is None:
        return _no_champion_advice(history)
    meta = metas.get(slots.champion, {})
    parts = [
        f"Keep champion {slots.champion} ({meta.get('trainer')}, test accuracy "
        f"{_pct(_test_acc(meta))} vs naive baseline {_pct(_baseline_acc(meta))})."
    ]
    wf = meta.get("walk_forward")
    if isinstance(wf, Mapping) and isinstance(wf.get("accuracy"), Mapping):
        parts.append(
            f"Walk-forward accuracy {_pct(_num(wf['accuracy'].get('mean')))} "
            f"± {_pct(_num(wf['accuracy'].get('std')))} over {wf.get('folds')} folds."
        )
    warnings = [w for w in meta.get("warnings") or [] if isinstance(w, Mapping)]
    if warnings:
        kinds = ", ".join(sorted({str(w.get("kind")) for w in warnings}))
        parts.append(f"Its training raised {len(warnings)} monitor warning(s) ({kinds}).")
    if slots.shadow is None:
        parts.append("No shadow is under trial: the next retrain that passes the gates gets one.")
    else:
        parts.append(_shadow_advice(slots.shadow, metas.get(slots.shadow, {}), meta, trial))
    since = _since_last_placement(history)
    if since:
        parts.append(
            f"Since the last placement, {len(since)} retrain(s) produced no passing candidate"
            f"{_gate_tally(since)}."
        )
    return " ".join(parts)


def _shadow_advice(
    shadow: str,
    meta: Mapping[str, Any],
    champion_meta: Mapping[str, Any],
    trial: PairedSequentialTest | None,
) -> str:
    offline = (
        f"offline test accuracy {_pct(_test_acc(meta))} vs the champion's "
        f"{_pct(_test_acc(champion_meta))}"
    )
    head = f"Shadow {shadow} ({meta.get('trainer')}, {offline})"
    ev = trial.evidence if trial is not None else None
    if trial is None or ev is None or ev.n == 0:
        return (
            f"{head} has no live evidence yet; offline accuracy alone does not justify "
            "promotion: let the daemon score it beside the champion on live bars."
        )
    cfg = trial.config
    live = (
        f"live evidence n={ev.n} bars (shadow {_pct(ev.shadow_accuracy)} vs champion "
        f"{_pct(ev.champion_accuracy)}, e-value {ev.e_value_better:.3g}; promotion needs "
        f">= {1 / cfg.alpha:.3g})"
    )
    if trial.decision is Decision.PROMOTE:
        return f"{head} has {live}: significant, promote it (the daemon does so on its next bar)."
    if trial.decision is Decision.REJECT:
        return f"{head} has {live}: the trial rejected it; it will be removed from the shadow slot."
    return (
        f"{head} has {live}: not yet significant; keep collecting "
        f"(the trial ends by {cfg.max_samples} bars)."
    )


def _no_champion_advice(history: Sequence[Mapping[str, Any]]) -> str:
    rejected = [e for e in history if e.get("event") == "candidate_rejected"]
    failed = [e for e in history if e.get("event") == "training_failed"]
    if not rejected and not failed:
        return "No champion and no training run recorded yet: train one (`ctd train`)."
    text = f"No champion: {len(rejected)} training run(s) produced no candidate passing every gate"
    text += _gate_tally(rejected)
    if failed:
        text += f"; {len(failed)} run(s) failed outright (last: {failed[-1].get('reason')})"
    return (
        text + ". Nothing is deployed; more data (or a stronger signal) is needed before a model "
        "beats the naive baseline reliably."
    )


def _gate_tally(events: Sequence[Mapping[str, Any]]) -> str:
    """'; the gate failed most often is X (k of n candidates)' from rejected-run evidence."""
    counts: Counter[str] = Counter()
    total = 0
    for event in events:
        for cand in (event.get("evidence") or {}).get("candidates") or []:
            total += 1
            names = cand.get("failed_gate_names") or cand.get("failed_gates") or []
            if cand.get("error"):
                names = [*names, f"error in {(cand['error'] or {}).get('stage')}"]
            counts.update({str(n) for n in names})
    if not counts:
        return ""
    gate, k = counts.most_common(1)[0]
    return f"; the gate failed most often is {gate} ({k} of {total} candidates)"


def _since_last_placement(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for event in reversed(history):
        if event.get("event") in ("champion_bootstrapped", "shadow_placed", "promoted"):
            break
        if event.get("event") == "candidate_rejected":
            out.append(event)
    return out[::-1]


def _slots_table(slots: Slots, metas: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    holders = [("champion", slots.champion), ("shadow", slots.shadow)]
    holders += [("retired", v) for v in reversed(slots.retired)]
    for slot, version in holders:
        meta = metas.get(version, {}) if version else {}
        rows.append(
            (
                slot,
                version or "-",
                meta.get("trainer"),
                _pct(_test_acc(meta)),
                _pct(_baseline_acc(meta)),
                meta.get("created_at"),
            )
        )
    return _table(("slot", "version", "trainer", "test acc", "baseline", "created"), rows)


def _version_section(version: str, slot: str, meta: Mapping[str, Any]) -> list[str]:
    data = meta.get("data") or {}
    lines = [
        f"### {version} ({slot})",
        "",
        f"Created {meta.get('created_at')}; {data.get('n_bars')} bars "
        f"({_ts(data.get('first_ts'))} .. {_ts(data.get('last_ts'))}); served trainer "
        f"{meta.get('trainer')}; naive baseline test accuracy {_pct(_baseline_acc(meta))}.",
        f"Pipeline verdict: {meta.get('reason') or '-'}",
        "",
    ]
    rows = _version_rows(version, slot, meta, None)
    lines += _table(
        ("trainer", "passed", "test acc", "ROC AUC", "log loss", "gap", "fit s", "params"),
        [
            (
                f"{r.trainer}{' (served)' if r.chosen else ''}",
                "yes" if r.passed else ("error" if r.error else "no"),
                _pct(r.test_accuracy),
                _fmt(r.roc_auc, 3),
                _fmt(r.log_loss, 3),
                _fmt(r.train_val_gap, 3),
                _fmt(r.fit_seconds, 2),
                "-" if r.n_params is None else f"{r.n_params:,}",
            )
            for r in rows
        ],
    )
    lines.append("")
    for cand in meta.get("candidates") or []:
        if isinstance(cand, Mapping):
            lines += _candidate_details(cand)
    return lines


def _candidate_details(cand: Mapping[str, Any]) -> list[str]:
    lines = [f"**{cand.get('trainer')}**", ""]
    error = cand.get("error")
    if isinstance(error, Mapping):
        lines.append(f"- error: {_error_text(error)}")
    for gate in cand.get("gates") or []:
        if isinstance(gate, Mapping):
            verdict = "PASS" if gate.get("passed") else "FAIL"
            lines.append(f"- gate {gate.get('gate')}: {verdict}: {gate.get('reason')}")
    warnings = [w for w in cand.get("warnings") or [] if isinstance(w, Mapping)]
    for w in warnings:
        lines.append(f"- warning {w.get('kind')} (step {w.get('step')}): {w.get('message')}")
    if not warnings:
        lines.append("- monitor warnings: none")
    wf = cand.get("walk_forward")
    if isinstance(wf, Mapping):
        stats = [
            f"{name} {_fmt(_num(s.get('mean')), 3)} ± {_fmt(_num(s.get('std')), 3)}"
            for name in ("accuracy", "roc_auc", "log_loss")
            if isinstance(s := wf.get(name), Mapping)
        ]
        if stats:
            lines.append(f"- walk-forward ({wf.get('folds')} folds): {', '.join(stats)}")
        elif wf.get("skipped") or wf.get("error"):
            lines.append(f"- walk-forward: {wf.get('skipped') or wf.get('error')}")
    lines.append("")
    return lines


# --- small helpers ----------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        out.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return out


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _dig(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _test_acc(meta: Mapping[str, Any]) -> float | None:
    return _num(_dig(meta, "metrics", "test", "accuracy"))


def _baseline_acc(meta: Mapping[str, Any]) -> float | None:
    return _num(_dig(meta, "baseline", "metrics", "test", "accuracy"))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ts(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    return "-"
