"""Reproducibility: one seeding call, and the hashes and versions that pin a run.

Same data + same config + same package versions must give the same metrics.
``seed_everything`` covers the global generators (python, numpy, torch);
trainers also seed their own generators from the same seed.

This module never imports torch: the pipeline imports it, and a job training
only xgboost should not pay for loading torch. Torch is seeded when it is
already loaded, which the torch trainers guarantee by importing it first.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import random
import sys
from typing import Any

import numpy as np

from trainers.data import Bars

# cuBLAS needs a fixed workspace to be deterministic (CUDA docs); CPU runs ignore it.
_CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and, if loaded, torch.

    Torch is also switched to deterministic algorithms. On a machine with CUDA
    an op without a deterministic CUDA kernel warns instead of failing the
    run; on CPU every op the trainers use is deterministic.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # legacy global generator: some libraries still draw from it
    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.manual_seed(seed)
    cuda = bool(torch.cuda.is_available())
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=cuda)


def bars_sha256(bars: Bars) -> str:
    """Hash of every bar column in a fixed little-endian layout: same bars, same hash anywhere."""
    digest = hashlib.sha256()
    for column in (bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume):
        digest.update(np.ascontiguousarray(column).astype(column.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def config_sha256(config: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a JSON-ready config."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _version(module: str, *dists: str) -> str | None:
    loaded = sys.modules.get(module)
    if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
        return str(loaded.__version__)
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def package_versions() -> dict[str, str | None]:
    """Versions of the code that produced a model; torch and scikit-learn only if loaded."""
    versions = {
        "ctd": _version("ctd", "ctd"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "xgboost": _version("xgboost", "xgboost", "xgboost-cpu"),
        "onnxruntime": _version("onnxruntime", "onnxruntime"),
        "onnx": _version("onnx", "onnx"),
    }
    if "torch" in sys.modules:  # never import torch just to name its version
        versions["torch"] = _version("torch")
    if "skl2onnx" in sys.modules:  # a forest was exported: the pair that defines it
        versions["scikit-learn"] = _version("sklearn", "scikit-learn")
        versions["skl2onnx"] = _version("skl2onnx", "skl2onnx")
    return versions
