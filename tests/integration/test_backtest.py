"""``ctd backtest`` on synthetic markets: it tells a lifecycle that adapts from one that
does not, reports no edge where there is none, and never lets a later bar into an earlier
prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.backtest.replay import Replay
from daemon.kafka.bars import format_ts
from daemon.settings import load_settings
from trainers.data import Bars
from trainers.synthetic import MarketGenerator, MarketSpec, planted_return_bars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOUR = 3600
# Hourly bars: a 900 s cooldown would let an alarming monitor retrain on every bar.
ENV = {
    "CTD_TRAINERS": "xgboost",
    "CTD_TRAIN_WINDOW_BARS": "1000",
    "CTD_RETRAIN_COOLDOWN_SECONDS": str(250 * HOUR),
}


def _market(symbol: str, seed: int, parts: list[tuple[int, float]]) -> Bars:
    """Hourly bars; each part (n, signal strength) continues the same price path."""
    gen = MarketGenerator(MarketSpec(symbol, seed, signal_strength=parts[0][1], bar_seconds=HOUR))
    chunks = []
    for n, strength in parts:
        gen.set_regime(signal_strength=strength)
        chunks.append(gen.next_bars(n))
    fields = ("ts", "open", "high", "low", "close", "volume")
    return Bars(*(np.concatenate([getattr(c, f) for c in chunks]) for f in fields))


def _csv(path: Path, bars: Bars) -> Path:
    lines = ["ts,open,high,low,close,volume"]
    for i in range(len(bars)):
        values = (bars.open[i], bars.high[i], bars.low[i], bars.close[i], bars.volume[i])
        lines.append(",".join([format_ts(int(bars.ts[i])), *(repr(float(v)) for v in values)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _backtest(tmp: Path, symbol: str, bars: Bars, **env: str) -> dict[str, Any]:
    out = tmp / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "backtest", "--symbol", symbol,
         "--csv", str(_csv(tmp / f"{symbol}.csv", bars)), "--out", str(out)],
        env={**os.environ, "CTD_DATA_DIR": str(tmp / "data"), **ENV, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "backtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "backtest.md").read_text().startswith(f"# Backtest of {symbol}")
    report: dict[str, Any] = json.loads((out / "backtest.json").read_text())
    print(proc.stdout)  # the summary, for the log of the run
    return report


def test_a_signal_that_flips_halfway_is_recovered_by_the_lifecycle_not_by_a_frozen_model(
    tmp_path: Path,
) -> None:
    """5,000 hourly bars, the planted signal reversed at bar 2,500: the frozen first champion
    turns anti-predictive; ctd's lifecycle retrains, promotes and serves a model of the new
    regime, so its accuracy over the last half is far above the frozen model's."""
    report = _backtest(tmp_path, "FLIP", _market("FLIP", 3, [(2500, 1.5), (2500, -1.5)]))
    q = report["quarters"]
    ctd_late, frozen_late = np.mean(q["ctd"][2:]), np.mean(q["frozen"][2:])
    assert q["ctd"][3] > 0.6, q
    assert frozen_late < 0.45, q
    assert ctd_late > frozen_late + 0.2, q
    promotions = [e for e in report["timeline"] if e["event"] == "promoted"]
    assert any(e["bar"] > 2500 for e in promotions), report["timeline"]
    assert report["scores"]["ctd"]["accuracy"] > report["scores"]["frozen"]["accuracy"]
    assert report["seconds"] < 300


def test_on_a_random_walk_no_edge_is_reported(tmp_path: Path) -> None:
    """No signal: ctd either never gets a champion (it serves nothing: flat) or its
    accuracy interval covers 0.5 and its Sharpe interval covers 0."""
    report = _backtest(tmp_path, "WALK", _market("WALK", 4, [(3000, 0.0)]))
    ctd = report["scores"]["ctd"]
    if ctd["accuracy_ci"] is not None:
        assert ctd["accuracy_ci"]["low"] <= 0.5 <= ctd["accuracy_ci"]["high"], ctd
    assert ctd["sharpe_ci"] is not None, ctd
    assert ctd["sharpe_ci"]["low"] <= 0.0 <= ctd["sharpe_ci"]["high"], ctd


def test_no_later_bar_changes_an_earlier_prediction(tmp_path: Path) -> None:
    """Two histories equal up to bar 1,400 and different after it: every policy served
    exactly the same P(up) on every bar up to 1,400 in both replays."""
    cut = 1400
    base = _market("LEAK", 5, [(cut + 1, 1.5), (600, 1.5)])
    other = _market("LEAK", 5, [(cut + 1, 1.5), (600, -1.5)])  # same until the cut
    assert np.array_equal(base.close[: cut + 1], other.close[: cut + 1])
    assert not np.array_equal(base.close[cut + 1 :], other.close[cut + 1 :])
    settings = load_settings(
        data_dir=tmp_path / "data",
        trainers=("xgboost",),
        min_bars=500,
        retrain_every_bars=200,
        train_window_bars=1000,
        retrain_cooldown_seconds=200 * HOUR,
    )
    first = Replay(settings, "LEAK", base, tmp_path / "a").run()
    second = Replay(settings, "LEAK", other, tmp_path / "b").run()
    for name, served in first.served.items():
        a, b = served[: cut + 1], second.served[name][: cut + 1]
        assert np.array_equal(a, b, equal_nan=True), name
        assert not np.isnan(a).all(), f"{name} served nothing before the cut"


def test_a_return_target_lifecycle_serves_predicted_returns_with_an_edge(tmp_path: Path) -> None:
    """CTD_TARGET=return, 5-bar horizon, on a market whose 5-bar return depends on the
    features: the lifecycle gets a return champion once its windows are long enough for the
    Diebold-Mariano gate, its signal (the sign of the predicted return) calls the next bar
    better than a coin (Wilson interval above 0.5), and every policy is scored around 0."""
    bars = planted_return_bars(3500, horizon=5, strength=0.5, seed=6, bar_seconds=HOUR)
    env = {
        "CTD_TARGET": "return",
        "CTD_HORIZON_BARS": "5",
        "CTD_MIN_BARS": "2000",
        "CTD_RETRAIN_EVERY_BARS": "500",
        "CTD_TRAIN_WINDOW_BARS": "3000",
    }
    report = _backtest(tmp_path, "RETS", bars, **env)
    assert report["costs"]["centre"] == 0.0
    assert any(e["event"] == "champion_bootstrapped" for e in report["timeline"])
    ctd = report["scores"]["ctd"]
    assert ctd["predicted_bars"] >= 400, ctd
    assert ctd["accuracy_ci"]["low"] > 0.5, ctd
    assert report["scores"]["naive"]["predicted_bars"] > 0
