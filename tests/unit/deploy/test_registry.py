# Over 400 lines: 19 tests of the one registry contract (slots, history, ids, safety).
"""The filesystem model registry: layout, slot decisions, history, ids, safety, concurrency."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest

from deploy.errors import (
    AlreadyInSlotError,
    ArtifactError,
    DuplicateVersionError,
    InvalidVersionIdError,
    NoChampionError,
    NoShadowError,
    NothingToRollBackError,
    RegistryCorrupt,
    UnknownVersionError,
)
from deploy.events import EventKind, RegistryEvent, utc_now
from deploy.registry import VERSION_PATTERN, Registry, Slots
from deploy.versions import new_version_id
from tests.support.helpers import ledger
from tests.support.metadata import write_sample_metadata
from trainers.data import InvalidSymbolError

SYMBOL = "BTCUSDT"


def make_staging(base: Path, name: str, seed: int = 0) -> Path:
    staging = base / f"staging-{name}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"onnx-bytes-" + name.encode())
    write_sample_metadata(staging, trainer="xgboost", seed=seed)
    return staging


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def add(reg: Registry, tmp_path: Path, name: str, symbol: str = SYMBOL) -> str:
    return reg.add_version(symbol, make_staging(tmp_path, f"{symbol}-{name}", seed=7))


def kinds(reg: Registry, symbol: str = SYMBOL) -> list[str]:
    return [line["event"] for line in ledger(reg, symbol)]


def test_layout_on_disk_matches_design(reg: Registry, tmp_path: Path) -> None:
    """A placed version lives at <root>/<SYMBOL>/<VERSION>/ beside slots.json and history.jsonl."""
    v = add(reg, tmp_path, "a")
    reg.place(SYMBOL, v)
    symdir = tmp_path / "registry" / SYMBOL
    assert (symdir / v / "model.onnx").read_bytes() == f"onnx-bytes-{SYMBOL}-a".encode()
    metadata = json.loads((symdir / v / "metadata.json").read_text())
    assert (metadata["trainer"], metadata["seed"], metadata["version"]) == ("xgboost", 7, v)
    assert metadata["schema_version"] == 1
    assert reg.metadata(SYMBOL, v).to_dict() == metadata
    assert reg.model_path(SYMBOL, v) == symdir / v / "model.onnx"
    slots = json.loads((symdir / "slots.json").read_text())
    assert (slots["champion"], slots["shadow"], slots["retired"]) == (v, None, [])
    lines = [json.loads(x) for x in (symdir / "history.jsonl").read_text().splitlines()]
    assert lines == ledger(reg, SYMBOL)
    assert lines[0]["event"] == "champion_bootstrapped"
    assert lines[0]["to_version"] == v
    assert sorted(p.name for p in symdir.iterdir()) == sorted(
        [v, "slots.json", "history.jsonl", ".lock"]
    )
    assert reg.symbols() == [SYMBOL]
    assert reg.versions(SYMBOL) == [v]


def test_first_version_bootstraps_champion_then_next_becomes_shadow(
    reg: Registry, tmp_path: Path
) -> None:
    """With no champion a version becomes champion; afterwards versions go to the shadow slot."""
    v1, v2 = add(reg, tmp_path, "1"), add(reg, tmp_path, "2")
    [boot] = reg.place(SYMBOL, v1)
    assert (boot.event, boot.from_version, boot.to_version) == ("champion_bootstrapped", None, v1)
    assert boot.is_promotion_topic_event
    [placed] = reg.place(SYMBOL, v2, reason="retrain")
    assert (placed.event, placed.from_version, placed.to_version) == ("shadow_placed", v1, v2)
    assert not placed.is_promotion_topic_event
    assert reg.slots(SYMBOL) == Slots(v1, v2)
    assert ledger(reg, SYMBOL)[-1]["reason"] == "retrain"


def test_new_shadow_supersedes_old_shadow(reg: Registry, tmp_path: Path) -> None:
    """Placing over a shadow records shadow_superseded (old shadow in from_version) first."""
    v1, v2, v3 = (add(reg, tmp_path, n) for n in "123")
    reg.place(SYMBOL, v1)
    reg.place(SYMBOL, v2)
    events = reg.place(SYMBOL, v3)
    assert [(e.event, e.from_version, e.to_version) for e in events] == [
        ("shadow_superseded", v2, v3),
        ("shadow_placed", v1, v3),
    ]
    assert reg.slots(SYMBOL) == Slots(v1, v3)
    assert kinds(reg) == [
        "champion_bootstrapped",
        "shadow_placed",
        "shadow_superseded",
        "shadow_placed",
    ]


def test_superseded_shadow_keeps_its_partial_evidence(reg: Registry, tmp_path: Path) -> None:
    """The evidence handed to place() is the superseded shadow's ledger line."""
    v1, v2, v3 = (add(reg, tmp_path, n) for n in "123")
    reg.place(SYMBOL, v1)
    reg.place(SYMBOL, v2)
    reg.place(SYMBOL, v3, superseded_evidence={"n": 42, "e_value_better": 3.5})
    line = next(e for e in ledger(reg, SYMBOL) if e["event"] == "shadow_superseded")
    assert line["from_version"] == v2
    assert line["evidence"] == {"n": 42, "e_value_better": 3.5}


def test_promote_makes_shadow_champion_and_retires_old_champion(
    reg: Registry, tmp_path: Path
) -> None:
    """promote moves shadow to champion, retires the old champion and logs the evidence."""
    v1, v2 = add(reg, tmp_path, "1"), add(reg, tmp_path, "2")
    reg.place(SYMBOL, v1)
    reg.place(SYMBOL, v2)
    event = reg.promote(SYMBOL, evidence={"statistic": 3.2, "n": 500}, reason="significant")
    assert (event.event, event.from_version, event.to_version) == ("promoted", v1, v2)
    assert reg.slots(SYMBOL) == Slots(v2, None, (v1,))
    last = ledger(reg, SYMBOL)[-1]
    assert last["evidence"] == {"statistic": 3.2, "n": 500}
    assert (last["actor"], last["reason"]) == ("daemon", "significant")


def test_reject_empties_shadow_and_keeps_champion(reg: Registry, tmp_path: Path) -> None:
    """reject clears the shadow; the champion and retired list are untouched."""
    v1, v2 = add(reg, tmp_path, "1"), add(reg, tmp_path, "2")
    reg.place(SYMBOL, v1)
    reg.place(SYMBOL, v2)
    event = reg.reject(SYMBOL, evidence={"budget_exhausted": True})
    assert (event.event, event.from_version, event.to_version) == ("rejected", v1, v2)
    assert reg.slots(SYMBOL) == Slots(v1, None)
    with pytest.raises(NoShadowError, match=SYMBOL):
        reg.reject(SYMBOL, evidence={})
    with pytest.raises(NoShadowError, match="promote"):
        reg.promote(SYMBOL, evidence={})
    assert kinds(reg)[-1] == "rejected"


def test_rollback_restores_previous_champion_and_history_shows_both_steps(
    reg: Registry, tmp_path: Path
) -> None:
    """rollback brings back the newest retired champion; history has promoted then rolled_back."""
    v1, v2, v3 = (add(reg, tmp_path, n) for n in "123")
    reg.place(SYMBOL, v1)
    reg.place(SYMBOL, v2)
    reg.promote(SYMBOL, evidence={})
    reg.place(SYMBOL, v3)
    reg.promote(SYMBOL, evidence={})
    assert reg.slots(SYMBOL) == Slots(v3, None, (v1, v2))

    event = reg.rollback(SYMBOL, reason="bad live accuracy")
    assert (event.event, event.from_version, event.to_version) == ("rolled_back", v3, v2)
    assert event.actor == "operator"
    assert reg.slots(SYMBOL) == Slots(v2, None, (v1,))
    reg.rollback(SYMBOL)
    assert reg.slots(SYMBOL) == Slots(v1, None, ())
    with pytest.raises(NothingToRollBackError, match=v1):
        reg.rollback(SYMBOL)

    steps = [(h["event"], h["from_version"], h["to_version"]) for h in ledger(reg, SYMBOL)]
    assert steps[-4:] == [
        ("shadow_placed", v2, v3),
        ("promoted", v2, v3),
        ("rolled_back", v3, v2),
        ("rolled_back", v2, v1),
    ]
    assert ledger(reg, SYMBOL)[-2]["reason"] == "bad live accuracy"


def test_rollback_keeps_the_shadow(reg: Registry, tmp_path: Path) -> None:
    """A shadow under trial survives a rollback of the champion."""
    v1, v2, v3 = (add(reg, tmp_path, n) for n in "123")
    reg.place(SYMBOL, v1)
    reg.place(SYMBOL, v2)
    reg.promote(SYMBOL, evidence={})
    reg.place(SYMBOL, v3)
    reg.rollback(SYMBOL)
    assert reg.slots(SYMBOL) == Slots(v1, v3)


def test_decisions_on_unknown_symbol_raise_and_create_nothing(
    reg: Registry, tmp_path: Path
) -> None:
    """Decisions on a symbol without versions raise and leave no directory behind."""
    with pytest.raises(NoChampionError, match="ETHUSDT"):
        reg.rollback("ETHUSDT")
    with pytest.raises(NoShadowError):
        reg.promote("ETHUSDT", evidence={})
    with pytest.raises(UnknownVersionError, match="ETHUSDT"):
        reg.place("ETHUSDT", new_version_id())
    assert reg.slots("ETHUSDT") == Slots(None, None)
    assert ledger(reg, "ETHUSDT") == []
    assert reg.versions("ETHUSDT") == []
    assert reg.symbols() == []
    assert not (tmp_path / "registry").exists()


def test_placing_a_version_twice_or_an_unknown_version_raises(
    reg: Registry, tmp_path: Path
) -> None:
    """The current champion/shadow cannot be placed again, nor a version never added."""
    v1, v2 = add(reg, tmp_path, "1"), add(reg, tmp_path, "2")
    reg.place(SYMBOL, v1)
    reg.place(SYMBOL, v2)
    with pytest.raises(AlreadyInSlotError, match="champion"):
        reg.place(SYMBOL, v1)
    with pytest.raises(AlreadyInSlotError, match="shadow"):
        reg.place(SYMBOL, v2)
    missing = new_version_id()
    with pytest.raises(UnknownVersionError, match=missing) as info:
        reg.place(SYMBOL, missing)
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownVersionError):
        reg.metadata(SYMBOL, missing)
    assert len(ledger(reg, SYMBOL)) == 2


def test_add_version_needs_both_artifacts_and_leaves_nothing_on_failure(
    reg: Registry, tmp_path: Path
) -> None:
    """A staging dir without model.onnx or with non-object metadata is refused without residue."""
    staging = make_staging(tmp_path, "x")
    (staging / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx"):
        reg.add_version(SYMBOL, staging)
    staging = make_staging(tmp_path, "y")
    (staging / "metadata.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="JSON object"):
        reg.add_version(SYMBOL, staging)
    assert reg.versions(SYMBOL) == []
    v = reg.add_version(SYMBOL, make_staging(tmp_path, "z"))
    with pytest.raises(DuplicateVersionError, match=v):
        reg.add_version(SYMBOL, make_staging(tmp_path, "w"), version=v)
    symdir = tmp_path / "registry" / SYMBOL
    assert [p.name for p in symdir.iterdir()] == [v]


def test_model_bytes_are_checked_against_their_recorded_sha256(
    reg: Registry, tmp_path: Path
) -> None:
    """A model that is not the file its metadata hashed is refused on the way in, and a stored
    model altered afterwards is reported as corrupt instead of being served."""
    staging = make_staging(tmp_path, "x")
    v = reg.add_version(SYMBOL, staging)
    recorded = reg.metadata(SYMBOL, v).onnx
    model = (staging / "model.onnx").read_bytes()
    assert recorded is not None and recorded.sha256 == hashlib.sha256(model).hexdigest()
    stored = reg.metadata(SYMBOL, v).model_copy(update={"version": None})
    (staging / "metadata.json").write_bytes(stored.to_json())  # now names the model's hash
    (staging / "model.onnx").write_bytes(model + b"tampered")
    with pytest.raises(ArtifactError, match="sha256"):
        reg.add_version(SYMBOL, staging)
    assert reg.model_path(SYMBOL, v).read_bytes() == model
    (tmp_path / "registry" / SYMBOL / v / "model.onnx").write_bytes(b"bit rot")
    with pytest.raises(RegistryCorrupt, match="sha256"):
        reg.model_path(SYMBOL, v)


def test_version_ids_sort_by_time_and_stay_unique_under_fast_generation(reg: Registry) -> None:
    """Ids generated back to back are unique, strictly increasing and carry the current UTC time."""
    before = datetime.now(UTC).replace(microsecond=0)
    ids = [new_version_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(VERSION_PATTERN.fullmatch(v) for v in ids)
    stamp = datetime.strptime(ids[-1][:21], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    assert before <= stamp < datetime.now(UTC) + timedelta(seconds=1)


BAD_SYMBOLS = ["../x", "a/b", "", "..", "/etc", "btc"]


@pytest.mark.parametrize("bad", BAD_SYMBOLS)
def test_invalid_symbols_raise_and_write_nothing(reg: Registry, tmp_path: Path, bad: str) -> None:
    """Path-like or malformed symbols raise InvalidSymbolError before any file is touched."""
    staging = make_staging(tmp_path, "s")
    good = add(reg, tmp_path, "g")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    calls: list[Callable[[], object]] = [
        lambda: reg.add_version(bad, staging),
        lambda: reg.place(bad, good),
        lambda: reg.promote(bad, evidence={}),
        lambda: reg.reject(bad, evidence={}),
        lambda: reg.rollback(bad),
        lambda: reg.slots(bad),
        lambda: ledger(reg, bad),
        lambda: reg.versions(bad),
        lambda: reg.metadata(bad, good),
        lambda: reg.model_path(bad, good),
    ]
    for call in calls:
        with pytest.raises(InvalidSymbolError):
            call()
    with pytest.raises(ValueError, match="invalid symbol"):
        RegistryEvent("training_failed", bad, None, None, {}, utc_now())
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("bad", ["../x", "20250101T000000000000Z-a1b2/../..", "latest", ""])
def test_invalid_version_ids_raise_before_touching_paths(
    reg: Registry, tmp_path: Path, bad: str
) -> None:
    """A version id that is not VERSION_PATTERN is refused by every method taking one."""
    staging = make_staging(tmp_path, "s")
    add(reg, tmp_path, "g")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for call in (
        lambda: reg.add_version(SYMBOL, staging, version=bad),
        lambda: reg.place(SYMBOL, bad),
        lambda: reg.metadata(SYMBOL, bad),
        lambda: reg.model_path(SYMBOL, bad),
    ):
        with pytest.raises(InvalidVersionIdError, match=re.escape(repr(bad))):
            call()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_torn_last_history_line_is_skipped_then_truncated_by_next_write(
    reg: Registry, tmp_path: Path
) -> None:
    """A half-written last line is ignored by readers and removed before the next append."""
    v1, v2 = add(reg, tmp_path, "1"), add(reg, tmp_path, "2")
    reg.place(SYMBOL, v1)
    path = tmp_path / "registry" / SYMBOL / "history.jsonl"
    with path.open("ab") as f:
        f.write(b'{"event":"shadow_placed","symbol":"BTC')
    assert kinds(reg) == ["champion_bootstrapped"]
    reg.place(SYMBOL, v2)
    assert kinds(reg) == ["champion_bootstrapped", "shadow_placed"]
    assert [h["seq"] for h in ledger(reg, SYMBOL)] == [1, 2]
    assert path.read_bytes().endswith(b"}\n")


def test_corrupt_middle_history_line_raises(reg: Registry, tmp_path: Path) -> None:
    """A complete line that is not JSON is corruption, reported with the file and line number."""
    reg.place(SYMBOL, add(reg, tmp_path, "1"))
    path = tmp_path / "registry" / SYMBOL / "history.jsonl"
    path.write_bytes(b"garbage\n" + path.read_bytes())
    with pytest.raises(RegistryCorrupt, match="line 1"):
        ledger(reg, SYMBOL)


def test_record_appends_notes_with_increasing_seq_and_refuses_slot_kinds(
    reg: Registry, tmp_path: Path
) -> None:
    """record() appends training notes to history (seq continues) but never slot decisions."""
    failed = RegistryEvent(
        "training_failed", SYMBOL, None, None, {"error": "InsufficientDataError"}, utc_now()
    )
    reg.record(failed)
    reg.place(SYMBOL, add(reg, tmp_path, "1"))
    assert kinds(reg) == ["training_failed", "champion_bootstrapped"]
    assert [h["seq"] for h in ledger(reg, SYMBOL)] == [1, 2]
    assert ledger(reg, SYMBOL)[0]["evidence"] == {"error": "InsufficientDataError"}
    promoted = RegistryEvent("promoted", SYMBOL, None, None, {}, utc_now())
    with pytest.raises(ValueError, match="promoted"):
        reg.record(promoted)
    assert len(ledger(reg, SYMBOL)) == 2


def test_event_records_are_validated_frozen_and_serialize_to_the_topic_contract() -> None:
    """Events reject bad kinds, timestamps and non-JSON evidence, and copy their evidence."""
    evidence: dict[str, Any] = {"p": [0.01]}
    event = RegistryEvent("promoted", SYMBOL, "a", "b", evidence, "2025-01-01T00:00:00Z")
    evidence["p"].append(9)
    assert event.evidence == {"p": [0.01]}
    assert json.loads(event.to_json()) == {
        "event": "promoted",
        "symbol": SYMBOL,
        "from_version": "a",
        "to_version": "b",
        "evidence": {"p": [0.01]},
        "ts": "2025-01-01T00:00:00Z",
        "actor": "daemon",
        "reason": "",
    }
    with pytest.raises(TypeError):
        event.evidence["p"] = 1  # type: ignore[index]
    with pytest.raises(ValueError, match="evidence"):
        RegistryEvent("rejected", SYMBOL, None, None, {"x": float("nan")}, utc_now())
    with pytest.raises(ValueError, match="ts"):
        RegistryEvent("rejected", SYMBOL, None, None, {}, "2025-01-01 00:00:00")
    with pytest.raises(ValueError, match="unknown event kind"):
        RegistryEvent("exploded", SYMBOL, None, None, {}, utc_now())  # type: ignore[arg-type]
    on_topic = {
        kind
        for kind in get_args(EventKind)
        if RegistryEvent(kind, SYMBOL, None, None, {}, utc_now()).is_promotion_topic_event
    }
    assert on_topic == {"promoted", "rejected", "rolled_back", "champion_bootstrapped"}


def _place_many(root: str, staging_base: str, worker: int, n: int, barrier: Any) -> None:
    reg = Registry(Path(root))
    barrier.wait(timeout=30)
    for i in range(n):
        staging = make_staging(Path(staging_base), f"w{worker}-{i}")
        reg.place(SYMBOL, reg.add_version(SYMBOL, staging))


def test_two_processes_placing_concurrently_never_lose_a_decision(tmp_path: Path) -> None:
    """Under the flock, interleaved writers produce one unbroken chain of shadow decisions."""
    n = 25
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(
            target=_place_many, args=(str(tmp_path / "registry"), str(tmp_path), w, n, barrier)
        )
        for w in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]

    reg = Registry(tmp_path / "registry")
    history = ledger(reg, SYMBOL)
    assert [h["seq"] for h in history] == list(range(1, len(history) + 1))
    placed = [h for h in history if h["event"] in ("champion_bootstrapped", "shadow_placed")]
    assert len(placed) == 2 * n
    assert {h["to_version"] for h in placed} == set(reg.versions(SYMBOL))
    # Each superseded shadow is exactly the one placed just before: no decision was lost.
    superseded = [h for h in history if h["event"] == "shadow_superseded"]
    assert [h["from_version"] for h in superseded] == [h["to_version"] for h in placed[1:-1]]
    assert [h["to_version"] for h in superseded] == [h["to_version"] for h in placed[2:]]
    assert reg.slots(SYMBOL) == Slots(placed[0]["to_version"], placed[-1]["to_version"])
