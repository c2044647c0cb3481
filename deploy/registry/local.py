"""The registry in a local directory: durable files (``deploy.durable``) and flock locks."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from deploy import durable

LOCK_FILE: Final = ".lock"


class LocalStorage:
    """``RegistryStorage`` on a directory. Hidden names (``.lock``, temp files) are internal."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def url(self) -> str:
        return str(self.root)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put(self, key: str, data: bytes) -> None:
        durable.write_atomic(self._path(key), data)

    def append(self, key: str, data: bytes) -> None:
        durable.append_lines(self._path(key), data)

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

    @contextmanager
    def lock(self, scope: str) -> Iterator[None]:
        directory = self._path(scope)
        durable.make_dirs(directory)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

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

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") or "\\" in p for p in parts):
            raise ValueError(f"registry key {key!r} leaves the storage root")
        return self.root.joinpath(*parts)
