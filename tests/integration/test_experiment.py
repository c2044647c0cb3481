"""`ctd experiment run` end to end, and MLflow tracking of offline training (`ctd train --csv`).

Real xgboost (tiny preset) on ~900 synthetic daily bars, real files under tmp_path,
real MLflow with a local file store (MLflow 3 serves it only with
MLFLOW_ALLOW_FILE_STORE=true); no broker.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from daemon.cli.csvfile import read_ohlcv_csv
from daemon.cli.experiment import run_experiment
from daemon.cli.main import main
from daemon.cli.train import train_csv
from daemon.kafka.bars import format_ts
from daemon.settings import load_settings
from daemon.store.bars import BarStore
from trainers.data import BarRecord, Bars
from trainers.synthetic import MarketSpec, generate_bars

DAY = 86_400
TOML = """
name = "xgb-depth"
description = "does depth matter?"
tags = {{ owner = "research" }}
trainers = ["xgboost", "naive"]
seeds = [0]
metrics = ["accuracy", "roc_auc"]

[data]
csv = "{csv}"
symbol = "AAPL"

[params.xgboost]
preset = "tiny"
max_depth = [2, 3]

[splits]
walk_forward_folds = 0
"""
YAML = """
name: xgb-depth
description: does depth matter?
tags: {{owner: research}}
trainers: [xgboost, naive]
seeds: [0]
metrics: [accuracy, roc_auc]
data: {{csv: "{csv}", symbol: AAPL}}
params:
  xgboost: {{preset: tiny, max_depth: [2, 3]}}
splits: {{walk_forward_folds: 0}}
"""


def write_csv(path: Path, bars: Bars) -> Path:
    """ISO dates, floats written with repr so they read back bit for bit."""
    lines = ["date,open,high,low,close,volume"]
    for i in range(len(bars)):
        values = (bars.open[i], bars.high[i], bars.low[i], bars.close[i], bars.volume[i])
        lines.append(",".join([format_ts(int(bars.ts[i]))[:10], *(repr(float(v)) for v in values)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """900 daily bars with a planted signal (xgboost beats the naive baseline on them)."""
    bars = generate_bars(MarketSpec("AAPL", 3, signal_strength=1.0, bar_seconds=DAY), 900)
    return write_csv(tmp_path_factory.mktemp("bars") / "aapl.csv", bars)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean CTD_ environment with its data directory in tmp_path; returns that directory."""
    for name in [k for k in os.environ if k.startswith("CTD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CTD_LOG_FORMAT", "json")
    return tmp_path / "data"


@pytest.fixture
def mlflow(monkeypatch: pytest.MonkeyPatch) -> Any:
    module = pytest.importorskip(
        "mlflow", reason="the mlflow extra is not installed (pip install 'ctd[mlflow]')"
    )
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return module


@pytest.fixture
def tracking_uri(env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """CTD_MLFLOW_TRACKING_URI set to a file store in tmp_path; returns the URI."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("CTD_MLFLOW_TRACKING_URI", uri)
    return uri


def experiment_file(tmp_path: Path, name: str, template: str, csv: Path) -> Path:
    path = tmp_path / name
    path.write_text(template.format(csv=csv.name), encoding="utf-8")
    (tmp_path / csv.name).write_bytes(csv.read_bytes())  # the file's csv is relative to it
    return path


def test_toml_and_yaml_files_run_the_same_grid(env: Path, tmp_path: Path, csv_file: Path) -> None:
    """The same experiment as TOML and as YAML trains the same runs to the same metrics."""
    settings = load_settings()
    rows = []
    for name, template in (("e.toml", TOML), ("e.yaml", YAML)):
        path = experiment_file(tmp_path, name, template, csv_file)
        outcome = run_experiment(settings, path, tmp_path / "out")
        rows.append([{k: v for k, v in r.items() if k != "fit_seconds"} for r in outcome.rows])
    assert [r["label"] for r in rows[0]][:3] == [
        "xgboost-max_depth=2-s0",
        "xgboost-max_depth=3-s0",
        "naive-s0",
    ]
    assert rows[0] == rows[1]


def test_experiment_run_writes_the_evidence_and_logs_every_candidate(
    tracking_uri: str,
    tmp_path: Path,
    csv_file: Path,
    mlflow: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ctd experiment run` writes configs, environment, one metrics row per candidate of each
    run, per-run predictions, the report and chart, prints a table that fits 80 columns, and
    logs every candidate to the MLflow experiment named after the file's name."""
    uri, env = tracking_uri, tmp_path / "data"
    path = experiment_file(tmp_path, "e.yaml", YAML, csv_file)
    assert main(["experiment", "run", str(path)]) == 0
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines()[:-1])
    folder = Path(out.splitlines()[-1].removeprefix("evidence: "))
    assert folder.parent == env / "experiments"
    assert re.fullmatch(r"xgb-depth-\d{8}T\d{6}Z", folder.name)

    for name in ("e.yaml", "experiment.json", "environment.json", "report.md", "metrics.csv"):
        assert (folder / name).is_file(), name
    assert (folder / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((folder / "experiment.json").read_text())
    assert [p["label"] for p in record["grid"]] == [
        "xgboost-max_depth=2-s0",
        "xgboost-max_depth=3-s0",
        "naive-s0",
    ]
    assert record["data"]["n_bars"] == 900 and record["mlflow"]["runs_logged"] > 0
    environment = json.loads((folder / "environment.json").read_text())
    assert environment["python"]["version"] and environment["cpu"]["count"] >= 1
    assert environment["packages"]["onnxruntime"] is not None
    assert {"probed", "devices"} <= set(environment["gpu"]) and "git" in environment

    rows = json.loads((folder / "metrics.json").read_text())
    candidates = []
    for point in record["grid"]:
        run_dir = folder / point["dir"]
        meta = json.loads((run_dir / "metadata.json").read_text())
        assert (run_dir / "predictions.csv").is_file(), "train_symbol writes predictions.csv"
        candidates += [(point["index"], c["trainer"]) for c in meta["candidates"]]
    assert [(r["run"], r["candidate"]) for r in rows] == candidates
    assert len(rows) >= len(record["grid"])
    assert {"test_accuracy", "test_roc_auc", "val_accuracy"} <= set(rows[0])
    report = (folder / "report.md").read_text()
    assert "## Paired comparisons" in report and "McNemar" in report

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("xgb-depth")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(rows)
    logged = {(r.data.tags["ctd.grid_point"], r.data.tags["ctd.candidate"]): r for r in runs}
    for row in rows:
        run = logged[(row["label"], row["candidate"])]
        assert run.data.tags["ctd.experiment"] == "xgb-depth"
        assert run.data.tags["owner"] == "research"
        assert run.data.params["seed"] == "0"
        assert run.data.metrics["test_accuracy"] == pytest.approx(row["test_accuracy"])
    depth = logged[("xgboost-max_depth=3-s0", "xgboost")]
    assert depth.data.params["param.max_depth"] == "3"
    assert "metadata.json" in {a.path for a in client.list_artifacts(depth.info.run_id)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TOML.replace('symbol = "AAPL"', 'symbol = "AAPL"\nbars = 3'), "data.bars: unknown key"),
        (TOML.replace('"naive"]', '"nave"]'), "trainers[1]: unknown trainer 'nave'"),
        (TOML.replace("seeds = [0]", "seeds = 0"), "seeds: Input should be a valid list"),
        (TOML.replace("seeds = [0]", "seeds = [0"), "TOML syntax error"),
        (TOML.replace("max_depth = [2, 3]", "max_dept = 2"), "params.xgboost: xgboost: unknown"),
        (TOML.replace("max_depth = [2, 3]", "max_depth = [2, -1]"), "params.xgboost: max_depth"),
        (TOML.replace("{csv}", "missing.csv"), "data.csv: no such file"),
    ],
)
def test_a_bad_experiment_file_exits_2_naming_the_key(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    """Unknown keys, bad types, syntax errors, refused trainer params and a missing CSV exit 2
    before training, naming the file and the key, without a traceback."""
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("{{", "{").replace("}}", "}"), encoding="utf-8")
    assert main(["experiment", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err, err
    assert "Traceback" not in err
    assert not (env / "experiments").exists()


def test_stored_bars_are_used_without_a_csv(env: Path, tmp_path: Path, csv_file: Path) -> None:
    """Without data.csv the symbol's bars in the local bar store are trained on; too few bars
    exit 2 and leave no evidence folder behind."""
    bars = read_ohlcv_csv(csv_file)
    store = BarStore(env / "bars.sqlite")
    records = [
        BarRecord("AAPL", int(t), float(o), float(h), float(lo), float(c), float(v))
        for t, o, h, lo, c, v in zip(
            bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume, strict=True
        )
    ]
    store.write(records[:600])
    store.write([r._replace(symbol="TINY") for r in records[:60]])
    store.close()
    path = tmp_path / "stored.yaml"
    path.write_text("name: stored\ntrainers: [naive]\ndata: {symbol: AAPL}\n", encoding="utf-8")
    outcome = run_experiment(load_settings(), path, tmp_path / "out")
    record = json.loads((outcome.folder / "experiment.json").read_text())
    assert record["data"] == {**record["data"], "csv": None, "n_bars": 600}
    assert outcome.rows[0]["candidate"] == "naive"

    path.write_text(path.read_text().replace("symbol: AAPL", "symbol: TINY"))
    assert main(["experiment", "run", str(path), "--out", str(tmp_path / "tiny")]) == 2
    assert list((tmp_path / "tiny").iterdir()) == []


def test_offline_train_is_logged_to_mlflow(env: Path, tmp_path: Path, csv_file: Path, mlflow: Any):
    """`ctd train --csv` with CTD_MLFLOW_TRACKING_URI set logs its run as the daemon does: run
    name symbol/run id, config hash, trainer params, metrics and outcome tags."""
    uri = (tmp_path / "mlruns").as_uri()
    settings = load_settings(
        trainers=("xgboost",),
        trainer_params={"xgboost": {"preset": "tiny"}},
        walk_forward_folds=0,
        mlflow_tracking_uri=uri,
        mlflow_experiment="offline",
    )
    outcome = train_csv(settings, csv_file, "AAPL")
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("offline").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name.startswith("AAPL/") and run.info.status == "FINISHED"
    assert run.data.params["xgboost.preset"] == "tiny"
    assert "xgboost.test_accuracy" in run.data.metrics
    expected = outcome.slot or "rejected"
    assert run.data.tags["ctd.outcome"] == expected
    assert run.data.tags.get("ctd.version") == outcome.version
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "metadata.json" in names
