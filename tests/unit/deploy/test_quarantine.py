"""The quarantine's pure logic over a real local registry: which file failed, once-only
entry, and release when the state reads whole again."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.errors import RegistryCorrupt, UnknownVersionError
from deploy.quarantine import Quarantine, Quarantined, check_symbol, reason_of
from deploy.registry import Registry
from tests.support.metadata import write_sample_metadata

SYMBOL = "AAA"


def _registry_with_champion(tmp_path: Path) -> tuple[Registry, str]:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"not checked: no sha256 in sample metadata")
    write_sample_metadata(staging, symbol=SYMBOL)
    registry = Registry(tmp_path / "registry")
    version = registry.add_version(SYMBOL, staging)
    registry.place(SYMBOL, version)
    return registry, version


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RegistryCorrupt("/r/AAA/slots.json", "bad"), "slots"),
        (RegistryCorrupt("s3://b/r/AAA/history.jsonl", "bad"), "ledger"),
        (RegistryCorrupt("/r/AAA/v/metadata.json", "bad"), "metadata"),
        (RegistryCorrupt("/r/AAA/v/model.onnx", "sha256 differs"), "model"),
        (UnknownVersionError("AAA", "v"), "version"),
    ],
)
def test_reason_names_the_file_that_failed(error: Exception, reason: str) -> None:
    assert reason_of(error) == reason


def test_a_symbol_enters_once_and_is_released_when_it_reads_whole(tmp_path: Path) -> None:
    registry, version = _registry_with_champion(tmp_path)
    check_symbol(registry, SYMBOL)  # whole: nothing raised
    meta = tmp_path / "registry" / SYMBOL / version / "metadata.json"
    saved = meta.read_bytes()
    meta.write_bytes(saved[:40])
    entered: list[Quarantined] = []
    quarantine = Quarantine(on_enter=entered.append)
    quarantine.check(registry, [SYMBOL])
    quarantine.check(registry, [SYMBOL])
    assert [(e.symbol, e.reason) for e in entered] == [(SYMBOL, "metadata")]
    assert SYMBOL in quarantine and "metadata.json" in quarantine.entries()[0].detail
    assert quarantine.recheck(registry) == []  # still broken
    meta.write_bytes(saved)
    assert quarantine.recheck(registry) == [SYMBOL]
    assert SYMBOL not in quarantine and quarantine.entries() == []


def test_a_ledger_line_that_does_not_parse_is_a_ledger_problem(tmp_path: Path) -> None:
    registry, _ = _registry_with_champion(tmp_path)
    history = tmp_path / "registry" / SYMBOL / "history.jsonl"
    history.write_text('{"not": "an event"}\n' + history.read_text())
    with pytest.raises(RegistryCorrupt) as caught:
        check_symbol(registry, SYMBOL)
    assert reason_of(caught.value) == "ledger"
