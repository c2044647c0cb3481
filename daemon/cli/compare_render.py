"""``ctd compare``'s terminal output, drawn to fit an 80-column terminal.

Headers are abbreviated and split over two lines, one table per version keeps
the version out of the columns, and every column folds what does not fit
(``overflow="fold"``): a value may wrap, it is never cut to an ellipsis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from daemon.cli.compare import CompareReport, CompareRow
from daemon.cli.fmt import fmt, pct
from trainers.metadata import ComparisonRecord, FriedmanRecord, PairedTestRecord

_TEST_NAMES: Final = {"mcnemar": "McNemar", "diebold_mariano": "DM"}


def _table(columns: Sequence[str], *, left: int = 1) -> Table:
    """A borderless table whose first ``left`` columns are left-aligned, all of them folding.

    Titles and captions are printed as lines of their own (``_titled``): rich wraps a
    title to its table's width, which squeezes a long one into a narrow column.
    """
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < left else "right", overflow="fold")
    return table


def _titled(title: str, table: Table, caption: str | None = None) -> RenderableType:
    parts: list[RenderableType] = [Text(title, style="bold"), table]
    if caption is not None:
        parts.append(Text(caption))
    return Group(*parts)


def render_compare_table(rows: Sequence[CompareRow]) -> RenderableType:
    """One table per version, oldest first; ``*`` marks the served model.onnx."""
    tables: list[RenderableType] = []
    for version in dict.fromkeys(r.version for r in rows):
        group = [r for r in rows if r.version == version]
        title = (
            f"{version} ({group[0].slot}), naive baseline {pct(group[0].baseline_accuracy)}; "
            "* = served model.onnx"
        )
        table = _table(
            ("trainer", "test\nacc", "ROC\nAUC", "log\nloss", "gap", "fit\ns", "lat\nms",
             "params", "pass"),
        )  # fmt: skip
        for r in group:
            table.add_row(
                f"{r.trainer}{' *' if r.chosen else ''}",
                pct(r.test_accuracy),
                fmt(r.roc_auc, 3),
                fmt(r.log_loss, 3),
                fmt(r.train_val_gap, 3),
                fmt(r.fit_seconds, 1),
                fmt(r.latency_ms, 3),
                "-" if r.n_params is None else f"{r.n_params:,}",
                "yes" if r.passed else ("error" if r.error else "no"),
            )
        tables.append(_titled(title, table))
    return Group(*tables)


def render_comparison(report: CompareReport) -> RenderableType:
    """``report.version``'s paired tests, Friedman/Nemenyi and selection, or why there are none."""
    comparison = report.comparison
    if comparison is None:
        return Text(
            f"{report.version}: no statistical comparison (metadata written before "
            "comparisons were recorded)"
        )
    parts: list[RenderableType] = [_paired_table(report.version, comparison)]
    parts.append(_friedman(comparison.friedman, comparison.friedman_skipped))
    parts.append(_selection(comparison))
    return Group(*parts)


def _paired_table(version: str, comparison: ComparisonRecord) -> RenderableType:
    """One row per pair: McNemar's discordant rows and p, Diebold-Mariano's t and p."""
    if not comparison.paired:
        return Text(f"{version}: fewer than two scored candidates, no paired test")
    title = (
        f"{version}: paired tests on the {comparison.test_rows} test rows "
        "(two-sided p; + favours a)"
    )
    table = _table(
        ("a", "b", "McNemar\na/b only", "p", "DM\nt", "p", "sig"),
        left=2,
    )
    by_pair: dict[tuple[str, str], dict[str, PairedTestRecord]] = {}
    for test in comparison.paired:
        by_pair.setdefault((test.a, test.b), {})[test.test] = test
    for (a, b), tests in by_pair.items():
        mc, dm = tests.get("mcnemar"), tests.get("diebold_mariano")
        table.add_row(
            a,
            b,
            "-" if mc is None else f"{mc.a_wins}/{mc.b_wins}",
            "-" if mc is None else _p(mc.p_value),
            "-" if dm is None else f"{dm.statistic:+.2f}",
            "-" if dm is None else _p(dm.p_value),
            _stars(comparison.alpha, mc, dm),
        )
    caption = f"sig: McNemar (M) / Diebold-Mariano log loss (D) p below {comparison.alpha:g}"
    return _titled(title, table, caption)


def _friedman(friedman: FriedmanRecord | None, skipped: str | None) -> RenderableType:
    if friedman is None:
        return Text(f"Friedman across walk-forward blocks: not run ({skipped or 'no blocks'})")
    title = (
        f"Friedman across {len(friedman.block_starts)} walk-forward test blocks "
        f"({friedman.method.replace('_', '-')}): chi2 {friedman.statistic:.2f}, "
        f"p {_p(friedman.p_value)}; Nemenyi CD {friedman.critical_difference:.2f} "
        f"at alpha {friedman.alpha:g}"
    )
    table = _table(("candidate", "mean\nrank", "accuracy per block"))
    for j, name in enumerate(friedman.candidates):
        accuracies = " ".join(pct(row[j]) for row in friedman.accuracy)
        table.add_row(name, f"{friedman.mean_ranks[j]:.2f}", accuracies)
    pairs = ", ".join(f"{a} / {b}" for a, b in friedman.differ)
    caption = f"differ (Nemenyi): {pairs}" if pairs else "no pair differs significantly (Nemenyi)"
    return _titled(title, table, caption)


def _selection(comparison: ComparisonRecord) -> RenderableType:
    s = comparison.selection
    lines = [f"selection rule: {s.rule}"]
    if s.chosen is None:
        lines.append("chosen: none (no candidate passed every gate)")
    elif s.most_accurate in (None, s.chosen):
        lines.append(f"chosen: {s.chosen}, also the most accurate passing candidate on test")
    else:
        tests = "; ".join(f"{_TEST_NAMES.get(t.test, t.test)} p {_p(t.p_value)}" for t in s.tests)
        verdict = "significant" if s.significant else "not significant"
        lines.append(
            f"chosen: {s.chosen}; most accurate on test: {s.most_accurate} "
            f"({tests}: {verdict} at {comparison.alpha:g})"
        )
    return Text("\n".join(lines))


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _stars(alpha: float, mc: PairedTestRecord | None, dm: PairedTestRecord | None) -> str:
    marks = [m for m, t in (("M", mc), ("D", dm)) if t is not None and t.p_value < alpha]
    return "".join(marks) or "-"
