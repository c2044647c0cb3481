"""A version's evidence (predictions.csv, candidates/*.onnx) in the registry: stored before the
metadata that makes the version visible, listed and opened, pruned to the newest versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import SettingsError
from daemon.registry import open_registry
from daemon.settings import load_settings
from deploy.errors import UnknownVersionError
from deploy.registry import LocalStorage, MemoryStorage, Registry, RegistryStorage, Slots
from deploy.registry.s3 import S3Storage
from tests.support.metadata import write_sample_metadata

SYMBOL = "EURUSD"
V = [f"20250101T00000{i}000000Z-0a0{i}" for i in range(6)]
EVIDENCE = ["candidates/naive.onnx", "candidates/xgboost.onnx", "predictions.csv"]

Opener = Callable[[Path], RegistryStorage]
BACKENDS: dict[str, Opener] = {
    "local": lambda root: LocalStorage(root / "registry"),
    "memory": lambda _: MemoryStorage(),
}


def _stage(base: Path, name: str, *, evidence: bool = True) -> Path:
    """A staging dir as train_symbol leaves it; each file's bytes name the run."""
    staging = base / f"staging-{name}"
    write_sample_metadata(staging, symbol=SYMBOL)
    (staging / "model.onnx").write_bytes(f"model {name}".encode())
    if evidence:
        (staging / "candidates").mkdir()
        for trainer in ("xgboost", "naive"):
            (staging / "candidates" / f"{trainer}.onnx").write_bytes(f"{trainer} {name}".encode())
        (staging / "predictions.csv").write_text(f"row,ts,label,fwd_return\n0,1,0,0.5 # {name}\n")
        (staging / "candidates" / "notes.txt").write_text("not evidence: never copied")
    return staging


def _add(registry: Registry, base: Path, *indexes: int) -> None:
    for i in indexes:
        registry.add_version(SYMBOL, _stage(base, str(i)), version=V[i])


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> RegistryStorage:
    return BACKENDS[request.param](tmp_path)


class FailingStorage:
    """A storage that raises OSError (a crash, to the registry) on the first write whose key
    ends with ``fail_on``; everything else goes to ``storage``."""

    def __init__(self, storage: RegistryStorage, fail_on: str, method: str = "put") -> None:
        self._storage, self.fail_on, self._method = storage, fail_on, method

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def _check(self, method: str, key: str) -> None:
        if self.fail_on and method == self._method and key.endswith(self.fail_on):
            self.fail_on = ""
            raise OSError(f"injected: {method} {key}")

    def put(self, key: str, data: bytes) -> None:
        self._check("put", key)
        self._storage.put(key, data)

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        self._check("put_if", key)
        return self._storage.put_if(key, data, tag)

    def delete(self, prefix: str) -> None:
        self._check("delete", prefix)
        self._storage.delete(prefix)


# -- storing and reading ------------------------------------------------------------------


def test_add_version_stores_the_evidence_and_readers_list_and_open_it(
    storage: RegistryStorage, tmp_path: Path
) -> None:
    """predictions.csv and candidates/*.onnx are copied with the version (nothing else of the
    staging dir); evidence_path gives their bytes."""
    registry = Registry(storage)
    staging = _stage(tmp_path, "a")
    registry.add_version(SYMBOL, staging, version=V[0])
    assert registry.evidence_files(SYMBOL, V[0]) == EVIDENCE
    for name in EVIDENCE:
        assert (
            registry.evidence_path(SYMBOL, V[0], name).read_bytes() == (staging / name).read_bytes()
        )
    assert storage.children(f"{SYMBOL}/{V[0]}/candidates") == ["naive.onnx", "xgboost.onnx"]


def test_a_run_without_evidence_adds_a_version_without_any(
    storage: RegistryStorage, tmp_path: Path
) -> None:
    """Evidence is optional: a staging dir with model and metadata alone is a version."""
    registry = Registry(storage)
    registry.add_version(SYMBOL, _stage(tmp_path, "a", evidence=False), version=V[0])
    assert registry.versions(SYMBOL) == [V[0]]
    assert registry.evidence_files(SYMBOL, V[0]) == []


def test_evidence_readers_refuse_other_names_and_unknown_versions(
    storage: RegistryStorage, tmp_path: Path
) -> None:
    """A name outside the evidence pattern is a ValueError (model.onnx, paths out of the
    version); a missing file FileNotFoundError; an unknown version UnknownVersionError."""
    registry = Registry(storage)
    _add(registry, tmp_path, 0)
    for name in ("model.onnx", "candidates/../metadata.json", "candidates/notes.txt"):
        with pytest.raises(ValueError, match="not an evidence file"):
            registry.evidence_path(SYMBOL, V[0], name)
    with pytest.raises(FileNotFoundError):
        registry.evidence_path(SYMBOL, V[0], "candidates/lstm.onnx")
    with pytest.raises(UnknownVersionError):
        registry.evidence_files(SYMBOL, V[1])


# -- retention ------------------------------------------------------------------------------


def test_retention_keeps_the_newest_versions_evidence_and_every_model(
    storage: RegistryStorage, tmp_path: Path
) -> None:
    """With keep_evidence=2, each add deletes the evidence of versions older than the 2
    newest; every version's model and metadata stay, slotted or not."""
    registry = Registry(storage, keep_evidence=2)
    _add(registry, tmp_path, 0, 1)
    registry.place(SYMBOL, V[0])
    _add(registry, tmp_path, 2, 3)
    assert [registry.evidence_files(SYMBOL, v) for v in V[:4]] == [[], [], EVIDENCE, EVIDENCE]
    assert registry.versions(SYMBOL) == V[:4]
    assert registry.slots(SYMBOL) == Slots(V[0], None)
    for i, v in enumerate(V[:4]):
        assert registry.model_path(SYMBOL, v).read_bytes() == f"model {i}".encode()
        assert registry.metadata(SYMBOL, v).version == v


def test_keep_zero_copies_no_evidence_and_removes_what_older_versions_kept(
    storage: RegistryStorage, tmp_path: Path
) -> None:
    """keep_evidence=0: the new version stores none, and the registry ends up with none."""
    _add(Registry(storage), tmp_path, 0)
    _add(Registry(storage, keep_evidence=0), tmp_path, 1)
    assert [Registry(storage).evidence_files(SYMBOL, v) for v in V[:2]] == [[], []]


def test_recover_applies_a_lowered_retention_without_a_new_version(
    storage: RegistryStorage, tmp_path: Path
) -> None:
    """A restart with a smaller setting prunes at start-up, one note per version cleaned."""
    _add(Registry(storage), tmp_path, 0, 1, 2)
    cleaned = Registry(storage, keep_evidence=1).recover()
    assert sum("removed evidence" in line for line in cleaned) == 2
    assert [Registry(storage).evidence_files(SYMBOL, v) for v in V[:3]] == [[], [], EVIDENCE]


def test_a_failed_prune_keeps_the_version_and_the_next_add_prunes(
    storage: RegistryStorage, tmp_path: Path
) -> None:
    """Retention is best effort after the version is in: a storage error while deleting old
    evidence does not fail add_version, and the next add deletes what it left."""
    _add(Registry(storage, keep_evidence=1), tmp_path, 0)
    failing = FailingStorage(storage, "predictions.csv", method="delete")
    registry = Registry(failing, keep_evidence=1)
    _add(registry, tmp_path, 1)
    assert registry.versions(SYMBOL) == V[:2]
    assert registry.evidence_files(SYMBOL, V[0]) != []
    _add(registry, tmp_path, 2)
    assert [registry.evidence_files(SYMBOL, v) for v in V[:3]] == [[], [], EVIDENCE]


def test_a_negative_retention_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_evidence must be >= 0, got -1"):
        Registry(tmp_path, keep_evidence=-1)


# -- crash consistency ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fail_on", "method"),
    [("candidates/xgboost.onnx", "put"), ("predictions.csv", "put"), ("metadata.json", "put_if")],
)
def test_a_crash_during_or_after_the_evidence_copy_leaves_no_visible_version(
    tmp_path: Path, fail_on: str, method: str
) -> None:
    """Cut off while copying evidence or writing metadata.json: no version is visible,
    recover removes the dead copy, and adding again (the same id) succeeds whole."""
    root = tmp_path / "registry"
    _add(Registry(root), tmp_path, 0)
    registry = Registry(FailingStorage(LocalStorage(root), fail_on, method))
    staging = _stage(tmp_path, "1")
    with pytest.raises(OSError, match="injected"):
        registry.add_version(SYMBOL, staging, version=V[1])
    assert registry.versions(SYMBOL) == [V[0]]
    assert registry.unplaced(SYMBOL) == [V[0]]
    with pytest.raises(UnknownVersionError):
        registry.evidence_files(SYMBOL, V[1])
    assert any("incomplete version" in line for line in Registry(root).recover())
    assert not (root / SYMBOL / V[1]).exists()
    registry.add_version(SYMBOL, staging, version=V[1])
    assert registry.versions(SYMBOL) == V[:2]
    assert registry.evidence_files(SYMBOL, V[1]) == EVIDENCE


def test_a_retry_at_a_dead_attempts_id_keeps_none_of_its_evidence(tmp_path: Path) -> None:
    """On shared storage a dead copy is not recovered; a new add at its id replaces the files
    and drops evidence the new run does not have."""
    storage = MemoryStorage()
    registry = Registry(FailingStorage(storage, "metadata.json", "put_if"))
    with pytest.raises(OSError, match="injected"):
        registry.add_version(SYMBOL, _stage(tmp_path, "dead"), version=V[0])
    registry.add_version(SYMBOL, _stage(tmp_path, "next", evidence=False), version=V[0])
    assert registry.evidence_files(SYMBOL, V[0]) == []
    assert registry.model_path(SYMBOL, V[0]).read_bytes() == b"model next"


# -- the listing retention uses ---------------------------------------------------------------


def test_keys_lists_every_object_under_a_prefix_at_any_depth(storage: RegistryStorage) -> None:
    """Relative to the prefix, sorted, hidden names left out; nothing there is []."""
    for key in ("A/v1/model.onnx", "A/v1/candidates/x.onnx", "A/slots.json", "B/v1/model.onnx"):
        storage.put(key, b"x")
    assert storage.keys("A") == ["slots.json", "v1/candidates/x.onnx", "v1/model.onnx"]
    assert storage.keys("A/v1/candidates") == ["x.onnx"]
    assert storage.keys("C") == []
    assert "B/v1/model.onnx" in storage.keys("")


# -- on S3 ----------------------------------------------------------------------------------------


def test_on_s3_evidence_is_stored_listed_and_pruned(s3_bucket: str, tmp_path: Path) -> None:
    """The real S3 API (moto over loopback): keys() pages through ListObjectsV2 without a
    delimiter; retention deletes the old evidence objects and leaves the models."""
    storage = S3Storage(f"s3://{s3_bucket}/fleet", tmp_path / "cache")
    registry = Registry(storage, keep_evidence=1)
    _add(registry, tmp_path, 0)
    assert registry.evidence_files(SYMBOL, V[0]) == EVIDENCE
    assert registry.evidence_path(SYMBOL, V[0], "candidates/naive.onnx").read_bytes() == (
        b"naive 0"
    )
    _add(registry, tmp_path, 1)
    assert storage.keys(SYMBOL) == sorted(
        [
            f"{V[0]}/metadata.json",
            f"{V[0]}/model.onnx",
            f"{V[1]}/metadata.json",
            f"{V[1]}/model.onnx",
            *(f"{V[1]}/{name}" for name in EVIDENCE),
        ]
    )
    with pytest.raises(FileNotFoundError):  # a cached copy does not outlive the object
        registry.evidence_path(SYMBOL, V[0], "candidates/naive.onnx")


# -- the setting ----------------------------------------------------------------------------------


def test_the_retention_setting_reaches_the_registry(tmp_path: Path) -> None:
    """CTD_KEEP_CANDIDATE_VERSIONS (default 5) is the registry's keep_evidence, for the daemon
    and for operator actions; a negative value is refused naming the setting."""
    assert open_registry(load_settings(data_dir=tmp_path)).keep_evidence == 5
    registry = open_registry(load_settings(data_dir=tmp_path, keep_candidate_versions=0))
    assert (registry.keep_evidence, registry.unfenced().keep_evidence) == (0, 0)
    with pytest.raises(SettingsError, match="CTD_KEEP_CANDIDATE_VERSIONS"):
        load_settings(data_dir=tmp_path, keep_candidate_versions=-1)
