"""Every registry storage backend keeps the same promises (the registry's logic relies on them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.registry import LocalStorage, MemoryStorage, Registry, RegistryStorage
from tests.support.metadata import write_sample_metadata

Backend = Callable[[Path], RegistryStorage]
BACKENDS: dict[str, Backend] = {
    "local": lambda tmp: LocalStorage(tmp / "registry"),
    "memory": lambda _tmp: MemoryStorage(),
}


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryStorage]:
    yield BACKENDS[request.param](tmp_path)


def test_put_replaces_and_get_reads_back(storage: RegistryStorage) -> None:
    """put creates or replaces an object whole; get returns its bytes, None when absent."""
    assert storage.get("A/slots.json") is None
    storage.put("A/slots.json", b"one")
    storage.put("A/slots.json", b"two")
    assert storage.get("A/slots.json") == b"two"


def test_append_adds_whole_lines_only(storage: RegistryStorage) -> None:
    """append creates the object and adds lines; data that does not end a line is refused."""
    storage.append("A/history.jsonl", b"1\n")
    storage.append("A/history.jsonl", b"2\n3\n")
    assert storage.get("A/history.jsonl") == b"1\n2\n3\n"
    with pytest.raises(ValueError, match="newline"):
        storage.append("A/history.jsonl", b"4")


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


def test_lock_excludes_a_second_holder_of_the_same_scope(storage: RegistryStorage) -> None:
    """While one thread holds a symbol's lock, another waits for it; other scopes are free."""
    events: list[str] = []
    held = threading.Event()

    def second() -> None:
        with storage.lock("A"):
            events.append("second")

    with storage.lock("A"):
        thread = threading.Thread(target=second)
        thread.start()
        with storage.lock("B"):
            events.append("other scope")
        time.sleep(0.2)  # the second holder would have run by now if the lock let it
        events.append("first done")
        held.set()
    thread.join(5)
    assert events == ["other scope", "first done", "second"]


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
