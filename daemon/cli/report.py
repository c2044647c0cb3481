"""``ctd report``: one symbol's markdown report, with a recommendation an operator can act on.

Reads only what the registry (and, for live evidence, the prediction log)
already holds, so it works with or without a daemon running.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from daemon.cli.compare import error_text, slot_of, version_rows
from daemon.cli.fmt import fmt, md_table, pct, ts
from daemon.errors import NothingToReportError, StoreError
from daemon.registry import open_registry
from daemon.settings import Settings
from daemon.store.predictions import PredictionStore
from deploy.durable import write_atomic
from deploy.events import RegistryEvent, utc_now
from deploy.registry import Registry, Slots
from deploy.sequential import Decision
from deploy.trial import TrialDecision, saved_trial
from trainers.metadata import CandidateRecord, ModelMetadata

HISTORY_LINES: Final = 20
DETAILED_VERSIONS: Final = 10
_NO_VERSION: Final = ("candidate_rejected", "training_failed")


def report(settings: Settings, symbol: str, out_md: Path | None = None) -> Path:
    """Write the symbol's markdown report and return its path.

    Sections: recommendation, slots, each version's candidates with gate verdicts,
    monitor warnings and walk-forward statistics (newest ``DETAILED_VERSIONS``
    plus the slot holders), rejected runs, and the last ``HISTORY_LINES`` ledger
    lines. Raises NothingToReportError for a symbol with no version and no history.
    """
    registry = open_registry(settings)
    versions = registry.versions(symbol)
    history = registry.history(symbol)
    if not versions and not history:
        raise NothingToReportError(symbol, f"no versions and no history in {registry.url}")
    slots = registry.slots(symbol)
    metas = {v: registry.metadata(symbol, v) for v in versions}
    trial, trial_note = _live_trial(settings, registry, symbol)
    lines = [
        f"# ctd report: {symbol}",
        "",
        f"Generated {utc_now()} from `{registry.url}`.",
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
        lines += _version_section(version, slot_of(slots, version), metas[version])
    rejected = [e for e in history if e.event in _NO_VERSION]
    if rejected:
        lines += ["## Runs that produced no version", ""]
        lines += md_table(
            ("ts", "event", "actor", "reason"),
            [(e.ts, e.event, e.actor, e.reason) for e in rejected[-HISTORY_LINES:]],
        )
        lines.append("")
    lines += [f"## Recent history (last {HISTORY_LINES} ledger lines)", ""]
    lines += md_table(
        ("seq", "ts", "event", "from", "to", "actor", "reason"),
        [
            (e.seq, e.ts, e.event, e.from_version, e.to_version, e.actor, e.reason)
            for e in history[-HISTORY_LINES:]
        ],
    )
    target = settings.paths.report(symbol) if out_md is None else Path(out_md)
    write_atomic(target, ("\n".join(lines) + "\n").encode())
    return target


def _live_trial(
    settings: Settings, registry: Registry, symbol: str
) -> tuple[TrialDecision | None, str | None]:
    """The running shadow trial as the prediction log saved it, if there is one."""
    path = settings.paths.predictions
    if not path.is_file():
        return None, None
    try:
        log = PredictionStore(path)
        try:
            return saved_trial(log, registry, symbol), None
        finally:
            log.close()
    except (StoreError, ValueError) as exc:
        return None, f"Live evidence unavailable: {exc}"


def recommendation(
    slots: Slots,
    metas: Mapping[str, ModelMetadata],
    history: Sequence[RegistryEvent],
    trial: TrialDecision | None,
) -> str:
    """One paragraph of advice derived from the slots, metadata, ledger and live trial."""
    if slots.champion is None or slots.champion not in metas:
        return _no_champion_advice(history)
    meta = metas[slots.champion]
    parts = [
        f"Keep champion {slots.champion} ({meta.trainer}, test accuracy "
        f"{pct(meta.test_accuracy)} vs {meta.baseline.trainer} baseline "
        f"{pct(meta.baseline_test_accuracy)})."
    ]
    wf = meta.walk_forward
    accuracy = None if wf is None else wf.stats.get("accuracy")
    if wf is not None and accuracy is not None:
        parts.append(
            f"Walk-forward accuracy {pct(accuracy.mean)} ± {pct(accuracy.std)} "
            f"over {wf.folds} folds."
        )
    if meta.warnings:
        kinds = ", ".join(sorted({w.kind for w in meta.warnings}))
        parts.append(f"Its training raised {len(meta.warnings)} monitor warning(s) ({kinds}).")
    if slots.shadow is None or slots.shadow not in metas:
        parts.append("No shadow is under trial: the next retrain that passes the gates gets one.")
    else:
        parts.append(_shadow_advice(slots.shadow, metas[slots.shadow], meta, trial))
    since = _since_last_placement(history)
    if since:
        parts.append(
            f"Since the last placement, {len(since)} retrain(s) produced no passing candidate"
            f"{_gate_tally(since)}."
        )
    return " ".join(parts)


def _shadow_advice(
    shadow: str, meta: ModelMetadata, champion: ModelMetadata, trial: TrialDecision | None
) -> str:
    offline = (
        f"offline test accuracy {pct(meta.test_accuracy)} vs the champion's "
        f"{pct(champion.test_accuracy)}"
    )
    head = f"Shadow {shadow} ({meta.trainer}, {offline})"
    if trial is None or trial.evidence.n == 0:
        return (
            f"{head} has no live evidence yet; offline accuracy alone does not justify "
            "promotion: let the daemon score it beside the champion on live bars."
        )
    ev, cfg = trial.evidence, trial.config
    live = (
        f"live evidence n={ev.n} bars (shadow {pct(ev.shadow_accuracy)} vs champion "
        f"{pct(ev.champion_accuracy)}, e-value {ev.e_value_better:.3g}; promotion needs "
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


def _no_champion_advice(history: Sequence[RegistryEvent]) -> str:
    rejected = [e for e in history if e.event == "candidate_rejected"]
    failed = [e for e in history if e.event == "training_failed"]
    if not rejected and not failed:
        return "No champion and no training run recorded yet: train one (`ctd train`)."
    text = f"No champion: {len(rejected)} training run(s) produced no candidate passing every gate"
    text += _gate_tally(rejected)
    if failed:
        text += f"; {len(failed)} run(s) failed outright (last: {failed[-1].reason})"
    return (
        text + ". Nothing is deployed; more data (or a stronger signal) is needed before a model "
        "beats the naive baseline reliably."
    )


def _gate_tally(events: Sequence[RegistryEvent]) -> str:
    """'; the gate failed most often is X (k of n candidates)' from rejected-run evidence."""
    counts: Counter[str] = Counter()
    total = 0
    for event in events:
        candidates = event.evidence.get("candidates")
        for cand in candidates if isinstance(candidates, list) else []:
            if not isinstance(cand, Mapping):
                continue
            total += 1
            names = list(cand.get("failed_gate_names") or cand.get("failed_gates") or [])
            error = cand.get("error")
            if isinstance(error, Mapping):
                names.append(f"error in {error.get('stage')}")
            counts.update({str(n) for n in names})
    if not counts:
        return ""
    gate, k = counts.most_common(1)[0]
    return f"; the gate failed most often is {gate} ({k} of {total} candidates)"


def _since_last_placement(history: Sequence[RegistryEvent]) -> list[RegistryEvent]:
    out: list[RegistryEvent] = []
    for event in reversed(history):
        if event.event in ("champion_bootstrapped", "shadow_placed", "promoted"):
            break
        if event.event == "candidate_rejected":
            out.append(event)
    return out[::-1]


def _slots_table(slots: Slots, metas: Mapping[str, ModelMetadata]) -> list[str]:
    rows = []
    holders = [("champion", slots.champion), ("shadow", slots.shadow)]
    holders += [("retired", v) for v in reversed(slots.retired)]
    for slot, version in holders:
        meta = metas.get(version) if version else None
        rows.append(
            (
                slot,
                version or "-",
                None if meta is None else meta.trainer,
                pct(None if meta is None else meta.test_accuracy),
                pct(None if meta is None else meta.baseline_test_accuracy),
                None if meta is None else meta.created_at,
            )
        )
    return md_table(("slot", "version", "trainer", "test acc", "baseline", "created"), rows)


def _version_section(version: str, slot: str, meta: ModelMetadata) -> list[str]:
    data = meta.data
    lines = [
        f"### {version} ({slot})",
        "",
        f"Created {meta.created_at}; {data.n_bars} bars "
        f"({ts(data.first_ts)} .. {ts(data.last_ts)}); served trainer "
        f"{meta.trainer}; {meta.baseline.trainer} baseline test accuracy "
        f"{pct(meta.baseline_test_accuracy)}.",
        f"Pipeline verdict: {meta.reason or '-'}",
        "",
    ]
    rows = version_rows(version, slot, meta, None)
    lines += md_table(
        ("trainer", "passed", "test acc", "ROC AUC", "log loss", "gap", "fit s", "params"),
        [
            (
                f"{r.trainer}{' (served)' if r.chosen else ''}",
                "yes" if r.passed else ("error" if r.error else "no"),
                pct(r.test_accuracy),
                fmt(r.roc_auc, 3),
                fmt(r.log_loss, 3),
                fmt(r.train_val_gap, 3),
                fmt(r.fit_seconds, 2),
                "-" if r.n_params is None else f"{r.n_params:,}",
            )
            for r in rows
        ],
    )
    lines.append("")
    for cand in meta.candidates:
        lines += _candidate_details(cand)
    return lines


def _candidate_details(cand: CandidateRecord) -> list[str]:
    lines = [f"**{cand.trainer}**", ""]
    if cand.error is not None:
        lines.append(f"- error: {error_text(cand.error)}")
    for gate in cand.gates:
        verdict = "PASS" if gate.passed else "FAIL"
        lines.append(f"- gate {gate.gate}: {verdict}: {gate.reason}")
    for w in cand.warnings:
        lines.append(f"- warning {w.kind} (step {w.step}): {w.message}")
    if not cand.warnings:
        lines.append("- monitor warnings: none")
    wf = cand.walk_forward
    if wf is not None:
        stats = [
            f"{name} {fmt(s.mean, 3)} ± {fmt(s.std, 3)}"
            for name in ("accuracy", "roc_auc", "log_loss")
            if (s := wf.stats.get(name)) is not None
        ]
        if stats:
            lines.append(f"- walk-forward ({wf.folds} folds): {', '.join(stats)}")
        elif wf.skipped or wf.error:
            lines.append(f"- walk-forward: {wf.skipped or wf.error}")
    lines.append("")
    return lines
