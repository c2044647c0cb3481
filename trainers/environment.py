"""The machine and software a result came from, so a result can be reproduced or explained.

``capture_environment`` records python, platform, CPU, GPU (when torch sees one),
the versions of the ML stack and the git commit of the ctd checkout that ran.
It never touches the network, and a probe that fails (no git, no /proc) leaves
its field None rather than failing the caller.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

ML_STACK: Final = (
    "ctd",
    "numpy",
    "scipy",
    "xgboost",
    "xgboost-cpu",
    "torch",
    "scikit-learn",
    "skl2onnx",
    "onnx",
    "onnxmltools",
    "onnxruntime",
    "pydantic",
    "pyyaml",
    "matplotlib",
    "mlflow",
    "mlflow-skinny",
    "optuna",
)
"""Distributions whose versions can change a result (None when not installed)."""
SOURCE_ROOT: Final = Path(__file__).resolve().parents[1]
"""The directory holding the ``trainers`` package: a git checkout when run from one."""


def capture_environment(*, source: Path = SOURCE_ROOT) -> dict[str, object]:
    """JSON-ready description of this process's environment.

    Keys: ``captured_at``, ``python`` (version, implementation, executable),
    ``platform`` (system, release, machine, platform), ``cpu`` (model, count,
    usable), ``gpu`` (``gpu_info``), ``packages`` (``ML_STACK`` versions) and
    ``git`` (commit, dirty; None outside a checkout of ``source``).
    """
    return {
        "captured_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "platform": platform.platform(),
        },
        "cpu": {
            "model": cpu_model(),
            "count": os.cpu_count(),
            "usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "gpu": gpu_info(),
        "packages": package_versions(ML_STACK),
        "git": git_state(source),
    }


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo on Linux, else what ``platform`` knows)."""
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_info() -> dict[str, object]:
    """``{"probed": bool, "devices": [names], "cuda": version}`` as torch sees them.

    Probed only when torch is already loaded (a torch trainer ran or is about to):
    a run of xgboost alone used no GPU, and importing torch to say so costs seconds.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return {"probed": False, "devices": [], "cuda": None}
    available = bool(torch.cuda.is_available())
    count = int(torch.cuda.device_count()) if available else 0
    return {
        "probed": True,
        "devices": [str(torch.cuda.get_device_name(i)) for i in range(count)],
        "cuda": torch.version.cuda,
    }


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each distribution, None when absent (no import, no network)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(source: Path) -> dict[str, object] | None:
    """``{"commit", "dirty"}`` of the checkout holding ``source``; None when it is not one.

    Dirty means a tracked file differs from the commit (untracked files do not count).
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(source), *args],  # noqa: S607 - git from PATH, as a user runs it
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}
