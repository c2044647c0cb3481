"""Environment capture: what produced a result, without network and without failing."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from trainers.environment import ML_STACK, capture_environment, git_state


def test_capture_is_json_with_every_field() -> None:
    """Python, platform, CPU, GPU probe, the ML stack's versions and git state are recorded."""
    env = json.loads(json.dumps(capture_environment()))
    assert env["python"]["version"] == platform.python_version()
    assert env["platform"]["machine"] == platform.machine()
    assert env["cpu"]["count"] >= 1
    assert isinstance(env["cpu"]["model"], str | None)
    assert set(env["gpu"]) == {"probed", "devices", "cuda"}
    assert set(env["packages"]) == set(ML_STACK)
    assert env["packages"]["numpy"] is not None
    assert env["captured_at"].endswith("Z")
    assert "git" in env


GIT = shutil.which("git") or "git"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_state_reports_commit_and_dirty(tmp_path: Path) -> None:
    """A checkout gives its commit and whether a tracked file changed; a plain directory None."""

    def git(*args: str) -> str:
        done = subprocess.run(
            [GIT, "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    assert git_state(tmp_path) is None
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    commit = git("rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("new")
    assert git_state(tmp_path) == {"commit": commit, "dirty": False}
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path) == {"commit": commit, "dirty": True}
