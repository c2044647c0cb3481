"""A registry writer SIGKILLed at every injected point leaves the previous or the next state.

Each case runs the operation in a real child process whose ``deploy.durable.crash_point``
hook kills it at one named point, then recovers the registry in this process and
checks slots.json, the version directories and the history on real files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy import durable
from deploy.errors import RegistryCorrupt
from deploy.quarantine import check_symbol, reason_of
from deploy.registry import Registry, Slots
from deploy.versions import new_version_id
from tests.support.helpers import ledger
from tests.support.metadata import write_sample_metadata

SYMBOL = "EURUSD"
V0, V1, V2 = (f"20250101T00000{i}000000Z-0a0{i}" for i in range(3))
ADD_POINTS = ("model.onnx:replaced", "metadata.json:written", "metadata.json:replaced")
DECISION_POINTS = (
    "slots.json:written",
    "slots.json:replaced",
    "history.jsonl:written",
    "history.jsonl:replaced",
)


def _stage(base: Path, name: str) -> Path:
    staging = base / f"staging-{name}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"\x08\x07onnx" * 1000)
    write_sample_metadata(staging, symbol=SYMBOL)
    return staging


def _run_and_die(root: str, op: str, point: str, staging: str) -> None:
    """Child process: arm the hook at ``point``, then run ``op`` on the registry."""

    def hook(name: str) -> None:
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    durable.crash_point = hook
    reg = Registry(Path(root))
    if op == "add_version":
        reg.add_version(SYMBOL, Path(staging), version=V2)
    elif op == "place":
        reg.place(SYMBOL, V2)
    elif op == "promote":
        reg.promote(SYMBOL, evidence={"statistic": 4.1})


def _crash(root: Path, op: str, point: str, staging: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_run_and_die, args=(str(root), op, point, str(staging)))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL, f"child did not die at {point}: {proc.exitcode}"


@dataclass(frozen=True)
class Case:
    """The state before ``op``, how to build it, and the slots / events it leads to."""

    op: str
    setup: Callable[[Registry, Path], None]
    before: Slots
    after: Slots
    new_events: list[str]


def _versions(reg: Registry, base: Path, *versions: str) -> None:
    for v in versions:
        reg.add_version(SYMBOL, _stage(base, v), version=v)


def _setup_bootstrap(reg: Registry, base: Path) -> None:
    _versions(reg, base, V2)


def _setup_supersede(reg: Registry, base: Path) -> None:
    _versions(reg, base, V0, V1, V2)
    reg.place(SYMBOL, V0)
    reg.place(SYMBOL, V1)


def _setup_promote(reg: Registry, base: Path) -> None:
    _versions(reg, base, V0, V2)
    reg.place(SYMBOL, V0)
    reg.place(SYMBOL, V2)


def _setup_add(reg: Registry, base: Path) -> None:
    _versions(reg, base, V0)
    reg.place(SYMBOL, V0)


CASES = {
    "bootstrap": Case(
        "place", _setup_bootstrap, Slots(None, None), Slots(V2, None), ["champion_bootstrapped"]
    ),
    "supersede": Case(
        "place",
        _setup_supersede,
        Slots(V0, V1),
        Slots(V0, V2),
        [
            "shadow_superseded",
            "shadow_placed",
        ],
    ),
    "promote": Case("promote", _setup_promote, Slots(V0, V2), Slots(V2, None, (V0,)), ["promoted"]),
}


def _assert_consistent(root: Path, reg: Registry) -> None:
    """slots.json parses, every slot is a complete version, no residue, seq lines up."""
    symdir = root / SYMBOL
    doc = json.loads((symdir / "slots.json").read_text())
    for version in (doc["champion"], doc["shadow"]):
        if version is not None:
            assert (symdir / version / "model.onnx").is_file()
            assert (symdir / version / "metadata.json").is_file()
    residue = [p for p in symdir.rglob(".*") if p.name != ".lock"]
    assert residue == []
    history = ledger(reg, SYMBOL)
    assert [h["seq"] for h in history] == list(range(1, len(history) + 1))
    assert doc["seq"] == history[-1]["seq"]
    assert doc["decision"] == history[-len(doc["decision"]) :]


@pytest.mark.parametrize("point", DECISION_POINTS)
@pytest.mark.parametrize("name", CASES)
def test_decision_killed_at_each_point_recovers_to_previous_or_next_state(
    tmp_path: Path, name: str, point: str
) -> None:
    """Killed before the slots rename the decision is lost whole; after it, it is kept whole."""
    case, root = CASES[name], tmp_path / "registry"
    reg = Registry(root)
    case.setup(reg, tmp_path)
    history_before = ledger(reg, SYMBOL)

    _crash(root, case.op, point, tmp_path)
    cleaned = Registry(root).recover()

    committed = point != "slots.json:written"
    assert reg.slots(SYMBOL) == (case.after if committed else case.before)
    history = ledger(reg, SYMBOL)
    assert history[: len(history_before)] == history_before
    new = [h["event"] for h in history[len(history_before) :]]
    assert new == (case.new_events if committed else [])
    ledger_behind = point in ("slots.json:replaced", "history.jsonl:written")
    assert any("re-appended" in c for c in cleaned) == ledger_behind
    if history_before or committed:
        _assert_consistent(root, reg)
    # The recovered registry keeps working: one more decision lands with the next seq.
    reg.add_version(SYMBOL, _stage(tmp_path, "next"), version=(nxt := new_version_id()))
    reg.place(SYMBOL, nxt)
    assert ledger(reg, SYMBOL)[-1]["to_version"] == nxt
    _assert_consistent(root, reg)


@pytest.mark.parametrize("point", ADD_POINTS)
def test_add_version_killed_at_each_point_leaves_no_version_or_a_complete_one(
    tmp_path: Path, point: str
) -> None:
    """A version appears only whole (once metadata.json, written last, is in place); a dead
    copy is cleaned by recover()."""
    root = tmp_path / "registry"
    reg = Registry(root)
    _setup_add(reg, tmp_path)
    staging = _stage(tmp_path, "new")

    _crash(root, "add_version", point, staging)
    cleaned = Registry(root).recover()

    renamed = point == "metadata.json:replaced"
    assert reg.versions(SYMBOL) == ([V0, V2] if renamed else [V0])
    assert reg.unplaced(SYMBOL) == ([V2] if renamed else [])  # for start-up adoption
    assert any("incomplete version" in c for c in cleaned) == (not renamed)
    if renamed:
        assert reg.model_path(SYMBOL, V2).read_bytes() == (staging / "model.onnx").read_bytes()
        assert reg.metadata(SYMBOL, V2).version == V2
    else:  # the same id can be added again after recovery
        reg.add_version(SYMBOL, staging, version=V2)
    assert reg.slots(SYMBOL) == Slots(V0, None)
    _assert_consistent(root, reg)


def test_torn_multi_line_append_is_completed_by_recover(tmp_path: Path) -> None:
    """If only part of a decision's lines reached history (a power cut during an append by an
    earlier release), recover appends exactly the rest."""
    root = tmp_path / "registry"
    reg = Registry(root)
    _setup_supersede(reg, tmp_path)
    reg.place(SYMBOL, V2)
    path = root / SYMBOL / "history.jsonl"
    data = path.read_bytes()
    last_line_start = data.rstrip(b"\n").rfind(b"\n") + 1
    # Keep the superseded line and half of the placed line, as a power cut might.
    path.write_bytes(data[: last_line_start + 20])
    assert [h["event"] for h in ledger(reg, SYMBOL)][-1] == "shadow_superseded"

    cleaned = Registry(root).recover()

    assert any("torn" in c for c in cleaned)
    assert [h["event"] for h in ledger(reg, SYMBOL)][-2:] == ["shadow_superseded", "shadow_placed"]
    assert path.read_bytes() == data
    _assert_consistent(root, reg)


def test_recover_keeps_a_slotted_version_with_a_missing_file_for_the_quarantine(
    tmp_path: Path,
) -> None:
    """A champion whose model.onnx is gone is corruption no crash can cause: recover neither
    raises nor deletes what is left of it; the quarantine check names the missing file."""
    root = tmp_path / "registry"
    reg = Registry(root)
    _setup_add(reg, tmp_path)
    (root / SYMBOL / V0 / "model.onnx").unlink()
    assert reg.recover() == []
    assert (root / SYMBOL / V0 / "metadata.json").exists()
    with pytest.raises(RegistryCorrupt, match=rf"{V0}/model\.onnx: missing") as caught:
        check_symbol(reg, SYMBOL)
    assert reason_of(caught.value) == "model"
