"""``ctd compare``'s output: 80-column tables of candidates and statistics, and the PNG."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from daemon.cli.compare import (
    CompareReport,
    CompareRow,
    bar_value,
    onnx_latency_ms,
    version_rows,
    write_compare_png,
)
from daemon.cli.compare_chart import _groups, draw_critical_difference
from daemon.cli.compare_render import render_compare_table, render_comparison
from tests.support.metadata import sample_metadata
from trainers.candidate import CandidateRun, Predictions
from trainers.metadata import (
    CandidateRecord,
    ComparisonRecord,
    FriedmanRecord,
    ModelMetadata,
    SplitMetrics,
)
from trainers.selection import compare_candidates

VERSION = "20261207T183443123456Z-a1b2"
TRAINERS = ("attention_lstm", "random_forest", "transformer", "xgboost")
LABELS = (np.random.default_rng(0).random(1200) < 0.5).astype(np.float64)
BLOCKS = {300: 300, 600: 300, 900: 300}  # 900: the test split


def comparison(accuracies: tuple[float, ...] = (0.52, 0.56, 0.60, 0.70)) -> ComparisonRecord:
    """Four candidates over three blocks; the chosen (best score) is not the most accurate."""
    runs = []
    for i, (trainer, acc) in enumerate(zip(TRAINERS, accuracies, strict=True)):
        rng = np.random.default_rng(i)
        blocks = {}
        for start, rows in BLOCKS.items():
            up = LABELS[start : start + rows] == 1.0
            blocks[start] = np.where(up == (rng.random(rows) < acc), 0.8, 0.2)
        record = CandidateRecord(trainer=trainer, params={}, passed=True, score=1.0 - acc)
        runs.append(CandidateRun(record, None, None, Predictions(np.zeros(3), blocks)))
    return compare_candidates(runs, LABELS, 900, runs[0])


def row(trainer: str, *, chosen: bool = False, version: str = VERSION) -> CompareRow:
    return CompareRow(
        version=version, slot="champion", trainer=trainer, chosen=chosen, passed=not chosen,
        test_accuracy=0.5234, roc_auc=0.5123, log_loss=0.6931, train_val_gap=-0.0123,
        fit_seconds=1234.5, latency_ms=0.123 if chosen else None, n_params=12_345_678,
        baseline_accuracy=0.5012, error=None if chosen else "fit: ValueError: " + "x" * 90,
    )  # fmt: skip


def text_at(width: int, renderable: object) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.fixture(scope="module")
def report() -> CompareReport:
    rows = [row(t, chosen=t == "xgboost") for t in TRAINERS]
    rows += [row("lstm", version="20261208T000000000000Z-ffff")]
    return CompareReport(rows, VERSION, comparison())


def test_every_table_fits_80_columns_without_an_ellipsis(report):
    """Long trainer and version names, big numbers: no line over 80, nothing cut to '…'."""
    for renderable in (render_compare_table(report.rows), render_comparison(report)):
        out = text_at(80, renderable)
        assert max(len(line) for line in out.splitlines()) <= 80, out
        assert "…" not in out and "..." not in out, out
    for name in TRAINERS:
        assert name in text_at(80, render_compare_table(report.rows))


def test_the_comparison_shows_every_pair_friedman_and_the_selection(report):
    """Each pair's McNemar counts and p-values, the mean ranks, and the selection verdict."""
    out = text_at(80, render_comparison(report))
    record = report.comparison
    assert record is not None and record.friedman is not None
    mc = next(t for t in record.paired if t.test == "mcnemar")
    assert f"{mc.a_wins}/{mc.b_wins}" in out
    assert f"{record.friedman.mean_ranks[0]:.2f}" in out
    assert "Friedman across 3 walk-forward test blocks (exact)" in out
    selection = record.selection
    assert (selection.chosen, selection.most_accurate) == ("attention_lstm", "xgboost")
    assert "most accurate on test: xgboost" in out
    assert ("not significant" in out) != bool(selection.significant)


def test_a_version_without_a_comparison_says_so():
    """Metadata from before comparisons: one line saying why, no table."""
    out = text_at(80, render_comparison(CompareReport([row("xgboost")], VERSION, None)))
    assert "no statistical comparison" in out


def test_the_png_has_a_critical_difference_panel(report, tmp_path):
    """A real PNG, taller than the two-panel chart of before."""
    path = tmp_path / "c.png"
    write_compare_png(report, "AAPL", path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 800 and height >= 1000


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (None, "its metadata predates candidate comparisons"),
        ("skipped", "1 walk-forward test block(s); Friedman needs 2"),
    ],
)
def test_without_friedman_the_panel_says_why(record, why):
    """No ranks to draw: the panel is one line naming the version and the reason."""
    from matplotlib.figure import Figure

    comp = None
    if record == "skipped":
        comp = comparison().model_copy(update={"friedman": None, "friedman_skipped": why})
    ax = Figure().subplots()
    draw_critical_difference(ax, VERSION, comp)
    (text,) = ax.texts
    assert text.get_text() == f"{VERSION}: no critical-difference chart:\n{why}"


def test_cd_groups_join_candidates_no_pair_of_which_differs():
    """Sorted by rank, a run joins while no member differs from the next; nested runs drop."""
    friedman = FriedmanRecord(
        candidates=("a", "b", "c", "d"), block_starts=(0, 1), accuracy=((0.5,) * 4,) * 2,
        mean_ranks=(1.0, 1.5, 3.0, 3.5), statistic=0.0, p_value=0.01, method="exact",
        alpha=0.05, critical_difference=1.6, differ=(("a", "c"), ("a", "d"), ("b", "d")),
    )  # fmt: skip
    assert _groups(friedman, [0, 1, 2, 3]) == [(1.0, 1.5), (1.5, 3.0), (3.0, 3.5)]


# Return targets: a version whose metadata says target return.
H = 4
RETURNS = np.convolve(np.random.default_rng(3).normal(0, 0.01, 1200 + H), np.ones(H), "valid")[
    :1200
]


def return_comparison() -> ComparisonRecord:
    runs = []
    for i, (trainer, noise) in enumerate(zip(TRAINERS, (0.02, 0.015, 0.01, 0.005), strict=True)):
        rng = np.random.default_rng(i)
        blocks = {s: RETURNS[s : s + n] + rng.normal(0, noise, n) for s, n in BLOCKS.items()}
        record = CandidateRecord(trainer=trainer, params={}, passed=True, score=noise)
        runs.append(CandidateRun(record, None, None, Predictions(np.zeros(3), blocks)))
    return compare_candidates(runs, RETURNS, 900, runs[0], target="return", horizon=H)


def return_metadata() -> ModelMetadata:
    def split(rmse: float) -> dict[str, float | int | None]:
        return {"n": 100, "rmse": rmse, "mae": rmse, "mape": 1.0, "r2": 0.12, "pearson": 0.4,
                "spearman": 0.4, "hit_rate": 0.61}  # fmt: skip

    metrics = SplitMetrics(train=split(0.002), val=split(0.0031), test=split(0.00312))
    meta = sample_metadata(trainer="xgboost")
    candidate = meta.candidates[0].model_copy(update={"metrics": metrics})
    baseline = meta.baseline.model_copy(
        update={"trainer": "zero", "metrics": SplitMetrics(train=split(0.004), val=split(0.004),
                                                           test=split(0.00415))}
    )  # fmt: skip
    return meta.model_copy(
        update={"target": "return", "candidates": (candidate,), "metrics": metrics,
                "baseline": baseline, "comparison": return_comparison()}
    )  # fmt: skip


def test_a_return_version_shows_rmse_r2_and_hit_rate() -> None:
    """Its rows carry RMSE, R^2, hit rate and the yardstick's RMSE, the gap is val - train
    RMSE; its table shows them (not accuracy / AUC / log loss) and fits 80 columns beside
    a direction version's table, which is unchanged."""
    (r,) = version_rows("v2", "champion", return_metadata(), 0.05)
    assert (r.target, r.rmse, r.r2, r.hit_rate, r.baseline_rmse) == (
        "return", 0.00312, 0.12, 0.61, 0.00415,
    )  # fmt: skip
    assert r.test_accuracy is None and r.train_val_gap == pytest.approx(0.0011)
    (old,) = version_rows("v1", "retired", sample_metadata(), None)
    assert old.target == "direction" and old.test_accuracy == 0.6
    out = text_at(80, render_compare_table([old, r]))
    assert max(len(line) for line in out.splitlines()) <= 80, out
    v2 = out[out.index("v2 (champion)") :]
    assert "return target, yardstick RMSE 0.00415" in v2
    assert "RMSE" in v2 and "hit" in v2 and "0.00312" in v2 and "61.0%" in v2
    assert "ROC" not in v2 and "ROC" in out[: out.index("v2 (champion)")]


def test_a_return_versions_comparison_shows_its_dm_tests() -> None:
    """Diebold-Mariano on squared error with HAC lag h - 1 per pair, no McNemar, Friedman on
    R^2 per block, and the lowest test RMSE in place of the most accurate."""
    meta = return_metadata()
    assert meta.comparison is not None
    report = CompareReport(
        version_rows(VERSION, "champion", meta, None), VERSION, meta.comparison, "return", H
    )
    out = text_at(80, render_comparison(report))
    assert max(len(line) for line in out.splitlines()) <= 80, out
    flat = " ".join(out.split())
    assert f"Diebold-Mariano on squared error over the 300 test rows, HAC lag {H - 1}" in flat
    assert "McNemar" not in out and "R2 per block" in out
    first = meta.comparison.paired[0]
    assert f"{first.a_wins}/{first.b_wins}" in out and f"{first.statistic:+.2f}" in out
    assert "lowest test RMSE: xgboost" in flat
    assert "squared error" in meta.comparison.selection.rule


def test_the_png_and_latency_take_a_return_version(tmp_path: Path) -> None:
    """A return model's latency is timed through predict (it has no P(up)); the chart
    draws its hit rate beside direction versions' accuracy."""
    model = tmp_path / "r.onnx"
    w = numpy_helper.from_array(np.ones((3, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["prediction"])], "r",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])],
        initializer=[w],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    assert onnx_latency_ms(model, calls=5) > 0.0
    rows = [row("xgboost", chosen=True), *version_rows("v2", "champion", return_metadata(), 0.1)]
    assert bar_value(rows[-1]) == 0.61
    path = tmp_path / "c.png"
    write_compare_png(CompareReport(rows, "v2", return_comparison(), "return", H), "AAPL", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
