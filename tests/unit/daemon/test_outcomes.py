"""The outcome recorder on an in-memory registry: what each kind of finished run leaves."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from daemon.live.path import SavedTrialPlacer
from daemon.metrics import Metrics
from daemon.training.outcomes import RunRecorder
from daemon.training.scheduler import JobOutcome, TrainJob
from deploy.memory_log import MemoryPredictionLog
from deploy.registry import MemoryStorage, Registry
from tests.support.metadata import write_sample_metadata


def _recorder(registry: Registry) -> tuple[RunRecorder, Metrics, list[tuple[str, int]]]:
    metrics = Metrics(CollectorRegistry(), version="test")
    trained: list[tuple[str, int]] = []
    recorder = RunRecorder(
        registry=registry,
        placer=SavedTrialPlacer(registry, MemoryPredictionLog(), actor="daemon"),
        metrics=metrics,
        on_trained=lambda symbol, n: trained.append((symbol, n)),
    )
    return recorder, metrics, trained


def _outcome(tmp_path: Path, name: str, *, passed: bool = True, ok: bool = True) -> JobOutcome:
    staging = tmp_path / name
    meta = write_sample_metadata(staging, symbol="AAA", passed=passed)
    if passed:
        (staging / "model.onnx").write_bytes(b"model")
    job = TrainJob("AAA", name, 600, "new_bars", time.time())
    if not ok:
        return JobOutcome(job, False, staging, 1.0, error="worker process died (exit code 3)")
    return JobOutcome(job, True, staging, 2.5, metadata=meta)


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_passing_run_becomes_champion_then_the_next_shadow(tmp_path: Path) -> None:
    registry = Registry(MemoryStorage())
    recorder, metrics, trained = _recorder(registry)
    first = recorder.record(_outcome(tmp_path, "r1"))
    second = recorder.record(_outcome(tmp_path, "r2"))
    assert (first.result, second.result) == ("champion", "shadow")
    assert registry.slots("AAA").champion == first.version
    assert registry.slots("AAA").shadow == second.version
    assert [e.event for e in second.events] == ["shadow_placed"]
    assert second.events[0].reason == "run r2: new_bars"
    assert trained == [("AAA", 600), ("AAA", 600)]
    assert _sample(metrics, "ctd_training_runs_total", symbol="AAA", outcome="shadow") == 1
    assert _sample(metrics, "ctd_registry_versions_total", symbol="AAA") == 2
    assert (
        _sample(
            metrics,
            "ctd_gate_verdicts_total",
            trainer="naive",
            gate="beats_baseline",
            outcome="pass",
        )
        == 2
    )


def test_a_rejected_run_leaves_a_ledger_line_and_no_version(tmp_path: Path) -> None:
    registry = Registry(MemoryStorage())
    recorder, _metrics, trained = _recorder(registry)
    recorded = recorder.record(_outcome(tmp_path, "r1", passed=False))
    assert recorded.result == "rejected" and recorded.version is None
    (line,) = registry.history("AAA")
    assert line.event == "candidate_rejected" and line.seq == 1
    assert line.evidence["candidates"][0]["failed_gate_names"] == ["beats_baseline"]
    assert registry.versions("AAA") == [] and trained == [("AAA", 600)]


def test_a_failed_run_is_recorded_with_its_error_and_counts_no_bars(tmp_path: Path) -> None:
    registry = Registry(MemoryStorage())
    recorder, metrics, trained = _recorder(registry)
    assert recorder.record(_outcome(tmp_path, "r1", ok=False)).result == "failed"
    (line,) = registry.history("AAA")
    assert (line.event, line.reason) == ("training_failed", "worker process died (exit code 3)")
    assert trained == []
    assert _sample(metrics, "ctd_training_runs_total", symbol="AAA", outcome="failed") == 1


def test_replacing_a_shadow_hands_over_the_saved_trial_evidence(tmp_path: Path) -> None:
    """Without a running scorer the superseded shadow's evidence comes from the prediction log."""
    from deploy.sequential import PairedSequentialTest, PromotionTestConfig
    from deploy.trial import LogWrite, TrialState

    registry = Registry(MemoryStorage())
    log = MemoryPredictionLog()
    recorder = RunRecorder(
        registry=registry,
        placer=SavedTrialPlacer(registry, log, actor="cli"),
        metrics=Metrics(CollectorRegistry(), version="test"),
        actor="cli",
    )
    champion = recorder.record(_outcome(tmp_path, "r1")).version
    shadow = recorder.record(_outcome(tmp_path, "r2")).version
    test = PairedSequentialTest(PromotionTestConfig())
    for i in range(30):
        test.update(i % 2 == 0, i % 3 != 0, 0.69, 0.6)
    log.commit([LogWrite("AAA", (), (), TrialState(99, champion, shadow, test.to_dict(), 1, 99))])
    third = recorder.record(_outcome(tmp_path, "r3"))
    superseded, placed = third.events
    assert superseded.event == "shadow_superseded" and superseded.from_version == shadow
    assert superseded.evidence["n"] == 30 and superseded.actor == "cli"
    assert placed.to_version == third.version
