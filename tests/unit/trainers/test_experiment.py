"""Experiment files: TOML and YAML read to the same grid; every bad key is named, never raw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainers.experiment import (
    DEFAULT_METRICS,
    METRIC_NAMES,
    METRICS_BY_TARGET,
    ExperimentFileError,
    load_experiment,
)
from trainers.metrics import classification_metrics
from trainers.regression_metrics import regression_metrics

TOML = """
name = "xgb-depth"
description = "does depth matter?"
tags = { owner = "research" }
trainers = ["xgboost", "random_forest"]
seeds = [0, 1]
metrics = ["accuracy", "roc_auc"]

[data]
csv = "bars.csv"
symbol = "AAPL"
last_bars = 800

[params.xgboost]
preset = "tiny"
max_depth = [2, 4]
learning_rate = 0.3

[splits]
walk_forward_folds = 0

[gates]
min_test_rows = 50
"""

YAML = """
name: xgb-depth
description: does depth matter?
tags: {owner: research}
trainers: [xgboost, random_forest]
seeds: [0, 1]
metrics: [accuracy, roc_auc]
data: {csv: bars.csv, symbol: AAPL, last_bars: 800}
params:
  xgboost:
    preset: tiny
    max_depth: [2, 4]
    learning_rate: 0.3
splits: {walk_forward_folds: 0}
gates: {min_test_rows: 50}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, name: str, text: str) -> list[str]:
    with pytest.raises(ExperimentFileError) as caught:
        load_experiment(write(tmp_path, name, text))
    assert str(tmp_path / name) in str(caught.value)
    return caught.value.problems


def test_toml_and_yaml_files_give_the_same_experiment_and_grid(tmp_path: Path) -> None:
    """The same experiment written in TOML, .yaml or .yml validates to equal objects and grids."""
    toml = load_experiment(write(tmp_path, "e.toml", TOML))
    assert toml == load_experiment(write(tmp_path, "e.yaml", YAML))
    assert toml == load_experiment(write(tmp_path, "e.yml", YAML))
    grid = toml.grid()
    assert [p.label for p in grid] == [
        "xgboost-max_depth=2-s0",
        "xgboost-max_depth=2-s1",
        "xgboost-max_depth=4-s0",
        "xgboost-max_depth=4-s1",
        "random_forest-s0",
        "random_forest-s1",
    ]
    assert [p.index for p in grid] == list(range(6))
    assert dict(grid[2].params) == {"preset": "tiny", "max_depth": 4, "learning_rate": 0.3}
    assert toml.gates.overrides() == {"min_test_rows": 50}
    assert toml.splits.walk_forward_folds == 0


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("e.toml", "colour = 3\n" + TOML, "colour: unknown key; valid keys: name,"),
        (
            "e.toml",
            TOML + "colour = 3\n",
            "gates.colour: unknown key; valid keys: max_train_val_gap",
        ),
        (
            "e.toml",
            TOML.replace("last_bars = 800", "last_bars = 800\nfile = 'x'"),
            "data.file: unknown key; valid keys: symbol, csv, last_bars",
        ),
        ("e.toml", TOML.replace('"random_forest"]', '"forest"]'), "trainers[1]: unknown trainer"),
        ("e.toml", TOML.replace("seeds = [0, 1]", "seeds = [0, 0]"), "seeds[1]: 0 is listed twice"),
        ("e.toml", TOML.replace('"roc_auc"]', '"auc"]'), "metrics[1]: unknown metric 'auc'"),
        ("e.toml", TOML.replace("seeds = [0, 1]", 'seeds = ["0"]'), "seeds[0]: Input should be"),
        (
            "e.toml",
            TOML.replace("max_depth = [2, 4]", "max_depth = []"),
            "params.xgboost.max_depth: an empty list gives no runs",
        ),
        (
            "e.toml",
            TOML.replace("max_depth = [2, 4]", "max_depth = { a = 1 }"),
            "params.xgboost.max_depth: must be a number, string, boolean or a list",
        ),
        (
            "e.toml",
            TOML.replace("[params.xgboost]", "[params.lstm]"),
            "params.lstm: 'lstm' is not in trainers",
        ),
        (
            "e.toml",
            TOML.replace("min_test_rows = 50", "min_test_rows = 0"),
            "gates.min_test_rows: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "e.yaml",
            YAML.replace("symbol: AAPL", "symbol: 'no such'"),
            "data.symbol: invalid symbol 'no such'",
        ),
        ("e.yaml", YAML.replace("name: xgb-depth\n", ""), "name: required key is missing"),
        (
            "e.yaml",
            YAML.replace("walk_forward_folds: 0", "walk_forward_folds: '0'"),
            "splits.walk_forward_folds: Input should be a valid integer (got '0')",
        ),
    ],
)
def test_a_bad_key_is_named(tmp_path: Path, name: str, text: str, expected: str) -> None:
    """Unknown keys, wrong types and bad values name their key as written in the file."""
    found = problems(tmp_path, name, text)
    assert any(p.startswith(expected) for p in found), found


def test_syntax_errors_name_the_line(tmp_path: Path) -> None:
    """A TOML or YAML syntax error is an ExperimentFileError with its line, not a decoder's."""
    toml = problems(tmp_path, "e.toml", 'name = "x"\ntrainers = [xgboost]\n')
    assert toml[0].startswith("TOML syntax error") and "line 2" in toml[0]
    yaml = problems(tmp_path, "e.yaml", "name: x\ntrainers: [xgboost\n  data: 3\n")
    assert yaml[0].startswith("YAML syntax error: line 3")


def test_other_formats_and_top_levels_are_refused(tmp_path: Path) -> None:
    """Another extension names the accepted ones; a file that is not a table says so."""
    assert "use .toml, .yaml, .yml" in problems(tmp_path, "e.json", "{}")[0]
    assert "got list" in problems(tmp_path, "e.yaml", "- a\n- b\n")[0]
    assert "got nothing" in problems(tmp_path, "e.yml", "")[0]
    with pytest.raises(ExperimentFileError, match="cannot read it"):
        load_experiment(tmp_path / "missing.toml")


def test_metric_names_are_the_metrics_training_records() -> None:
    """Every name an experiment may ask for is a key of classification_metrics (n excepted)."""
    y = np.array([0.0, 1.0, 1.0, 0.0])
    keys = set(classification_metrics(y, np.array([0.2, 0.7, 0.4, 0.6]), y - 0.5))
    assert set(METRIC_NAMES) == keys - {"n"}


RETURN_TOML = TOML.replace(
    'metrics = ["accuracy", "roc_auc"]',
    'target = "return"\nhorizon_bars = 5\nmetrics = ["rmse", "r2"]',
)


def test_a_return_experiment_reads_its_target_horizon_and_regression_metrics(
    tmp_path: Path,
) -> None:
    """target and horizon_bars are read; without metrics a return file reports rmse, r2 and
    hit rate, a direction file its old defaults; RMSE ranks returns."""
    (tmp_path / "e.toml").write_text(RETURN_TOML)
    experiment = load_experiment(tmp_path / "e.toml")
    assert (experiment.target, experiment.horizon_bars) == ("return", 5)
    assert experiment.metrics == ["rmse", "r2"] and experiment.primary_metric == "rmse"
    (tmp_path / "d.toml").write_text(RETURN_TOML.replace('metrics = ["rmse", "r2"]', ""))
    assert load_experiment(tmp_path / "d.toml").metrics == list(DEFAULT_METRICS["return"])
    (tmp_path / "o.toml").write_text(TOML.replace('metrics = ["accuracy", "roc_auc"]', ""))
    old = load_experiment(tmp_path / "o.toml")
    assert (old.target, old.horizon_bars, old.metrics) == (
        "direction",
        1,
        ["accuracy", "roc_auc", "log_loss"],
    )


BAD_RETURN_FILES = [
    (RETURN_TOML.replace('"return"', '"price"'), "target: Input should be 'direction' or 'return'"),
    (
        RETURN_TOML.replace("horizon_bars = 5", "horizon_bars = 0"),
        "horizon_bars: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        RETURN_TOML.replace("horizon_bars = 5", "horizon_bars = 2.5"),
        "horizon_bars: Input should be a valid integer",
    ),
    (
        RETURN_TOML.replace("horizon_bars = 5", "horizon_bars = true"),
        "horizon_bars: Input should be a valid integer",
    ),
    (
        RETURN_TOML.replace('"r2"]', '"accuracy"]'),
        "metrics[1]: unknown metric 'accuracy' for target 'return'; valid: rmse",
    ),
    (
        TOML.replace('"roc_auc"]', '"rmse"]'),
        "metrics[1]: unknown metric 'rmse' for target 'direction'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_RETURN_FILES)
def test_a_bad_target_horizon_or_metric_of_the_target_is_named(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Bad target / horizon values and metrics of the other target name their key."""
    found = problems(tmp_path, "e.toml", text)
    assert any(p.startswith(expected) for p in found), found


def test_regression_metric_names_are_the_metrics_return_training_records() -> None:
    """Every name a return experiment may ask for is a key of regression_metrics (n excepted)."""
    y = np.array([0.01, -0.02, 0.005, 0.0])
    keys = set(regression_metrics(y, np.array([0.008, -0.01, -0.001, 0.002])))
    assert set(METRICS_BY_TARGET["return"]) == keys - {"n"}
