"""``ctd compare``'s terminal output, drawn to fit an 80-column terminal.

Headers are abbreviated and split over two lines, one table per version keeps
the version out of the columns, and every column folds what does not fit
(``overflow="fold"``): a value may wrap, it is never cut to an ellipsis. A return
version (``CompareRow.target``) shows RMSE, R^2 and hit rate where a direction version
shows accuracy, ROC AUC and log loss, and its paired tests are Diebold-Mariano on squared
error (no McNemar: a predicted return is not right or wrong).
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
from trainers.targets import RETURN

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
        if group[0].target == RETURN:
            tables.append(_return_table(version, group))
            continue
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


def _return_table(version: str, group: Sequence[CompareRow]) -> RenderableType:
    """A return version's candidates: RMSE, R^2, hit rate; gap is val - train RMSE."""
    title = (
        f"{version} ({group[0].slot}), return target, yardstick RMSE "
        f"{_sig(group[0].baseline_rmse)}; * = served model.onnx"
    )
    table = _table(
        ("trainer", "test\nRMSE", "R2", "hit\nrate", "gap", "fit\ns", "lat\nms", "params",
         "pass"),
    )  # fmt: skip
    for r in group:
        table.add_row(
            f"{r.trainer}{' *' if r.chosen else ''}",
            _sig(r.rmse),
            fmt(r.r2, 3),
            pct(r.hit_rate),
            _sig(r.train_val_gap),
            fmt(r.fit_seconds, 1),
            fmt(r.latency_ms, 3),
            "-" if r.n_params is None else f"{r.n_params:,}",
            "yes" if r.passed else ("error" if r.error else "no"),
        )
    return _titled(title, table, "gap: val RMSE - train RMSE (positive: overfitting)")


def render_comparison(report: CompareReport) -> RenderableType:
    """``report.version``'s paired tests, Friedman/Nemenyi and selection, or why there are none."""
    comparison = report.comparison
    if comparison is None:
        return Text(
            f"{report.version}: no statistical comparison (metadata written before "
            "comparisons were recorded)"
        )
    if report.target == RETURN:
        return Group(
            _return_paired_table(report.version, comparison, report.horizon),
            _friedman(comparison.friedman, comparison.friedman_skipped, returns=True),
            _selection(comparison, returns=True),
        )
    parts: list[RenderableType] = [_paired_table(report.version, comparison)]
    parts.append(_friedman(comparison.friedman, comparison.friedman_skipped))
    parts.append(_selection(comparison))
    return Group(*parts)


def _return_paired_table(
    version: str, comparison: ComparisonRecord, horizon: int
) -> RenderableType:
    """One row per pair: rows with the lower squared error, the MSE difference, DM's t, p."""
    tests = [t for t in comparison.paired if t.test == "diebold_mariano"]
    if not tests:
        return Text(f"{version}: fewer than two scored candidates, no paired test")
    title = (
        f"{version}: Diebold-Mariano on squared error over the {comparison.test_rows} test "
        f"rows, HAC lag {horizon - 1} (two-sided p; + favours a)"
    )
    table = _table(("a", "b", "lower err\na/b", "MSE b-a", "DM\nt", "p", "sig"), left=2)
    for t in tests:
        table.add_row(
            t.a,
            t.b,
            f"{t.a_wins}/{t.b_wins}",
            _sig(t.effect),
            f"{t.statistic:+.2f}",
            _p(t.p_value),
            "D" if t.p_value < comparison.alpha else "-",
        )
    return _titled(title, table, f"sig: Diebold-Mariano (D) p below {comparison.alpha:g}")


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


def _friedman(
    friedman: FriedmanRecord | None, skipped: str | None, *, returns: bool = False
) -> RenderableType:
    """The Friedman table; its per-block score is accuracy, or R^2 for a return version."""
    if friedman is None:
        return Text(f"Friedman across walk-forward blocks: not run ({skipped or 'no blocks'})")
    title = (
        f"Friedman across {len(friedman.block_starts)} walk-forward test blocks "
        f"({friedman.method.replace('_', '-')}): chi2 {friedman.statistic:.2f}, "
        f"p {_p(friedman.p_value)}; Nemenyi CD {friedman.critical_difference:.2f} "
        f"at alpha {friedman.alpha:g}"
    )
    table = _table(("candidate", "mean\nrank", "R2 per block" if returns else "accuracy per block"))
    for j, name in enumerate(friedman.candidates):
        shown = (fmt(row[j], 3) if returns else pct(row[j]) for row in friedman.accuracy)
        accuracies = " ".join(shown)
        table.add_row(name, f"{friedman.mean_ranks[j]:.2f}", accuracies)
    pairs = ", ".join(f"{a} / {b}" for a, b in friedman.differ)
    caption = f"differ (Nemenyi): {pairs}" if pairs else "no pair differs significantly (Nemenyi)"
    return _titled(title, table, caption)


def _selection(comparison: ComparisonRecord, *, returns: bool = False) -> RenderableType:
    """The rule and the chosen candidate against the most accurate one (a return version's
    most accurate has the lowest test RMSE)."""
    s = comparison.selection
    best = "lowest test RMSE" if returns else "most accurate on test"
    lines = [f"selection rule: {s.rule}"]
    if s.chosen is None:
        lines.append("chosen: none (no candidate passed every gate)")
    elif s.most_accurate in (None, s.chosen):
        also = (
            "the passing candidate with the lowest test RMSE"
            if returns
            else ("the most accurate passing candidate on test")
        )
        lines.append(f"chosen: {s.chosen}, also {also}")
    else:
        tests = "; ".join(f"{_TEST_NAMES.get(t.test, t.test)} p {_p(t.p_value)}" for t in s.tests)
        verdict = "significant" if s.significant else "not significant"
        lines.append(
            f"chosen: {s.chosen}; {best}: {s.most_accurate} "
            f"({tests}: {verdict} at {comparison.alpha:g})"
        )
    return Text("\n".join(lines))


def _sig(value: float | None) -> str:
    """Three significant digits: returns and their errors are ~1e-3."""
    return "-" if value is None else f"{value:.3g}"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _stars(alpha: float, mc: PairedTestRecord | None, dm: PairedTestRecord | None) -> str:
    marks = [m for m, t in (("M", mc), ("D", dm)) if t is not None and t.p_value < alpha]
    return "".join(marks) or "-"
