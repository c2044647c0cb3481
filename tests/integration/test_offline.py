# Over 400 lines: one fixture (trained registry from a CSV) shared by every offline tool's tests.
"""Offline tools: CSV -> registry training, compare table and chart, report, manifest.

Real files under tmp_path, real xgboost training, real onnxruntime and SQLite.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from rich.console import Console

from daemon.cli.compare import compare
from daemon.cli.compare_render import render_compare_table, render_comparison
from daemon.cli.csvfile import read_ohlcv_csv
from daemon.cli.manifest import manifest
from daemon.cli.report import report
from daemon.cli.train import train_csv
from daemon.errors import CsvFormatError, NothingToReportError
from daemon.kafka.bars import format_ts
from daemon.settings import Settings, load_settings
from daemon.store.predictions import PredictionStore
from deploy.errors import ArtifactError, RegistryCorrupt
from deploy.registry import Registry
from deploy.sequential import PairedSequentialTest, PromotionTestConfig
from deploy.trial import LogWrite, TrialState
from tests.support.helpers import ledger
from trainers.data import Bars, InvalidSymbolError
from trainers.errors import InsufficientDataError, UnknownTrainerError
from trainers.features import FEATURE_SPEC
from trainers.synthetic import MarketSpec, generate_bars

N_BARS = 2000
DAY = 86_400
GATE_NAMES = ("train_val_gap", "val_test_consistency", "beats_baseline", "onnx_parity")
ALL_GATES = {*GATE_NAMES, "min_test_rows", "beats_baseline_significant", "fold_stability"}


def daily_bars(seed: int, strength: float) -> Bars:
    return generate_bars(
        MarketSpec("AAPL", seed, signal_strength=strength, bar_seconds=DAY), N_BARS
    )


def write_csv(path: Path, bars: Bars, *, header: str = "date,open,high,low,close,volume") -> Path:
    """ISO dates, floats written with repr so they read back bit for bit."""
    lines = [header]
    for i in range(len(bars)):
        values = (bars.open[i], bars.high[i], bars.low[i], bars.close[i], bars.volume[i])
        date = format_ts(int(bars.ts[i]))[:10]
        lines.append(",".join([date, *(repr(float(v)) for v in values)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def settings_for(data_dir: Path) -> Settings:
    return load_settings(data_dir=data_dir, trainers=("xgboost",))


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two runs on one CSV of 2,000 daily bars with a planted signal: champion, then shadow."""
    root = tmp_path_factory.mktemp("offline")
    csv_path = write_csv(root / "aapl.csv", daily_bars(5, 1.0))
    settings = settings_for(root / "data")
    first = train_csv(settings, csv_path, "AAPL")
    second = train_csv(settings, csv_path, "AAPL", ["xgboost"])
    return settings, csv_path, first, second


# --- reading CSV ----------------------------------------------------------------------


def test_csv_reads_back_the_exact_bars(tmp_path):
    """A written CSV reads back bit for bit: same times, prices and volumes."""
    bars = daily_bars(5, 1.0)
    got = read_ohlcv_csv(write_csv(tmp_path / "a.csv", bars))
    for name in ("ts", "open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(got, name), getattr(bars, name), err_msg=name)


def test_csv_rows_in_any_order_headers_any_case_extra_columns_ignored(tmp_path):
    """Shuffled rows are sorted by time; header case and unknown columns do not matter."""
    rows = [
        ("2025-01-03", 3.0, 3.5, 2.5, 3.2, 30.0),
        ("2025-01-01", 1.0, 1.5, 0.5, 1.2, 10.0),
        ("2025-01-02", 2.0, 2.5, 1.5, 2.2, 20.0),
    ]
    text = "Date,Open,HIGH,low,Close,Volume,Adj Close\n"
    text += "".join(",".join(map(str, r)) + ",9.9\n" for r in rows) + "\n"
    path = tmp_path / "b.csv"
    path.write_text(text)
    bars = read_ohlcv_csv(path)
    assert bars.ts.tolist() == [1_735_689_600 + k * DAY for k in range(3)]
    assert bars.open.tolist() == [1.0, 2.0, 3.0]
    assert bars.volume.tolist() == [10.0, 20.0, 30.0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-02", 1_735_776_000),
        ("2025-01-02T00:00:00Z", 1_735_776_000),
        ("2025-01-02T02:00:00+02:00", 1_735_776_000),
        ("1735776000", 1_735_776_000),
    ],
)
def test_csv_time_forms(tmp_path, value, expected):
    """Date only (00:00 UTC), ISO 8601 with a zone and epoch seconds give the same instant."""
    path = tmp_path / "t.csv"
    path.write_text(f"timestamp,open,high,low,close,volume\n{value},1,2,0.5,1.5,0\n")
    assert read_ohlcv_csv(path).ts.tolist() == [expected]


GOOD = "2025-01-01,1,2,0.5,1.5,10"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("date,open,high,low,close\n" + GOOD[:-3] + "\n", ["line 1", "volume"]),
        ("open,high,low,close,volume\n1,2,0.5,1.5,10\n", ["line 1", "time column", "ts"]),
        (
            f"date,open,high,low,close,volume\n{GOOD}\n2025-01-02,1,2,0.5,1.5,10\n"
            "2025-01-03,2,0.5,1,1.5,10\n",
            ["line 4", "high 0.5", "below max(open, close)"],
        ),
        (
            f"date,open,high,low,close,volume\n{GOOD}\n2025-01-02,1,2,0.5,abc,10\n",
            ["line 3", "'close'", "not a number", "'abc'"],
        ),
        (
            f"date,open,high,low,close,volume\n{GOOD}\n2025-01-02,1,2,0.5,1.5,10\n{GOOD}\n",
            ["line 4", "duplicate time 2025-01-01T00:00:00Z", "same as line 2"],
        ),
        (
            f"date,open,high,low,close,volume\n{GOOD}\n2025-01-02,nan,2,0.5,1.5,10\n",
            ["line 3", "'open'", "finite"],
        ),
        (
            f"date,open,high,low,close,volume\n{GOOD}\n2025-01-02,1,2,0.5,1.5,-1\n",
            ["line 3", "'volume'", ">= 0"],
        ),
        (
            f"date,open,high,low,close,volume\n{GOOD}\n2025-01-02,1,2,1.2,1.5,10\n",
            ["line 3", "low 1.2", "above min(open, close)"],
        ),
        (
            f"date,open,high,low,close,volume\n{GOOD}\n2025-01-02,1,1e300,0.5,1.5,10\n",
            ["line 3", "'high' is 1e+300", "outside 1e-18..1e+18"],
        ),
        (f"date,open,high,low,close,volume\n{GOOD},7\n", ["line 2", "7 fields", "header has 6"]),
        (
            "date,open,high,low,close,volume\n2025-01-01T10:00:00,1,2,0.5,1.5,10\n",
            ["line 2", "no timezone"],
        ),
        ("date,open,high,low,close,volume\n01/02/2025,1,2,0.5,1.5,10\n", ["line 2", "01/02/2025"]),
        ("", ["empty file"]),
        ("date,open,high,low,close,volume\n", ["no data rows"]),
    ],
)
def test_bad_csv_names_line_and_problem(tmp_path, text, fragments):
    """Each kind of bad CSV fails with a message naming the file, the line and the column."""
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CsvFormatError) as info:
        read_ohlcv_csv(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --- training into the registry -------------------------------------------------------


def test_first_run_becomes_champion_with_the_csv_data(trained):
    """The first passing run is registered and bootstrapped as champion, by the cli actor."""
    settings, _, first, _ = trained
    registry = Registry(settings.paths.registry)
    assert first.passed and first.slot == "champion" and first.trainer == "xgboost"
    assert first.events == ["champion_bootstrapped"]
    assert registry.slots("AAPL").champion == first.version
    meta = registry.metadata("AAPL", first.version).to_dict()
    assert meta["data"]["n_bars"] == N_BARS
    assert meta["data"]["first_ts"] == 1_735_689_600
    assert meta["data"]["last_ts"] == 1_735_689_600 + (N_BARS - 1) * DAY
    assert first.metrics == meta["metrics"]["test"]
    # First-champion attempt 1 spends alpha / 2, as the daemon does.
    assert meta["gate_config"]["baseline_alpha"] == pytest.approx(0.025)
    boot = ledger(registry, "AAPL")[0]
    assert (boot["event"], boot["actor"], boot["to_version"]) == (
        "champion_bootstrapped",
        "cli",
        first.version,
    )


def test_second_run_lands_in_shadow_and_staging_is_cleaned(trained):
    """A second passing run becomes the shadow; no staging directory is left behind."""
    settings, _, first, second = trained
    registry = Registry(settings.paths.registry)
    assert second.slot == "shadow" and second.events == ["shadow_placed"]
    assert registry.slots("AAPL").champion == first.version
    assert registry.slots("AAPL").shadow == second.version
    assert registry.versions("AAPL") == [first.version, second.version]
    assert list((settings.data_dir / "staging").iterdir()) == []


def test_rejected_run_records_candidate_rejected_and_spends_less_alpha(tmp_path):
    """No-signal bars leave no version, a candidate_rejected ledger line, a smaller next alpha."""
    csv_path = write_csv(tmp_path / "noise.csv", daily_bars(3, 0.0))
    settings = settings_for(tmp_path / "data")
    outcomes = [train_csv(settings, csv_path, "NOISE") for _ in range(2)]
    registry = Registry(settings.paths.registry)
    assert [o.passed for o in outcomes] == [False, False]
    assert outcomes[0].version is None and outcomes[0].slot is None
    assert registry.versions("NOISE") == []
    history = ledger(registry, "NOISE")
    assert [e["event"] for e in history] == ["candidate_rejected", "candidate_rejected"]
    assert history[0]["actor"] == "cli"
    assert history[0]["reason"] == outcomes[0].reason
    cand = history[0]["evidence"]["candidates"][0]
    assert cand["trainer"] == "xgboost" and cand["failed_gate_names"]
    assert set(cand["failed_gate_names"]) <= ALL_GATES

    text = report(settings, "NOISE").read_text()
    assert text.count("candidate_rejected") >= 2
    recommendation = text.split("## Recommendation\n\n")[1].split("\n")[0]
    assert recommendation.startswith("No champion: 2 training run(s)")
    assert "the gate failed most often is " + cand["failed_gate_names"][0] in recommendation
    with pytest.raises(NothingToReportError, match="NOISE: no model versions"):
        compare(settings, "NOISE")


def test_training_window_applies_and_a_failed_run_is_recorded(tmp_path):
    """Only the newest train_window_bars are used; a run that raises leaves training_failed."""
    csv_path = write_csv(tmp_path / "x.csv", daily_bars(5, 1.0))
    settings = load_settings(
        data_dir=tmp_path / "data", trainers=("xgboost",), train_window_bars=60
    )
    with pytest.raises(InsufficientDataError):
        train_csv(settings, csv_path, "AAPL")
    registry = Registry(settings.paths.registry)
    assert registry.versions("AAPL") == []
    (line,) = ledger(registry, "AAPL")
    assert (line["event"], line["actor"]) == ("training_failed", "cli")
    assert line["evidence"]["bar_count"] == 60
    assert line["reason"].startswith("InsufficientDataError: not enough data")
    assert list((settings.data_dir / "staging").iterdir()) == []


@pytest.mark.parametrize("symbol", ["../evil", "a/b", "..", "AAPL/../../x", "aapl"])
def test_path_like_symbol_is_rejected_before_anything_is_written(tmp_path, symbol):
    """A symbol that could escape the registry raises and leaves the file system untouched."""
    csv_path = write_csv(tmp_path / "x.csv", daily_bars(5, 1.0))
    before = files_under(tmp_path)
    with pytest.raises(InvalidSymbolError):
        train_csv(settings_for(tmp_path / "data"), csv_path, symbol)
    assert files_under(tmp_path) == before


def test_unknown_trainer_is_rejected_naming_valid_ones(tmp_path):
    """An unknown trainer name fails before training and lists the valid names."""
    csv_path = write_csv(tmp_path / "x.csv", daily_bars(5, 1.0))
    before = files_under(tmp_path)
    with pytest.raises(UnknownTrainerError, match=r"'xgbost'.*xgboost"):
        train_csv(settings_for(tmp_path / "data"), csv_path, "AAPL", ["xgbost"])
    assert files_under(tmp_path) == before


# --- compare --------------------------------------------------------------------------


def test_compare_rows_table_and_png(trained, tmp_path):
    """One row per version and candidate with metadata's metrics, a latency, and a real PNG;
    the newest version's comparison record, all of it within 80 columns."""
    settings, _, first, second = trained
    registry = Registry(settings.paths.registry)
    png = tmp_path / "c.png"
    result = compare(settings, "AAPL", png)
    rows = result.rows
    assert result.version == second.version
    assert result.comparison == registry.metadata("AAPL", second.version).comparison
    assert result.comparison is not None and result.comparison.candidates == ("xgboost",)
    assert result.comparison.selection.chosen == "xgboost"
    assert [(r.version, r.slot, r.trainer) for r in rows] == [
        (first.version, "champion", "xgboost"),
        (second.version, "shadow", "xgboost"),
    ]
    for r in rows:
        meta = registry.metadata("AAPL", r.version).to_dict()
        cand = meta["candidates"][0]
        assert r.chosen and r.passed and r.error is None
        assert r.test_accuracy == meta["metrics"]["test"]["accuracy"]
        assert r.roc_auc == meta["metrics"]["test"]["roc_auc"]
        train, val = (meta["metrics"][p]["accuracy"] for p in ("train", "val"))
        assert r.train_val_gap == pytest.approx(train - val)
        assert r.fit_seconds == cand["timings"]["fit_seconds"]
        assert r.n_params is not None and r.n_params == cand["n_params"] > 0
        assert r.baseline_accuracy == meta["baseline"]["metrics"]["test"]["accuracy"]
        assert r.latency_ms is not None and 0 < r.latency_ms < 50

    console = Console(width=80, record=True)
    console.print(render_compare_table(rows))
    console.print(render_comparison(result))
    out = console.export_text()
    assert first.version in out and second.version in out and "xgboost *" in out
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    assert "fewer than two scored candidates" in out
    assert rows[0].test_accuracy is not None
    assert f"{100 * rows[0].test_accuracy:.1f}%" in out

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 600 and height >= 600 and len(data) > 10_000


def test_compare_png_defaults_under_data_dir(trained):
    """Without a path the chart goes to <data_dir>/reports/<SYMBOL>-compare.png; ``version``
    picks whose comparison is shown, and an unknown one is refused naming the known ones."""
    settings, _, first, _ = trained
    assert compare(settings, "AAPL", version=first.version).version == first.version
    assert (settings.data_dir / "reports" / "AAPL-compare.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(NothingToReportError, match="no version 'v9'"):
        compare(settings, "AAPL", version="v9")


# --- report ---------------------------------------------------------------------------


def test_report_lists_versions_gates_and_recommendation(trained):
    """The markdown names both versions and slots, each gate's verdict and a recommendation."""
    settings, csv_path, first, second = trained
    path = report(settings, "AAPL")
    assert path == settings.data_dir / "reports" / "AAPL.md"
    text = path.read_text()
    assert text.startswith("# ctd report: AAPL\n")
    assert f"| champion | {first.version} | xgboost |" in text
    assert f"| shadow | {second.version} | xgboost |" in text
    assert f"### {first.version} (champion)" in text and f"### {second.version} (shadow)" in text
    for gate in GATE_NAMES:
        assert f"- gate {gate}: PASS: " in text, gate
    assert "- walk-forward (3 folds): accuracy " in text
    recommendation = text.split("## Recommendation\n\n")[1].split("\n")[0]
    assert recommendation.startswith(f"Keep champion {first.version} (xgboost, test accuracy ")
    assert f"Shadow {second.version}" in recommendation and "no live evidence yet" in recommendation
    assert f"ctd train --csv {csv_path.name}" in text  # ledger lines
    assert "| 2 |" in text and "shadow_placed" in text


def test_report_uses_live_trial_evidence_from_the_prediction_log(trained, tmp_path):
    """With a shadow trial in the prediction log, the recommendation quotes its n and e-value."""
    settings, _, first, second = trained
    trial = PairedSequentialTest(PromotionTestConfig(alpha=0.05, min_samples=100))
    rng = random.Random(0)
    for _ in range(40):
        trial.update(rng.random() < 0.55, rng.random() < 0.6)
    store = PredictionStore(settings.data_dir / "predictions.sqlite")
    try:
        state = TrialState(1, first.version, second.version, trial.to_dict())
        store.commit([LogWrite("AAPL", [], [], state)])
    finally:
        store.close()
    try:
        text = report(settings, "AAPL", tmp_path / "r.md").read_text()
    finally:
        for leftover in settings.data_dir.glob("predictions.sqlite*"):
            leftover.unlink()
    recommendation = text.split("## Recommendation\n\n")[1].split("\n")[0]
    assert "live evidence n=40 bars" in recommendation
    assert f"e-value {trial.evidence.e_value_better:.3g}" in recommendation
    assert "not yet significant" in recommendation


# --- manifest -------------------------------------------------------------------------


def test_manifest_lists_slots_with_checksums_and_loadable_models(trained):
    """The manifest's champion and shadow point at real files with matching sha256 that load."""
    settings, _, first, second = trained
    doc = manifest(settings)
    on_disk = json.loads((settings.data_dir / "manifest.json").read_text())
    assert on_disk == doc
    entry = doc["symbols"]["AAPL"]
    assert entry["champion"]["version"] == first.version
    assert entry["shadow"]["version"] == second.version
    for slot in ("champion", "shadow"):
        item = entry[slot]
        path = settings.paths.registry / item["model_path"]
        assert path == Registry(settings.paths.registry).model_path("AAPL", item["version"])
        assert item["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert item["size_bytes"] == path.stat().st_size
        assert item["trainer"] == "xgboost"
        assert item["feature_spec"]["names"] == list(FEATURE_SPEC.names)
        assert item["test_metrics"]["accuracy"] > 0.5
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        assert inp.name == item["onnx"]["input"]
        assert item["onnx"]["shape"] == [None, len(FEATURE_SPEC.names)]
        row = np.zeros((3, item["onnx"]["n_features"]), dtype=np.float32)
        outputs = session.run([item["onnx"]["output"]], {inp.name: row})
        assert np.asarray(outputs[0]).shape[0] == 3


def test_manifest_custom_path_and_symbol_without_champion(trained, tmp_path):
    """An explicit path is honoured; a symbol with no champion is listed with null slots."""
    settings, *_ = trained
    settings.paths.registry.joinpath("EMPTY").mkdir()
    try:
        doc = manifest(settings, tmp_path / "m.json")
    finally:
        settings.paths.registry.joinpath("EMPTY").rmdir()
    assert json.loads((tmp_path / "m.json").read_text()) == doc
    assert doc["symbols"]["EMPTY"] == {"champion": None, "shadow": None}
    assert doc["manifest_version"] == 1


def test_metadata_of_another_schema_is_refused_naming_the_file(trained, tmp_path):
    """A staging metadata.json that is not a model's metadata is refused on add, naming the
    field; a version whose metadata.json has an unknown schema_version (another release wrote
    it) is reported as corrupt, naming the file, by every reader."""
    settings, _, first, _ = trained
    staging = tmp_path / "staging"
    staging.mkdir()
    registry = Registry(settings.paths.registry)
    (staging / "model.onnx").write_bytes(registry.model_path("AAPL", first.version).read_bytes())
    (staging / "metadata.json").write_text(json.dumps({"trainer": "mystery", "passed": True}))
    with pytest.raises(ArtifactError, match="field symbol: Field required"):
        registry.add_version("OLD", staging)
    assert registry.versions("OLD") == []
    path = settings.paths.registry / "AAPL" / first.version / "metadata.json"
    original = path.read_bytes()
    try:
        path.write_text(json.dumps({**json.loads(original), "schema_version": 99}))
        with pytest.raises(
            RegistryCorrupt, match=rf"{first.version}/metadata.json: schema_version 99"
        ):
            registry.metadata("AAPL", first.version)
        with pytest.raises(RegistryCorrupt, match="schema_version 99"):
            compare(settings, "AAPL")
    finally:
        path.write_bytes(original)
