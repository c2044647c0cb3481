"""The live monitors of each champion, fed with the live path's updates on an in-memory registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from daemon.live.watch import LiveWatch
from daemon.metrics import Metrics
from daemon.settings import load_settings
from deploy.live_state import LiveUpdate
from deploy.registry import MemoryStorage, Registry
from monitors.watch import LiveObservation
from tests.support.metadata import write_sample_metadata
from trainers.features import FEATURE_SPEC

TRAINED_UNTIL = 1_735_689_600


def _champion(tmp_path: Path, registry: Registry, created_at: str) -> str:
    staging = tmp_path / "staging"
    write_sample_metadata(staging, symbol="AAA", last_ts=TRAINED_UNTIL, created_at=created_at)
    (staging / "model.onnx").write_bytes(b"model")
    version = registry.add_version("AAA", staging)
    registry.place("AAA", version)
    return version


def _watch(tmp_path: Path, **settings: object) -> tuple[LiveWatch, Registry, list[tuple[str, str]]]:
    registry = Registry(MemoryStorage())
    fired: list[tuple[str, str]] = []

    def trigger(symbol: str, reason: str) -> bool:
        fired.append((symbol, reason))
        return True

    watch = LiveWatch(
        load_settings(data_dir=tmp_path / "data", **settings),
        registry=registry,
        metrics=Metrics(CollectorRegistry(), version="test"),
        trigger=trigger,
    )
    return watch, registry, fired


def _update(champion: str, rows: np.ndarray, start: int) -> LiveUpdate:
    observations = tuple(LiveObservation(start + 60 * i, row, None) for i, row in enumerate(rows))
    return LiveUpdate("AAA", len(rows), 0, 0, 0, observations=observations, champion=champion)


def test_drifting_bars_request_one_retrain_per_cooldown(tmp_path: Path) -> None:
    """Rows far from the training distribution fire drift; the cooldown lets one retrain through."""
    watch, registry, fired = _watch(tmp_path, drift_window=50, retrain_cooldown_seconds=3600)
    champion = _champion(tmp_path, registry, "2999-01-01T00:00:00Z")
    rng = np.random.default_rng(0)
    shifted = rng.standard_normal((120, len(FEATURE_SPEC.names))) + 5.0
    watch.on_updates([_update(champion, shifted[:60], TRAINED_UNTIL + 60)])
    watch.on_updates([_update(champion, shifted[60:], TRAINED_UNTIL + 3660)])
    assert fired == [("AAA", "drift")]
    readings = {(kind, name) for symbol, kind, name, _v in watch.readings() if symbol == "AAA"}
    assert ("drift", FEATURE_SPEC.names[0]) in readings
    assert ("staleness", "bars_since_training") in readings


def test_bars_of_the_training_data_are_not_fed(tmp_path: Path) -> None:
    """Bars at or before the champion's training data end are not live evidence."""
    watch, registry, fired = _watch(tmp_path, drift_window=50)
    champion = _champion(tmp_path, registry, "2999-01-01T00:00:00Z")
    shifted = np.full((100, len(FEATURE_SPEC.names)), 9.0)
    watch.on_updates([_update(champion, shifted, TRAINED_UNTIL - 60 * 100)])
    assert fired == []
    assert {(k, n): v for _s, k, n, v in watch.readings()}[
        ("staleness", "bars_since_training")
    ] == 0


def test_an_old_champion_is_retrained_by_the_scheduled_check(tmp_path: Path) -> None:
    watch, registry, fired = _watch(tmp_path, stale_max_age_seconds=3600)
    _champion(tmp_path, registry, "2020-01-01T00:00:00Z")
    watch.check()
    assert fired == [("AAA", "staleness")]


def test_report_only_mode_measures_without_retraining(tmp_path: Path) -> None:
    watch, registry, fired = _watch(
        tmp_path, stale_max_age_seconds=3600, live_monitor_retrain=False
    )
    _champion(tmp_path, registry, "2020-01-01T00:00:00Z")
    watch.check()
    assert fired == []
