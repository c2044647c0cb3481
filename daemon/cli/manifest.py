"""``ctd manifest``: the hand-off to whatever serves the models.

Every champion and shadow with its file, checksum and input contract, read
from the registry and from the ONNX files themselves.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final

from daemon.registry import open_registry
from daemon.settings import Settings
from deploy.durable import write_atomic
from deploy.events import utc_now
from deploy.registry import MODEL_FILE, Registry
from trainers.onnx_io import OnnxScorer

MANIFEST_VERSION: Final = 1


def manifest(settings: Settings, out: Path | None = None) -> dict[str, Any]:
    """Write and return the deployment manifest of every symbol's champion and shadow.

    Per slot: version, trainer, ``model_path`` relative to the registry root, the
    sha256 and size of model.onnx, the ONNX input contract read from the file
    itself (name, shape with ``null`` for the dynamic batch axis, window,
    n_features, output), the feature spec, test metrics, data range and
    created_at. Written atomically to ``out`` (default <data_dir>/manifest.json).
    """
    registry = open_registry(settings)
    symbols: dict[str, Any] = {}
    for symbol in registry.symbols():
        slots = registry.slots(symbol)
        symbols[symbol] = {
            "champion": _manifest_entry(registry, symbol, slots.champion),
            "shadow": _manifest_entry(registry, symbol, slots.shadow),
        }
    doc: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "generated_at": utc_now(),
        "registry": registry.url,
        "symbols": symbols,
    }
    target = settings.paths.manifest if out is None else Path(out)
    write_atomic(target, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())
    return doc


def _manifest_entry(registry: Registry, symbol: str, version: str | None) -> dict[str, Any] | None:
    if version is None:
        return None
    path = registry.model_path(symbol, version)
    meta = registry.metadata(symbol, version)
    scorer = OnnxScorer(path)
    shape: list[int | None] = [None, scorer.n_features]
    if scorer.window > 1:
        shape.insert(1, scorer.window)
    data = meta.data
    return {
        "version": version,
        "trainer": meta.trainer,
        "params": meta.params,
        "model_path": f"{symbol}/{version}/{MODEL_FILE}",
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "onnx": {
            "input": scorer.input_name,
            "shape": shape,
            "window": scorer.window,
            "n_features": scorer.n_features,
            "output": scorer.output_name,
        },
        "feature_spec": meta.feature_spec.to_dict(),
        "test_metrics": None if meta.metrics is None else meta.metrics.test,
        "data": data.model_dump(include={"n_bars", "first_ts", "last_ts", "sha256"}),
        "config_sha256": meta.config_sha256,
        "created_at": meta.created_at,
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
