"""The live path on in-memory parts: scoring, the hand-over of a trial, and announcements."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.actions import Command
from daemon.live.announce import Announcer
from daemon.live.path import LivePath
from daemon.metrics import Metrics
from daemon.store.memory import MemoryBarStore
from deploy.events import RegistryEvent
from deploy.live import LiveScorer
from deploy.memory_log import MemoryPredictionLog
from deploy.registry import MemoryStorage, Registry
from deploy.sequential import PromotionTestConfig
from tests.support.metadata import write_sample_metadata
from trainers.data import BarRecord, bar_records
from trainers.features import FEATURE_SPEC
from trainers.naive import NaiveModel
from trainers.synthetic import MarketGenerator, MarketSpec


class RecordingSink:
    """An AlertSink that keeps what it was given."""

    name = "recording"

    def __init__(self) -> None:
        self.events: list[RegistryEvent] = []

    def notify(self, event: RegistryEvent) -> bool:
        self.events.append(event)
        return True

    def deliveries(self) -> Mapping[str, int]:
        return {"sent": len(self.events)}

    def close(self, timeout: float) -> None:
        pass


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.registry = Registry(MemoryStorage())
        self.store = MemoryBarStore()
        self.sink = RecordingSink()
        self.metrics = Metrics(CollectorRegistry(), version="test")
        announcer = Announcer(self.registry, [self.sink], self.metrics)
        scorer = LiveScorer(
            self.registry,
            MemoryPredictionLog(),
            lambda symbol, n: self.store.load(symbol, last_n=n),
            PromotionTestConfig(min_samples=10, max_samples=40),
        )
        self.live = LivePath(scorer, self.registry, announcer, self.metrics)
        self.market = MarketGenerator(MarketSpec("AAA", 3, signal_strength=0.0))
        self.history = bar_records("AAA", self.market.next_bars(200))
        self.store.upsert(self.history)

    def version(self, name: str, p_up: float) -> str:
        staging = self.tmp / name
        write_sample_metadata(staging, symbol="AAA", last_ts=self.history[-1].ts)
        NaiveModel(p_up, len(FEATURE_SPEC.names)).export_onnx(staging / "model.onnx")
        return self.registry.add_version("AAA", staging)

    def bars(self, n: int) -> list[BarRecord]:
        records = bar_records("AAA", self.market.next_bars(n))
        self.store.upsert(records)
        return records

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_every_new_bar_is_scored_and_carries_what_the_monitors_need(rig: Rig) -> None:
    rig.live.place("AAA", rig.version("c", 0.7), reason="test")
    (update,) = rig.live.on_batch({"AAA": rig.bars(5)})
    assert (update.scored, len(update.predictions)) == (5, 5)
    assert update.champion == rig.registry.slots("AAA").champion
    assert [o.champion_correct is None for o in update.observations] == [True] + [False] * 4
    assert all(
        o.features is not None and len(o.features) == len(FEATURE_SPEC.names)
        for o in update.observations
    )
    assert rig.sample("ctd_live_predictions_total", symbol="AAA") == 5


def test_decisions_are_counted_and_every_event_reaches_every_sink(rig: Rig) -> None:
    """Every decision is counted and handed to each sink, which picks its kinds (the webhook
    and the promotions topic skip a shadow placement; the MLflow mirror takes it)."""
    rig.live.place("AAA", rig.version("c", 0.7), reason="test")
    rig.live.place("AAA", rig.version("s", 0.3), reason="test")
    rig.live.command(Command("reject", "AAA", "not convinced", "operator:ann"), lambda *_: True)
    assert [e.event for e in rig.sink.events] == [
        "champion_bootstrapped", "shadow_placed", "rejected"
    ]  # fmt: skip
    assert rig.sink.events[2].actor == "operator:ann"
    assert rig.sample("ctd_shadow_placements_total", symbol="AAA") == 1
    assert rig.sample("ctd_shadow_rejections_total", symbol="AAA") == 1
    assert rig.registry.state("AAA").announced == 3


def test_taking_a_symbol_over_announces_what_its_last_owner_did_not(rig: Rig) -> None:
    """A decision recorded but never announced (its daemon died in between) is announced by
    the daemon that takes the symbol over, once; a registry without a mark replays nothing."""
    rig.live.place("AAA", rig.version("c", 0.7), reason="test")
    rig.registry.place("AAA", rig.version("s", 0.3))  # recorded, not announced
    rig.registry.reject("AAA", evidence={}, reason="worse")
    assert rig.live.announcer.catch_up(["AAA"]) == 2
    assert [e.event for e in rig.sink.events] == [
        "champion_bootstrapped", "shadow_placed", "rejected"
    ]  # fmt: skip
    assert rig.registry.state("AAA").announced == 3
    assert rig.live.announcer.catch_up(["AAA"]) == 0


def test_without_a_mark_only_the_last_write_is_announced_again(rig: Rig) -> None:
    """A registry of an earlier release has no announced mark: taking a symbol over announces
    the lines of its last write again (its writer may have died before announcing), not the
    whole history."""
    rig.registry.place("AAA", rig.version("c", 0.7))
    rig.registry.place("AAA", rig.version("s", 0.3))
    rig.registry.promote("AAA", evidence={}, reason="better")
    stored = rig.registry.storage.get("AAA/slots.json")
    assert stored is not None
    doc = json.loads(stored.data)
    del doc["announced"]
    rig.registry.storage.put("AAA/slots.json", json.dumps(doc).encode())
    assert rig.live.announcer.catch_up(["AAA"]) == 1
    assert [e.event for e in rig.sink.events] == ["promoted"]


def test_a_replaced_shadow_hands_its_running_trial_evidence_to_the_ledger(rig: Rig) -> None:
    rig.live.place("AAA", rig.version("c", 0.7), reason="test")
    old = rig.version("s1", 0.3)
    rig.live.place("AAA", old, reason="test")
    rig.live.on_batch({"AAA": rig.bars(8)})
    events = rig.live.place("AAA", rig.version("s2", 0.6), reason="test")
    superseded = events[0]
    assert (superseded.event, superseded.from_version) == ("shadow_superseded", old)
    assert superseded.evidence["n"] == 7  # 8 new bars resolve 7 paired predictions
    assert superseded.evidence["decision"] == "continue"
