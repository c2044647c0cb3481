"""Every registry storage backend keeps the same promises (the registry's logic relies on them)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.registry import LocalStorage, MemoryStorage, Registry, RegistryStorage, open_storage
from deploy.registry.storage import Conflict
from tests.support.metadata import write_sample_metadata

Backend = Callable[[pytest.FixtureRequest, Path], RegistryStorage]
BACKENDS: dict[str, Backend] = {
    "local": lambda _request, tmp: LocalStorage(tmp / "registry"),
    "memory": lambda _request, _tmp: MemoryStorage(),
    # A fresh bucket on the session's moto S3 server (tests/support/s3.py), started on first use.
    "s3": lambda request, tmp: open_storage(
        f"s3://{request.getfixturevalue('s3_bucket')}/registry", tmp / "cache"
    ),
}


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryStorage]:
    yield BACKENDS[request.param](request, tmp_path)


def test_put_replaces_and_get_reads_back_with_a_tag_per_content(storage: RegistryStorage) -> None:
    """put creates or replaces an object whole; get returns its bytes and a tag that changes
    with them; None when absent."""
    assert storage.get("A/slots.json") is None
    storage.put("A/slots.json", b"one")
    first = storage.get("A/slots.json")
    storage.put("A/slots.json", b"two")
    second = storage.get("A/slots.json")
    assert first is not None and second is not None
    assert (first.data, second.data) == (b"one", b"two")
    assert first.tag != second.tag


def test_put_if_writes_only_over_the_object_it_names(storage: RegistryStorage) -> None:
    """put_if with None creates only; with a tag replaces only that content; a loser writes
    nothing and learns it from Conflict."""
    tag = storage.put_if("A/slots.json", b"v1", None)
    with pytest.raises(Conflict):
        storage.put_if("A/slots.json", b"v1-again", None)
    current = storage.get("A/slots.json")
    assert current is not None and (current.data, current.tag) == (b"v1", tag)
    new_tag = storage.put_if("A/slots.json", b"v2", tag)
    with pytest.raises(Conflict):
        storage.put_if("A/slots.json", b"stale", tag)
    current = storage.get("A/slots.json")
    assert current is not None and (current.data, current.tag) == (b"v2", new_tag)
    with pytest.raises(Conflict):
        storage.put_if("B/slots.json", b"x", new_tag)  # a tag for an object that is not there
    assert storage.get("B/slots.json") is None


def test_racing_writers_with_one_tag_have_exactly_one_winner(storage: RegistryStorage) -> None:
    """Eight threads replace the same read at once: one put_if lands, seven get Conflict."""
    tag = storage.put_if("A/slots.json", b"start", None)
    results: list[str] = []
    gate = threading.Barrier(8)

    def writer(n: int) -> None:
        gate.wait()
        try:
            storage.put_if("A/slots.json", f"writer {n}".encode(), tag)
            results.append("won")
        except Conflict:
            results.append("lost")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == ["lost"] * 7 + ["won"]
    current = storage.get("A/slots.json")
    assert current is not None and current.data.startswith(b"writer ")


def test_children_lists_names_under_a_prefix_and_delete_removes_a_tree(
    storage: RegistryStorage,
) -> None:
    """children names objects and sub-prefixes directly under a prefix; delete drops a subtree."""
    storage.put("A/v1/model.onnx", b"m")
    storage.put("A/v1/metadata.json", b"{}")
    storage.put("A/slots.json", b"{}")
    storage.put("B/slots.json", b"{}")
    assert storage.children("") == ["A", "B"]
    assert storage.children("A") == ["slots.json", "v1"]
    assert storage.children("A/v1") == ["metadata.json", "model.onnx"]
    storage.delete("A/v1")
    storage.delete("A/nothing-here")
    assert storage.children("A") == ["slots.json"]
    assert storage.get("A/v1/model.onnx") is None


def test_local_file_holds_the_object_bytes(storage: RegistryStorage) -> None:
    """A local file with the bytes of an object, for readers that need a path."""
    storage.put("A/v1/model.onnx", b"\x08onnx")
    assert storage.local_file("A/v1/model.onnx").read_bytes() == b"\x08onnx"
    with pytest.raises(FileNotFoundError):
        storage.local_file("A/v2/model.onnx")


def test_a_registry_works_the_same_on_every_backend(
    storage: RegistryStorage, tmp_path: Path
) -> None:
    """Versions, a decision, the ledger and recovery through the Registry on this backend."""
    registry = Registry(storage)
    staging = tmp_path / "staging"
    write_sample_metadata(staging, symbol="AAA")
    (staging / "model.onnx").write_bytes(b"model")
    v1 = registry.add_version("AAA", staging)
    v2 = registry.add_version("AAA", staging)
    registry.place("AAA", v1)
    registry.place("AAA", v2)
    promoted = registry.promote("AAA", evidence={"n": 3})
    assert (promoted.from_version, promoted.to_version, promoted.seq) == (v1, v2, 3)
    assert registry.slots("AAA").champion == v2
    assert [e.event for e in registry.history("AAA")] == [
        "champion_bootstrapped",
        "shadow_placed",
        "promoted",
    ]
    assert registry.metadata("AAA", v2).version == v2
    assert registry.model_path("AAA", v2).read_bytes() == b"model"
    assert registry.symbols() == ["AAA"]
    assert registry.versions("AAA") == [v1, v2]
    assert registry.recover() == []
