"""Operator commands in the registry: the id in the ledger makes a second delivery a no-op,
whenever the first was cut off."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from deploy import durable
from deploy.errors import DuplicateCommandError
from deploy.registry import Registry, Slots
from tests.support.helpers import ledger
from tests.support.metadata import write_sample_metadata

SYMBOL = "EURUSD"
COMMAND = "0123456789abcdef0123456789abcdef"
DECISION_POINTS = (
    "slots.json:written",
    "slots.json:replaced",
    "history.jsonl:written",
    "history.jsonl:replaced",
)


def _version(reg: Registry, base: Path, name: str) -> str:
    staging = base / f"staging-{name}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"onnx-" + name.encode())
    write_sample_metadata(staging, symbol=SYMBOL)
    return reg.add_version(SYMBOL, staging)


def _three_champions(reg: Registry, base: Path) -> tuple[str, str, str]:
    """C is the champion, B and A retired before it (oldest first)."""
    a, b, c = (_version(reg, base, n) for n in "abc")
    reg.place(SYMBOL, a)
    for shadow in (b, c):
        reg.place(SYMBOL, shadow)
        reg.promote(SYMBOL, evidence={})
    assert reg.slots(SYMBOL) == Slots(c, None, (a, b))
    return a, b, c


def _events(reg: Registry, kind: str) -> list[dict[str, object]]:
    return [line for line in ledger(reg, SYMBOL) if line["event"] == kind]


def test_a_command_id_and_force_are_recorded_in_the_ledger_line(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    a, b = _version(reg, tmp_path, "a"), _version(reg, tmp_path, "b")
    reg.place(SYMBOL, a)
    reg.place(SYMBOL, b)
    reg.promote(SYMBOL, evidence={"n": 3}, actor="ann", command_id=COMMAND, forced=True)
    (line,) = _events(reg, "promoted")
    assert (line["command_id"], line["forced"], line["actor"]) == (COMMAND, True, "ann")
    assert "command_id" not in ledger(reg, SYMBOL)[0]  # the daemon's own lines carry none


@pytest.mark.parametrize("action", ["promote", "reject", "rollback"])
def test_a_second_delivery_of_a_command_changes_nothing(tmp_path: Path, action: str) -> None:
    """The same id again raises DuplicateCommandError naming the first line; slots and
    ledger stay as the first delivery left them."""
    reg = Registry(tmp_path / "registry")
    _three_champions(reg, tmp_path)
    reg.place(SYMBOL, _version(reg, tmp_path, "d"))
    decide = {
        "promote": lambda: reg.promote(SYMBOL, evidence={}, command_id=COMMAND),
        "reject": lambda: reg.reject(SYMBOL, evidence={}, command_id=COMMAND),
        "rollback": lambda: reg.rollback(SYMBOL, command_id=COMMAND),
    }[action]
    first = decide()
    slots, lines = reg.slots(SYMBOL), ledger(reg, SYMBOL)
    with pytest.raises(DuplicateCommandError) as info:
        decide()
    assert (info.value.command_id, info.value.seq) == (COMMAND, first.seq)
    assert reg.slots(SYMBOL) == slots
    assert ledger(reg, SYMBOL) == lines


def _rollback_and_die(root: str, point: str) -> None:
    """Child process: SIGKILL at ``point`` inside a rollback carrying COMMAND."""

    def hook(name: str) -> None:
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    durable.crash_point = hook
    Registry(Path(root)).rollback(SYMBOL, command_id=COMMAND)


@pytest.mark.parametrize("point", DECISION_POINTS)
def test_a_rollback_killed_at_any_write_step_is_applied_once_when_delivered_again(
    tmp_path: Path, point: str
) -> None:
    """Killed anywhere in a rollback, then re-delivered: the champion moves back one version
    (C -> B, never on to A) and the ledger has one rolled_back line with the command id."""
    root = tmp_path / "registry"
    reg = Registry(root)
    a, b, c = _three_champions(reg, tmp_path)
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_rollback_and_die, args=(str(root), point))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL, f"child did not die at {point}: {proc.exitcode}"
    # No recover(): the compare-and-swap itself catches the ledger up before looking.
    applied = reg.slots(SYMBOL) == Slots(b, None, (a,))
    assert applied == (point != "slots.json:written")
    if applied:
        with pytest.raises(DuplicateCommandError):
            reg.rollback(SYMBOL, command_id=COMMAND)
    else:
        reg.rollback(SYMBOL, command_id=COMMAND)
    assert reg.slots(SYMBOL) == Slots(b, None, (a,))
    (line,) = _events(reg, "rolled_back")
    assert (line["from_version"], line["to_version"], line["command_id"]) == (c, b, COMMAND)
