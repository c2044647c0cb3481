"""The experiment report: the multiplicity adjustment of its paired tests, and a return-target
experiment run for real (xgboost tiny, 700 bars) reported in RMSE with Diebold-Mariano tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.cli.experiment import ExperimentOutcome, run_experiment
from daemon.cli.experiment_report import (
    holm,
    metric_on_test,
    own_predictions,
    paired_tests,
    summary_table,
)
from daemon.cli.main import main
from daemon.kafka.bars import format_ts
from daemon.settings import load_settings
from trainers.comparison import diebold_mariano
from trainers.data import Bars
from trainers.synthetic import planted_return_bars


def test_holm_adjusts_step_down_and_stays_monotone() -> None:
    """Holm multiplies the k-th smallest p by (m - k + 1), never decreasing, capped at 1."""
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


RETURN_TOML = """
name = "xgb-returns"
trainers = ["xgboost"]
seeds = [0]
target = "return"
horizon_bars = 4

[data]
csv = "bars.csv"
symbol = "AAPL"

[params.xgboost]
preset = "tiny"
max_depth = [1, 3]

[splits]
walk_forward_folds = 0

[gates]
min_test_rows = 20
"""


def _write_csv(path: Path, bars: Bars) -> None:
    lines = ["date,open,high,low,close,volume"]
    for i in range(len(bars)):
        values = (bars.open[i], bars.high[i], bars.low[i], bars.close[i], bars.volume[i])
        lines.append(",".join([format_ts(int(bars.ts[i])), *(repr(float(v)) for v in values)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def return_experiment(tmp_path_factory: pytest.TempPathFactory) -> ExperimentOutcome:
    """Two xgboost runs on 700 minute bars whose 4-bar forward return is planted."""
    folder = tmp_path_factory.mktemp("return_experiment")
    _write_csv(folder / "bars.csv", planted_return_bars(700, horizon=4, strength=0.6, seed=4))
    (folder / "e.toml").write_text(RETURN_TOML, encoding="utf-8")
    settings = load_settings(data_dir=folder / "data")
    return run_experiment(settings, folder / "e.toml", folder / "out")


def test_a_return_experiment_trains_the_target_and_reports_regression_metrics(
    return_experiment: ExperimentOutcome,
) -> None:
    """Every run trains return models over 4 bars; metrics.csv, report.md, the chart and
    the summary show RMSE / R^2 / hit rate, not accuracy."""
    outcome = return_experiment
    for run in outcome.runs:
        meta = run.result.metadata
        assert (meta.target, meta.feature_spec.label_horizon) == ("return", 4)
        assert (meta.config["target"], meta.config["horizon_bars"]) == ("return", 4)
    row = outcome.rows[0]
    assert {"test_rmse", "test_r2", "test_hit_rate", "baseline_test_rmse"} <= set(row)
    assert "test_accuracy" not in row and "baseline_test_accuracy" not in row
    own = outcome.runs[0].own()
    assert own is not None and own.metrics is not None
    assert row["test_rmse"] == own.metrics.test["rmse"]
    report = (outcome.folder / "report.md").read_text()
    assert "- target: return over 4 bar(s)" in report
    assert "| rmse | r2 | hit_rate |" in report and "test accuracy" not in report
    assert "![test rmse](rmse.png)" in report
    assert (outcome.folder / "rmse.png").read_bytes()[:4] == b"\x89PNG"
    summary = summary_table(outcome.experiment, outcome.runs)
    assert "testRMSE" in summary.splitlines()[0] and "test acc" not in summary
    assert max(len(line) for line in summary.splitlines()) <= 80


def test_return_runs_are_paired_by_diebold_mariano_on_squared_error(
    return_experiment: ExperimentOutcome,
) -> None:
    """The run with the lowest test RMSE is the reference; the other is tested by DM on
    per-row squared error from predictions.csv with HAC lag horizon - 1; the report says so."""
    outcome = return_experiment
    (paired,) = paired_tests(outcome.runs, target="return", horizon=4)
    rmse = {r.point.index: metric_on_test(r.own(), "rmse") or 0.0 for r in outcome.runs}
    assert paired.best == min(rmse, key=lambda i: rmse[i]) and paired.run != paired.best
    mine = own_predictions(outcome.runs[paired.run])
    best = own_predictions(outcome.runs[paired.best])
    assert mine is not None and best is not None
    np.testing.assert_array_equal(mine[0], best[0])
    y = best[2]
    expected = diebold_mariano((mine[1] - y) ** 2, (best[1] - y) ** 2, 4)
    assert paired.test == expected and paired.test.test == "diebold_mariano"
    assert (
        paired.test.statistic != diebold_mariano((mine[1] - y) ** 2, (best[1] - y) ** 2).statistic
    )
    report = (outcome.folder / "report.md").read_text()
    assert "Diebold-Mariano on per-row squared error (HAC variance over 3 lag(s)" in report
    assert "McNemar" not in report


def test_a_bad_horizon_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ctd experiment run`` refuses horizon_bars 0 before training: exit 2, the key named."""
    (tmp_path / "bars.csv").write_text("date,open,high,low,close,volume\n")
    path = tmp_path / "e.toml"
    path.write_text(RETURN_TOML.replace("horizon_bars = 4", "horizon_bars = 0"))
    monkeypatch.setenv("CTD_DATA_DIR", str(tmp_path / "data"))
    assert main(["experiment", "run", str(path)]) == 2
    assert "horizon_bars: Input should be greater than or equal to 1" in capsys.readouterr().err
