"""Start-up recovery of runs cut off before their ledger line, on an in-memory registry."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.live.path import SavedTrialPlacer
from daemon.store.memory import MemoryBarStore
from daemon.training.recovery import ADOPTED_REASON, recover_runs
from deploy.events import RegistryEvent, utc_now
from deploy.memory_log import MemoryPredictionLog
from deploy.registry import MemoryStorage, Registry, Slots
from tests.support.helpers import ledger
from tests.support.metadata import write_sample_metadata

SYMBOL = "AAA"


def _add(registry: Registry, tmp_path: Path, name: str, *, passed: bool = True) -> str:
    staging = tmp_path / name
    write_sample_metadata(staging, symbol=SYMBOL, passed=passed)
    (staging / "model.onnx").write_bytes(b"model-" + name.encode())
    return registry.add_version(SYMBOL, staging)


def _setup(tmp_path: Path) -> tuple[Registry, MemoryBarStore, SavedTrialPlacer]:
    registry = Registry(MemoryStorage())
    placer = SavedTrialPlacer(registry, MemoryPredictionLog(), actor="daemon")
    return registry, MemoryBarStore(), placer


def test_an_unplaced_version_becomes_champion_with_a_ledger_line_and_keeps_the_mark(
    tmp_path: Path,
) -> None:
    """Killed after the version was complete, before its slot: the version is adopted as the
    champion it would have been; its run's training mark stands."""
    registry, store, placer = _setup(tmp_path)
    store.mark_trained(SYMBOL, 600, time.time())
    version = _add(registry, tmp_path, "run")

    done = recover_runs(registry, store, placer)

    assert [(r.symbol, r.action, r.version) for r in done] == [(SYMBOL, "adopted", version)]
    assert registry.slots(SYMBOL) == Slots(version, None)
    [line] = ledger(registry, SYMBOL)
    assert (line["event"], line["to_version"]) == ("champion_bootstrapped", version)
    assert (line["actor"], line["reason"]) == ("daemon", ADOPTED_REASON)
    assert store.trained_state()[SYMBOL][0] == 600
    assert recover_runs(registry, store, placer) == []  # once adopted, nothing left to do


def test_with_a_champion_the_unplaced_version_becomes_the_shadow(tmp_path: Path) -> None:
    registry, store, placer = _setup(tmp_path)
    champion = _add(registry, tmp_path, "first")
    registry.place(SYMBOL, champion)
    version = _add(registry, tmp_path, "second")

    [done] = recover_runs(registry, store, placer)

    assert done.action == "adopted"
    assert [e.event for e in done.events] == ["shadow_placed"]
    assert registry.slots(SYMBOL) == Slots(champion, version)


def test_a_version_older_than_a_named_one_is_not_adopted(tmp_path: Path) -> None:
    """Only a version newer than everything the slots and ledger name is a cut-off run's; an
    older unnamed one was superseded (e.g. a fenced run of a fleet member)."""
    registry, store, placer = _setup(tmp_path)
    stale = _add(registry, tmp_path, "stale")
    champion = _add(registry, tmp_path, "champion")
    registry.place(SYMBOL, champion)

    assert registry.unplaced(SYMBOL) == []
    assert recover_runs(registry, store, placer) == []
    assert registry.versions(SYMBOL) == [stale, champion]


def test_a_mark_with_no_later_ledger_line_is_dropped_so_the_symbol_retrains(
    tmp_path: Path,
) -> None:
    """Killed after marking the bars trained but before the version was complete: the mark is
    dropped; a symbol whose last run left its line keeps its mark."""
    registry, store, placer = _setup(tmp_path)
    champion = _add(registry, tmp_path, "champion")
    store.mark_trained("BBB", 500, time.time() - 60)
    store.mark_trained(SYMBOL, 600, time.time() - 60)
    registry.place(SYMBOL, champion)  # AAA's run left its line after its mark
    store.mark_trained("CCC", 700, time.time())  # no registry entry at all

    done = recover_runs(registry, store, placer)

    assert [(r.symbol, r.action, r.version) for r in done] == [
        ("BBB", "retrain", None),
        ("CCC", "retrain", None),
    ]
    assert store.trained_state() == {SYMBOL: (600, store.trained_state()[SYMBOL][1])}


def test_a_rejected_candidates_line_counts_as_the_runs_record(tmp_path: Path) -> None:
    registry, store, placer = _setup(tmp_path)
    store.mark_trained(SYMBOL, 600, time.time() - 1)
    registry.record(
        RegistryEvent("candidate_rejected", SYMBOL, None, None, {}, utc_now(), "daemon", "gates")
    )
    assert recover_runs(registry, store, placer) == []
    assert SYMBOL in store.trained_state()


def test_a_version_that_cannot_be_adopted_drops_the_mark_and_stays(tmp_path: Path) -> None:
    """A version whose metadata says its run failed the gates is never placed: the symbol
    retrains instead, and the version is left for an operator."""
    registry, store, placer = _setup(tmp_path)
    store.mark_trained(SYMBOL, 600, time.time())
    version = _add(registry, tmp_path, "failed", passed=False)

    [done] = recover_runs(registry, store, placer)

    assert (done.action, done.version) == ("retrain", version)
    assert "did not pass" in done.problem
    assert registry.slots(SYMBOL) == Slots(None, None)
    assert store.trained_state() == {}


def test_skipped_symbols_are_left_as_they_are(tmp_path: Path) -> None:
    registry, store, placer = _setup(tmp_path)
    store.mark_trained(SYMBOL, 600, time.time())
    _add(registry, tmp_path, "run")
    assert recover_runs(registry, store, placer, skip={SYMBOL}) == []
    assert registry.slots(SYMBOL) == Slots(None, None)
    assert SYMBOL in store.trained_state()
