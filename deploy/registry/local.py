"""The registry in a local directory: durable files (``deploy.durable``), flock for put_if."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from deploy import durable
from deploy.registry.storage import Conflict, Stored

LOCK_FILE: Final = ".lock"


class LocalStorage:
    """``RegistryStorage`` on a directory. Hidden names (``.lock``, temp files) are internal.

    A tag is the SHA-256 of the bytes. ``put_if`` compares and replaces while holding
    an exclusive flock on the object's directory, so it is atomic across processes
    on this machine (the daemon and an operator's CLI).
    """

    shared = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def url(self) -> str:
        return str(self.root)

    def get(self, key: str) -> Stored | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return Stored(data, _tag(data))

    def put(self, key: str, data: bytes) -> None:
        durable.write_atomic(self._path(key), data)

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        path = self._path(key)
        with self._locked(path.parent):
            current = self.get(key)
            if (current.tag if current is not None else None) != tag:
                raise Conflict(key, tag)
            durable.write_atomic(path, data)
        return _tag(data)

    def children(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if not p.name.startswith("."))

    def delete(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            "/".join(rel.parts)
            for rel in (p.relative_to(base) for p in base.rglob("*") if p.is_file())
            if not any(part.startswith(".") for part in rel.parts)
        )

    def local_file(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object {key!r} in {self.root}")
        return path

    def sweep(self, scope: str) -> list[str]:
        """Temp files of an interrupted replace, and (from earlier releases) unfinished
        ``.staging-*`` version copies."""
        notes: list[str] = []
        base = self._path(scope)
        if not base.is_dir():
            return notes
        for path in sorted(base.rglob(".*")):
            if path.name == LOCK_FILE or not path.exists():
                continue
            if path.is_dir():
                shutil.rmtree(path)
                notes.append(f"{path}: removed unfinished version copy")
            elif path.name.endswith(".tmp"):
                path.unlink()
                notes.append(f"{path}: removed unfinished write")
        return notes

    @contextmanager
    def _locked(self, directory: Path) -> Iterator[None]:
        durable.make_dirs(directory)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") or "\\" in p for p in parts):
            raise ValueError(f"registry key {key!r} leaves the storage root")
        return self.root.joinpath(*parts)


def _tag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
