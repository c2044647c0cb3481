"""The fleet's e-LOND record (``fdr.json``): machines racing on a real directory and on a real S3
API (moto's server over loopback) never share a test index and never lose a discovery."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploy.errors import FdrMismatch, RegistryCorrupt
from deploy.registry import LocalStorage, Registry, RegistryStorage
from deploy.registry.fleet_fdr import FDR_FILE, FdrRecord, FleetFdr
from deploy.registry.s3 import S3Storage
from tests.support.s3 import MotoS3Server, is_put_of

MACHINES, EACH = 4, 8
Opener = Callable[[int], RegistryStorage]
"""Machine number -> that machine's own storage object of the one shared registry."""


@pytest.fixture(params=["local", "s3"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "local":
        return lambda _: LocalStorage(tmp_path / "registry")
    bucket = request.getfixturevalue("s3_bucket")
    return lambda machine: S3Storage(f"s3://{bucket}/fleet", tmp_path / f"cache-{machine}")


def _record(storage: RegistryStorage) -> FleetFdr:
    return FleetFdr(storage, horizon=50, rho=0.05)


class MeetBeforeWriting:
    """A storage whose first write of fdr.json waits at ``gate`` until every machine has read
    the record: their first compare-and-swaps all start from the same version."""

    def __init__(self, storage: RegistryStorage, gate: threading.Barrier) -> None:
        self._storage, self._gate, self.lost = storage, gate, 0
        self._met = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        if key == FDR_FILE and not self._met:
            self._met = True
            self._gate.wait(timeout=60)
        try:
            return self._storage.put_if(key, data, tag)
        except Exception:
            self.lost += 1
            raise


def _race(opener: Opener, work: Callable[[FleetFdr, int], list[int]]) -> list[list[int]]:
    gate = threading.Barrier(MACHINES)
    storages = [MeetBeforeWriting(opener(m), gate) for m in range(MACHINES)]
    results: list[list[int]] = [[] for _ in range(MACHINES)]
    errors: list[BaseException] = []

    def run(machine: int) -> None:
        try:
            results[machine] = work(_record(storages[machine]), machine)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in range(MACHINES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sum(s.lost for s in storages) >= MACHINES - 1  # the first writes did collide
    return results


def test_machines_claiming_at_once_never_share_an_index(opener: Opener) -> None:
    """Four machines claim 8 indices each, all starting from the same record: every index
    from 1 to 32 is handed out exactly once, and the record's counter is 33. (Separate
    LocalStorage objects lock separate descriptors: flock serialises them as it does
    processes.)"""
    claimed = _race(opener, lambda record, _: [record.claim()[0] for _ in range(EACH)])
    every = sorted(i for mine in claimed for i in mine)
    assert every == list(range(1, MACHINES * EACH + 1))
    assert all(mine == sorted(mine) for mine in claimed)  # in order of claiming, per machine
    assert _record(opener(0)).read().next_index == MACHINES * EACH + 1


def test_machines_recording_discoveries_at_once_lose_none(opener: Opener) -> None:
    """Each machine claims its indices, then records each as a discovery, all at once, some
    twice: the record ends with every one of them, each once."""

    def claim_then_discover(record: FleetFdr, _: int) -> list[int]:
        mine = [record.claim()[0] for _ in range(EACH)]
        for index in mine:
            record.discover([index])
        record.discover(mine[:3])  # a retry of writes that had landed counts nothing twice
        return mine

    claimed = _race(opener, claim_then_discover)
    every = sorted(i for mine in claimed for i in mine)
    assert _record(opener(0)).read().discoveries == tuple(every)


def test_a_claim_retried_after_it_landed_is_one_claim(
    s3_server: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """The server applies a claim and answers 500; the client's retry is refused because the
    claim landed, and put_if recognises its own bytes (each write carries a fresh token, so
    another machine's claim of the same index could never look like it): one index each."""
    storage = S3Storage(f"s3://{s3_bucket}/fleet", tmp_path)
    record = _record(storage)
    s3_server.fail_once_after(is_put_of(f"fleet/{FDR_FILE}"))
    assert record.claim()[0] == 1
    s3_server.fail_once_after(is_put_of(f"fleet/{FDR_FILE}"))
    assert record.claim()[0] == 2
    assert s3_server.pending_faults == 0
    assert record.read().next_index == 3


def test_the_record_lives_at_the_registry_root_beside_the_symbols(tmp_path: Path) -> None:
    """fdr.json is not mistaken for a symbol, and reads back as written."""
    registry = Registry(tmp_path / "registry")
    record = _record(registry.storage)
    assert record.read() == FdrRecord(50, 0.05)  # nothing yet: a fresh record
    record.claim()
    record.claim()
    after = record.discover([2])
    assert after == FdrRecord(50, 0.05, 3, (2,))
    assert registry.symbols() == []
    doc = json.loads((tmp_path / "registry" / FDR_FILE).read_text())
    assert {k: doc[k] for k in ("policy", "horizon", "rho", "next_index", "discoveries")} == {
        "policy": "e_lond",
        "horizon": 50,
        "rho": 0.05,
        "next_index": 3,
        "discoveries": [2],
    }


def test_another_sequence_is_refused_and_a_bad_document_is_corrupt(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "registry")
    _record(storage).claim()
    with pytest.raises(FdrMismatch, match="horizon 50"):
        FleetFdr(storage, horizon=20, rho=0.05).claim()
    with pytest.raises(FdrMismatch, match=r"rho 0\.05"):
        FleetFdr(storage, horizon=50, rho=0.1).read()
    for doc in (
        b"[]",
        b'{"policy": "e_lond", "horizon": 50, "rho": 0.05, "next_index": 2, "discoveries": [2]}',
        b'{"policy": "bh", "horizon": 50, "rho": 0.05, "next_index": 2, "discoveries": []}',
        b'{"policy": "e_lond", "horizon": 50, "rho": 0.05, "next_index": 3, "discoveries": [2, 1]}',
        b"not json",
    ):
        storage.put(FDR_FILE, doc)
        with pytest.raises(RegistryCorrupt, match="bad fdr document"):
            _record(storage).read()


def test_a_discovery_above_the_counter_moves_the_counter_past_it(tmp_path: Path) -> None:
    """Only after fdr.json was deleted by hand: the index is never handed out again."""
    record = _record(LocalStorage(tmp_path / "registry"))
    assert record.discover([5]).next_index == 6
    assert record.claim()[0] == 6
    with pytest.raises(ValueError, match="start at 1"):
        record.discover([0])
