"""`ctd promote / reject / rollback / retrain` without a daemon (the wire format of commands
through one: tests/unit/daemon/test_signing.py and test_commands.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.registry import Registry
from tests.support.helpers import ledger
from tests.support.metadata import write_sample_metadata


def _ctd(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTD_")}
    env["CTD_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _version(reg: Registry, base: Path, name: str) -> str:
    staging = base / f"staging-{name}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"model-" + name.encode())
    write_sample_metadata(staging, symbol="BTCUSDT", created_at="2025-01-01T00:00:00Z")
    return reg.add_version("BTCUSDT", staging)


@pytest.fixture
def two_champions(tmp_path: Path) -> tuple[Path, Registry, str, str]:
    """A registry where v2 was promoted over v1 (v1 retired)."""
    data = tmp_path / "data"
    reg = Registry(data / "registry")
    v1, v2 = _version(reg, tmp_path, "1"), _version(reg, tmp_path, "2")
    reg.place("BTCUSDT", v1)
    reg.place("BTCUSDT", v2)
    reg.promote("BTCUSDT", evidence={"n": 500})
    return data, reg, v1, v2


def test_cli_rollback_restores_previous_champion_and_ledger_shows_both_steps(two_champions) -> None:
    """`ctd rollback` without a daemon restores v1; history has the promotion then the rollback."""
    data, reg, v1, v2 = two_champions
    proc = _ctd(data, "rollback", "BTCUSDT", "--reason", "live PnL collapsed", "--actor", "alice")
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert (line["event"], line["from_version"], line["to_version"]) == ("rolled_back", v2, v1)
    assert reg.slots("BTCUSDT").champion == v1
    events = [(e["event"], e.get("actor"), e.get("reason")) for e in ledger(reg, "BTCUSDT")]
    assert events[-2][0] == "promoted"
    assert events[-1] == ("rolled_back", "alice", "live PnL collapsed")


def test_cli_promote_without_shadow_fails_clearly(two_champions) -> None:
    """Promoting when there is no shadow exits 1 and says so; the slots do not change."""
    data, reg, _v1, v2 = two_champions
    proc = _ctd(data, "promote", "BTCUSDT")
    assert proc.returncode == 1
    assert "shadow" in proc.stderr.lower()
    assert reg.slots("BTCUSDT").champion == v2


def test_cli_reject_removes_shadow_with_reason(tmp_path: Path) -> None:
    """`ctd reject` empties the shadow slot and records who and why."""
    data = tmp_path / "data"
    reg = Registry(data / "registry")
    v1, v2 = _version(reg, tmp_path, "1"), _version(reg, tmp_path, "2")
    reg.place("BTCUSDT", v1)
    reg.place("BTCUSDT", v2)
    proc = _ctd(data, "reject", "BTCUSDT", "--reason", "looks leaky", "--actor", "bob")
    assert proc.returncode == 0, proc.stderr
    assert reg.slots("BTCUSDT").shadow is None
    last = ledger(reg, "BTCUSDT")[-1]
    assert (last["event"], last["actor"], last["reason"], last["from_version"]) == (
        "rejected",
        "bob",
        "looks leaky",
        v1,
    )


def test_cli_retrain_needs_a_daemon(tmp_path: Path) -> None:
    """`ctd retrain` with no reachable daemon exits 1 explaining why."""
    proc = _ctd(tmp_path / "data", "retrain", "BTCUSDT")
    assert proc.returncode == 1
    assert "running daemon" in proc.stderr


def test_cli_rejects_path_like_symbol(tmp_path: Path) -> None:
    """A path-like symbol is a usage error and nothing is created."""
    proc = _ctd(tmp_path / "data", "rollback", "../etc")
    assert proc.returncode == 2
    assert "invalid symbol" in proc.stderr
    assert not (tmp_path / "data").exists()


@pytest.fixture
def shadow_on_trial(tmp_path: Path) -> tuple[Path, Registry, str, str]:
    """Champion v1 and shadow v2, with no trial evidence yet."""
    data = tmp_path / "data"
    reg = Registry(data / "registry")
    v1, v2 = _version(reg, tmp_path, "1"), _version(reg, tmp_path, "2")
    reg.place("BTCUSDT", v1)
    reg.place("BTCUSDT", v2)
    return data, reg, v1, v2


def test_cli_promote_on_a_short_trial_needs_force(shadow_on_trial) -> None:
    """Without --force a promote of a shadow with fewer trial bars than the minimum exits 1
    naming --force and changes nothing."""
    data, reg, v1, v2 = shadow_on_trial
    lines = ledger(reg, "BTCUSDT")
    proc = _ctd(data, "promote", "BTCUSDT")
    assert proc.returncode == 1
    assert "--force" in proc.stderr and "promotion_min_samples 100" in proc.stderr
    assert (reg.slots("BTCUSDT").champion, reg.slots("BTCUSDT").shadow) == (v1, v2)
    assert ledger(reg, "BTCUSDT") == lines


def test_cli_promote_force_is_recorded_in_the_ledger(shadow_on_trial) -> None:
    data, reg, _v1, v2 = shadow_on_trial
    proc = _ctd(data, "promote", "BTCUSDT", "--force", "--reason", "vendor change")
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert (line["event"], line["to_version"], line["forced"]) == ("promoted", v2, True)
    assert ledger(reg, "BTCUSDT")[-1]["command_id"] == line["command_id"]
    assert reg.slots("BTCUSDT").champion == v2
