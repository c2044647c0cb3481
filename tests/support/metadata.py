"""Small valid ModelMetadata documents for unit tests that need one without training a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from monitors.drift import FeatureReference
from monitors.gates import GateConfig, GateVerdict
from trainers.features import FEATURE_SPEC
from trainers.metadata import (
    BaselineRecord,
    CandidateRecord,
    DataRange,
    ModelMetadata,
    OnnxInfo,
    SplitMetrics,
    SplitRecord,
)


def _metrics(accuracy: float) -> SplitMetrics:
    split = {"n": 100, "accuracy": accuracy, "roc_auc": 0.5, "log_loss": 0.69}
    return SplitMetrics(train=split, val=split, test=split)


def sample_metadata(
    symbol: str = "AAA",
    *,
    passed: bool = True,
    trainer: str = "naive",
    test_accuracy: float = 0.6,
    last_ts: int = 1_735_689_600,
    created_at: str = "2026-01-01T00:00:00Z",
    seed: int = 0,
    window: int = 1,
) -> ModelMetadata:
    """A run of one candidate ``trainer`` that passed (or failed) its one gate."""
    rng = np.random.default_rng(seed)
    reference = FeatureReference.from_matrix(
        rng.standard_normal((200, len(FEATURE_SPEC.names))), FEATURE_SPEC.names
    )
    gate = GateVerdict("beats_baseline", passed, test_accuracy, 0.5, "sample verdict")
    candidate = CandidateRecord(
        trainer=trainer,
        params={},
        window=window,
        metrics=_metrics(test_accuracy),
        gates=(gate,),
        score=test_accuracy,
        passed=passed,
    )
    return ModelMetadata(
        symbol=symbol,
        trainer=trainer if passed else None,
        params={} if passed else None,
        seed=seed,
        data=DataRange(
            n_bars=1000, first_ts=last_ts - 999 * 60, last_ts=last_ts, n_rows=900, sha256="0" * 64
        ),
        feature_spec=FEATURE_SPEC,
        feature_reference=reference,
        split=SplitRecord(
            train=(0, 600),
            val=(650, 750),
            test=(800, 900),
            embargo=50,
            val_fraction=0.15,
            test_fraction=0.15,
        ),
        metrics=_metrics(test_accuracy) if passed else None,
        walk_forward=None,
        baseline=BaselineRecord(trainer="naive", params={}, metrics=_metrics(0.5)),
        candidates=(candidate,),
        gates=(gate,) if passed else (),
        warnings=(),
        onnx=OnnxInfo(
            path="model.onnx",
            input="input",
            output="p_up",
            n_features=len(FEATURE_SPEC.names),
            window=window,
            parity_max_abs_diff=0.0,
        )
        if passed
        else None,
        gate_config=GateConfig(),
        config={"trainers": [trainer]},
        config_sha256="0" * 64,
        timings={},
        code_version={"ctd": "test"},
        created_at=created_at,
        passed=passed,
        reason="sample run" if passed else "no candidate passed the gates: sample",
    )


def write_sample_metadata(directory: Path, **fields: Any) -> ModelMetadata:
    """``sample_metadata(**fields)`` written as ``directory/metadata.json``."""
    meta = sample_metadata(**fields)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metadata.json").write_bytes(meta.to_json())
    return meta
