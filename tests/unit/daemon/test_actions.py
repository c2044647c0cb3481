"""Operator actions: a promote on too short a trial needs force, and the ledger says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.actions import Command, TrialSoFar, execute
from daemon.errors import UnforcedPromotion
from deploy.registry import MemoryStorage, Registry
from tests.support.helpers import ledger
from tests.support.metadata import write_sample_metadata

SYMBOL = "AAA"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """Champion v1, shadow v2."""
    reg = Registry(MemoryStorage())
    for name in ("1", "2"):
        staging = tmp_path / name
        write_sample_metadata(staging, symbol=SYMBOL)
        (staging / "model.onnx").write_bytes(b"model-" + name.encode())
        reg.place(SYMBOL, reg.add_version(SYMBOL, staging))
    return reg


def _promote(registry: Registry, *, samples: int, force: bool) -> Command:
    command = Command("promote", SYMBOL, "looks better", "operator:ann", force=force)
    trial = TrialSoFar({"n": samples}, samples, min_samples=100)
    execute(registry, command, trial=trial, retrain=lambda _s, _r: True)
    return command


def test_a_promote_on_fewer_than_min_samples_is_refused_without_force(
    registry: Registry,
) -> None:
    before, lines = registry.slots(SYMBOL), ledger(registry, SYMBOL)
    with pytest.raises(UnforcedPromotion, match=r"99 paired bars.*--force"):
        _promote(registry, samples=99, force=False)
    assert registry.slots(SYMBOL) == before
    assert ledger(registry, SYMBOL) == lines


def test_a_forced_promote_goes_ahead_and_the_ledger_records_force_and_command_id(
    registry: Registry,
) -> None:
    shadow = registry.slots(SYMBOL).shadow
    command = _promote(registry, samples=3, force=True)
    assert registry.slots(SYMBOL).champion == shadow
    last = ledger(registry, SYMBOL)[-1]
    assert (last["event"], last["forced"], last["command_id"]) == ("promoted", True, command.id)
    assert last["evidence"] == {"n": 3}


def test_a_promote_on_enough_samples_needs_no_force(registry: Registry) -> None:
    _promote(registry, samples=100, force=False)
    assert registry.slots(SYMBOL).shadow is None
    assert "forced" not in ledger(registry, SYMBOL)[-1]


def test_a_reject_needs_no_trial_length(registry: Registry) -> None:
    short = TrialSoFar({}, 0, min_samples=100)
    execute(registry, Command("reject", SYMBOL), trial=short, retrain=lambda _s, _r: True)
    assert registry.slots(SYMBOL).shadow is None
    assert ledger(registry, SYMBOL)[-1]["event"] == "rejected"
