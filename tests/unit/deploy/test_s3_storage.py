"""What is particular to the registry on S3 (moto's S3 server over loopback; the storage contract
itself is tests/unit/deploy/test_storage.py's, run on every backend)."""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from deploy.errors import NoShadowError
from deploy.registry import LocalStorage, Registry, RegistryStorage, Slots, open_storage
from deploy.registry import s3 as s3_module
from deploy.registry.s3 import S3Storage
from deploy.registry.storage import Conflict
from tests.support.metadata import write_sample_metadata
from tests.support.s3 import MotoS3Server, is_put_of


def _staged(tmp_path: Path, symbol: str, model: bytes = b"model") -> Path:
    staging = tmp_path / "staging"
    write_sample_metadata(staging, symbol=symbol)
    (staging / "model.onnx").write_bytes(model)
    return staging


# -- the URL ------------------------------------------------------------------------------


def test_the_url_names_bucket_and_prefix(s3_bucket: str, tmp_path: Path) -> None:
    """The prefix is optional and normalised; the storage says it is shared."""
    storage = S3Storage(f"s3://{s3_bucket}//fleet/one/", tmp_path)
    assert (storage.bucket, storage.prefix, storage.url) == (
        s3_bucket,
        "fleet/one",
        f"s3://{s3_bucket}/fleet/one",
    )
    assert S3Storage(f"s3://{s3_bucket}", tmp_path).url == f"s3://{s3_bucket}"
    assert storage.shared is True


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///prefix", "http://b/p", "s3://b/../x", "s3://b/p?x=1"]
)
def test_a_url_that_is_not_a_bucket_and_prefix_is_refused(url: str, tmp_path: Path) -> None:
    """Anything but s3://bucket[/prefix] raises ValueError naming it."""
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        S3Storage(url, tmp_path)


def test_a_botocore_without_conditional_puts_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """s3fs would drop IfMatch / IfNoneMatch unknown to botocore's model and overwrite blindly:
    S3Storage refuses to start on such a botocore."""
    real = botocore.session.Session.get_service_model

    def without_conditions(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
        model = real(self, *args, **kwargs)
        members = model.operation_model("PutObject").input_shape.members
        del members["IfMatch"], members["IfNoneMatch"]
        return model

    monkeypatch.setattr(botocore.session.Session, "get_service_model", without_conditions)
    s3_module._conditional_put_supported.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="no conditional PutObject"):
            S3Storage("s3://bucket/fleet", tmp_path)
    finally:
        s3_module._conditional_put_supported.cache_clear()


# -- failures -----------------------------------------------------------------------------

OPERATIONS: dict[str, Any] = {
    "get": lambda s: s.get("A/slots.json"),
    "put": lambda s: s.put("A/slots.json", b"x"),
    "put_if create": lambda s: s.put_if("A/slots.json", b"x", None),
    "put_if replace": lambda s: s.put_if("A/slots.json", b"x", '"0123"'),
    "children": lambda s: s.children("A"),
    "delete": lambda s: s.delete("A"),
    "local_file": lambda s: s.local_file("A/v1/model.onnx"),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_missing_bucket_is_a_storage_failure_never_an_absent_object(
    operation: str, s3_server: MotoS3Server, tmp_path: Path
) -> None:
    """Every operation on a bucket that does not exist raises OSError: not None, not Conflict,
    not FileNotFoundError (which the registry reads as "no such version")."""
    storage = S3Storage("s3://ctd-no-such-bucket/registry", tmp_path)
    with pytest.raises(OSError, match="NoSuchBucket") as raised:
        OPERATIONS[operation](storage)
    assert not isinstance(raised.value, FileNotFoundError)


def test_a_retried_put_that_had_landed_counts_as_the_success_it_was(
    s3_server: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """The server applies a put_if and answers 500; the client's retry is refused (412) because
    the first attempt landed, and put_if sees its own bytes there: success, with their tag."""
    storage = S3Storage(f"s3://{s3_bucket}/registry", tmp_path)
    s3_server.fail_once_after(is_put_of("registry/A/slots.json"))
    created = storage.put_if("A/slots.json", b'{"seq": 1}', None)
    s3_server.fail_once_after(is_put_of("registry/A/slots.json"))
    replaced = storage.put_if("A/slots.json", b'{"seq": 2}', created)
    assert s3_server.pending_faults == 0
    current = storage.get("A/slots.json")
    assert current is not None and (current.data, current.tag) == (b'{"seq": 2}', replaced)
    with pytest.raises(Conflict):  # a refusal over other bytes is still a lost race
        storage.put_if("A/slots.json", b'{"seq": 2, "owner": "b"}', created)


# -- listing, deleting, local copies ------------------------------------------------------


def test_more_than_a_page_of_names_is_listed_and_deleted(
    s3_server: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """children reads every ListObjectsV2 page (1000 entries each) and delete removes every key
    under the prefix, in several DeleteObjects batches, and nothing beside it."""
    objects = {f"registry/L/{n:05d}": b"x" for n in range(1500)}
    objects |= {f"registry/L/d{n:04d}/model.onnx": b"x" for n in range(1100)}
    objects |= {"registry/L/.hidden": b"x", "registry/L0/keep": b"x", "registry/Lx": b"x"}
    s3_server.seed(s3_bucket, objects)
    storage = S3Storage(f"s3://{s3_bucket}/registry", tmp_path)

    names = storage.children("L")
    assert names == sorted([f"{n:05d}" for n in range(1500)] + [f"d{n:04d}" for n in range(1100)])

    storage.delete("L")
    assert storage.children("L") == []
    assert storage.children("") == ["L0", "Lx"]
    left = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    assert sorted(o["Key"] for o in left["Contents"]) == ["registry/L0/keep", "registry/Lx"]


def test_local_file_downloads_once_into_the_cache(
    s3_server: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """The first call downloads the object under cache_dir; later calls serve that copy
    without asking S3 again (a version's objects never change)."""
    storage = S3Storage(f"s3://{s3_bucket}/registry", tmp_path / "cache")
    storage.put("A/v1/model.onnx", b"\x08onnx-bytes")
    path = storage.local_file("A/v1/model.onnx")
    assert path.is_relative_to(tmp_path / "cache")
    assert path.read_bytes() == b"\x08onnx-bytes"

    s3_server.client().delete_object(Bucket=s3_bucket, Key="registry/A/v1/model.onnx")
    assert storage.get("A/v1/model.onnx") is None
    assert storage.local_file("A/v1/model.onnx") == path  # served from the cache: no GET
    assert path.read_bytes() == b"\x08onnx-bytes"
    with pytest.raises(FileNotFoundError):
        storage.local_file("A/v2/model.onnx")
    assert sorted(p.name for p in path.parent.parent.iterdir()) == ["v1"]


# -- the registry on S3 -------------------------------------------------------------------


def test_a_registry_on_s3_is_the_same_registry_from_every_machine(
    s3_server: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """Versions, a decision and the ledger written through one S3Storage land under the prefix
    and read back the same through another (a second machine, its own cache)."""
    url = f"s3://{s3_bucket}/fleet"
    writer = Registry(S3Storage(url, tmp_path / "cache-a"))
    staging = _staged(tmp_path, "AAA")
    v1 = writer.add_version("AAA", staging)
    v2 = writer.add_version("AAA", staging)
    writer.place("AAA", v1)
    writer.place("AAA", v2)
    promoted = writer.promote("AAA", evidence={"n": 3})

    reader = Registry(S3Storage(url, tmp_path / "cache-b"))
    assert reader.slots("AAA") == Slots(v2, None, (v1,))
    assert reader.history("AAA") == writer.history("AAA")
    assert [(e.event, e.seq) for e in reader.history("AAA")] == [
        ("champion_bootstrapped", 1),
        ("shadow_placed", 2),
        ("promoted", 3),
    ]
    assert reader.history("AAA")[-1] == promoted
    assert reader.versions("AAA") == [v1, v2]
    assert reader.metadata("AAA", v2).version == v2
    assert reader.model_path("AAA", v2).read_bytes() == b"model"
    assert reader.model_path("AAA", v2).is_relative_to(tmp_path / "cache-b")
    assert reader.symbols() == ["AAA"]
    assert reader.recover() == []
    keys = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert sorted(o["Key"] for o in keys) == sorted(
        [
            "fleet/AAA/history.jsonl",
            "fleet/AAA/slots.json",
            *(f"fleet/AAA/{v}/{f}" for v in (v1, v2) for f in ("metadata.json", "model.onnx")),
        ]
    )


class _MeetBeforeWriting:
    """A storage whose first put_if of a slots.json waits at ``gate``: writers sharing the gate
    have all read the slots before any of them writes. Everything else goes to ``storage``."""

    def __init__(self, storage: RegistryStorage, gate: threading.Barrier, lost: list[str]) -> None:
        self._storage, self._gate, self._lost = storage, gate, lost
        self._met = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        if key.endswith("/slots.json") and not self._met:
            self._met = True
            self._gate.wait(timeout=30)
        try:
            return self._storage.put_if(key, data, tag)
        except Conflict:
            if key.endswith("/slots.json"):
                self._lost.append(key)
            raise


def test_two_machines_deciding_on_one_shadow_at_once_make_one_decision(
    s3_bucket: str, tmp_path: Path
) -> None:
    """A promote and a reject of the same shadow, from two storages, both read the slots and
    write at once: one lands; the other's compare-and-swap loses, and on its retry it finds
    no shadow (NoShadowError). The ledger records one decision."""
    url = f"s3://{s3_bucket}/fleet"
    setup = Registry(S3Storage(url, tmp_path / "setup"))
    staging = _staged(tmp_path, "AAA")
    v1, v2 = setup.add_version("AAA", staging), setup.add_version("AAA", staging)
    setup.place("AAA", v1)
    setup.place("AAA", v2)

    gate, lost = threading.Barrier(2), []
    outcomes: dict[str, str] = {}

    def decide(action: str) -> None:
        storage = _MeetBeforeWriting(S3Storage(url, tmp_path / action), gate, lost)
        registry = Registry(storage)
        try:
            getattr(registry, action)("AAA", evidence={"by": action})
            outcomes[action] = "decided"
        except NoShadowError:
            outcomes[action] = "no shadow"

    threads = [threading.Thread(target=decide, args=(a,)) for a in ("promote", "reject")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert sorted(outcomes.values()) == ["decided", "no shadow"]
    assert lost == ["AAA/slots.json"]  # the loser's first write, refused by S3
    winner = next(a for a, o in outcomes.items() if o == "decided")
    history = setup.history("AAA")
    assert [e.event for e in history] == [
        "champion_bootstrapped",
        "shadow_placed",
        {"promote": "promoted", "reject": "rejected"}[winner],
    ]
    assert history[-1].evidence == {"by": winner}
    expected = Slots(v2, None, (v1,)) if winner == "promote" else Slots(v1, None, ())
    assert setup.slots("AAA") == expected
    assert setup.state("AAA").seq == 3


# -- opening by URL, and the optional dependency ------------------------------------------


def test_open_storage_picks_the_backend_by_scheme(s3_bucket: str, tmp_path: Path) -> None:
    """s3:// opens S3Storage; a plain path or file:// opens LocalStorage; an unknown scheme
    raises ValueError naming the supported ones."""
    s3 = open_storage(f"s3://{s3_bucket}/fleet", tmp_path)
    assert isinstance(s3, S3Storage) and s3.url == f"s3://{s3_bucket}/fleet"
    for url in (str(tmp_path / "reg"), f"file://{tmp_path / 'reg'}"):
        local = open_storage(url, tmp_path)
        assert isinstance(local, LocalStorage) and local.root == tmp_path / "reg"
    with pytest.raises(ValueError, match=r"'gs'.*file://, s3://"):
        open_storage("gs://bucket/prefix", tmp_path)


def test_without_s3fs_the_import_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With s3fs missing, importing the S3 backend (or opening an s3:// URL) fails naming
    ``pip install 'ctd[s3]'``; a local registry still opens."""
    monkeypatch.setitem(sys.modules, "s3fs", None)  # what `import s3fs` meets when absent
    monkeypatch.delitem(sys.modules, "deploy.registry.s3")
    with pytest.raises(ImportError, match=r"pip install 'ctd\[s3\]'"):
        importlib.import_module("deploy.registry.s3")
    with pytest.raises(ImportError, match=r"pip install 'ctd\[s3\]'"):
        open_storage("s3://bucket/fleet", tmp_path)
    assert isinstance(open_storage(str(tmp_path / "reg"), tmp_path), LocalStorage)
