"""ctd doctor's repairs on a real local registry: each kind of corrupt file is diagnosed,
repaired with a ledger line, and the symbol reads whole afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.doctor import diagnose, repair_symbol, replay
from deploy.quarantine import check_symbol
from deploy.registry import Registry
from tests.support.metadata import write_sample_metadata

SYMBOL = "AAA"


def _version(registry: Registry, base: Path, name: str) -> str:
    staging = base / name
    staging.mkdir()
    (staging / "model.onnx").write_bytes(name.encode())
    write_sample_metadata(staging, symbol=SYMBOL)
    return registry.add_version(SYMBOL, staging)


@pytest.fixture
def lifecycle(tmp_path: Path) -> tuple[Registry, list[str]]:
    """v0 champion, promoted over by v1 (v0 retired), v2 the shadow."""
    registry = Registry(tmp_path / "registry")
    v = [_version(registry, tmp_path, f"v{i}") for i in range(3)]
    registry.place(SYMBOL, v[0])
    registry.place(SYMBOL, v[1])
    registry.promote(SYMBOL, evidence={}, actor="t", reason="t")
    registry.place(SYMBOL, v[2])
    return registry, v


def _file(registry: Registry, *parts: str) -> Path:
    return Path(registry.storage.url).joinpath(SYMBOL, *parts)


def test_replaying_the_ledger_gives_the_slots(lifecycle: tuple[Registry, list[str]]) -> None:
    registry, v = lifecycle
    slots, seq = replay(registry.history(SYMBOL))
    assert slots == registry.slots(SYMBOL) == type(slots)(v[1], v[2], (v[0],))
    assert seq == registry.state(SYMBOL).seq


def test_truncated_slots_are_rebuilt_from_the_ledger(lifecycle: tuple[Registry, list[str]]) -> None:
    registry, _ = lifecycle
    before = registry.slots(SYMBOL)
    path = _file(registry, "slots.json")
    path.write_bytes(path.read_bytes()[:15])
    finding = diagnose(registry, SYMBOL)
    assert finding is not None and finding.repair == "rebuild_slots"
    repair_symbol(registry, SYMBOL)
    check_symbol(registry, SYMBOL)
    assert registry.slots(SYMBOL) == before
    assert any(p.name.startswith("slots.json.corrupt-") for p in path.parent.iterdir())


def test_slots_and_ledger_both_broken_start_over(lifecycle: tuple[Registry, list[str]]) -> None:
    registry, _ = lifecycle
    _file(registry, "slots.json").write_text("{")
    _file(registry, "history.jsonl").write_text("garbage\n")
    assert [f.repair for f, _ in repair_symbol(registry, SYMBOL)] == ["reset_slots", "clean_ledger"]
    check_symbol(registry, SYMBOL)
    assert registry.slots(SYMBOL).champion is None


def test_a_bad_trial_checkpoint_is_dropped(lifecycle: tuple[Registry, list[str]]) -> None:
    registry, v = lifecycle
    path = _file(registry, "slots.json")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "trial": {"state": 5}}))
    finding = diagnose(registry, SYMBOL)
    assert finding is not None and (finding.reason, finding.repair) == ("trial", "drop_trial")
    repair_symbol(registry, SYMBOL)
    assert registry.state(SYMBOL).trial is None and registry.slots(SYMBOL).champion == v[1]


def test_an_unparseable_ledger_line_is_dropped_and_the_rest_kept(
    lifecycle: tuple[Registry, list[str]],
) -> None:
    registry, _ = lifecycle
    path = _file(registry, "history.jsonl")
    good = path.read_text().splitlines()
    path.write_text("\n".join([*good[:2], '{"event": "nonsense"}', *good[2:]]) + "\n")
    repair_symbol(registry, SYMBOL)
    assert [e.to_dict() for e in registry.history(SYMBOL)][: len(good)] == [
        json.loads(line) for line in good
    ]


def test_an_unreadable_champion_rolls_back_to_the_newest_whole_version(
    lifecycle: tuple[Registry, list[str]],
) -> None:
    registry, v = lifecycle
    meta = _file(registry, v[1], "metadata.json")
    meta.write_bytes(meta.read_bytes()[:50])
    finding = diagnose(registry, SYMBOL)
    assert finding is not None and (finding.reason, finding.repair) == ("metadata", "roll_back")
    repair_symbol(registry, SYMBOL)
    slots = registry.slots(SYMBOL)
    assert (slots.champion, slots.shadow, slots.retired) == (v[0], v[2], ())
    last = registry.history(SYMBOL)[-1]
    assert (last.event, last.actor, last.from_version, last.to_version) == (
        "rolled_back", "doctor", v[1], v[0]
    )  # fmt: skip


def test_no_whole_version_left_clears_the_champion(lifecycle: tuple[Registry, list[str]]) -> None:
    registry, v = lifecycle
    for version in (v[0], v[1]):
        _file(registry, version, "model.onnx").unlink()
    done = repair_symbol(registry, SYMBOL)
    assert [f.repair for f, _ in done] == ["clear_champion"]
    assert registry.slots(SYMBOL).champion is None
    check_symbol(registry, SYMBOL)


def test_an_unreadable_shadow_is_rejected(lifecycle: tuple[Registry, list[str]]) -> None:
    registry, v = lifecycle
    _file(registry, v[2], "model.onnx").unlink()
    finding = diagnose(registry, SYMBOL)
    assert finding is not None and finding.repair == "reject_shadow"
    repair_symbol(registry, SYMBOL)
    assert registry.slots(SYMBOL).shadow is None and registry.slots(SYMBOL).champion == v[1]
