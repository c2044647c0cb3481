"""The registry in memory: for unit tests of the live path, outcomes and watchers, and tools.

``local_file`` writes an object to a private temporary directory on first use
(version objects never change, so the copy stays true); the directory goes
with the storage.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

from deploy.registry.storage import Conflict, Stored


class MemoryStorage:
    """``RegistryStorage`` in a dict; thread-safe; one process only. Tags are counters."""

    shared = False

    def __init__(self) -> None:
        self._objects: dict[str, Stored] = {}
        self._guard = threading.Lock()
        self._writes = itertools.count(1)
        self._files: Path | None = None

    @property
    def url(self) -> str:
        return f"memory://{id(self):x}"

    def get(self, key: str) -> Stored | None:
        with self._guard:
            return self._objects.get(key.strip("/"))

    def put(self, key: str, data: bytes) -> None:
        with self._guard:
            self._objects[key.strip("/")] = Stored(bytes(data), str(next(self._writes)))

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        with self._guard:
            current = self._objects.get(key.strip("/"))
            if (current.tag if current is not None else None) != tag:
                raise Conflict(key, tag)
            stored = Stored(bytes(data), str(next(self._writes)))
            self._objects[key.strip("/")] = stored
            return stored.tag

    def children(self, prefix: str) -> list[str]:
        start = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        with self._guard:
            names = {k[len(start) :].split("/")[0] for k in self._objects if k.startswith(start)}
        return sorted(n for n in names if n and not n.startswith("."))

    def delete(self, prefix: str) -> None:
        key = prefix.strip("/")
        with self._guard:
            for k in [k for k in self._objects if k == key or k.startswith(f"{key}/")]:
                del self._objects[k]

    def keys(self, prefix: str) -> list[str]:
        start = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        with self._guard:
            found = [k[len(start) :] for k in self._objects if k.startswith(start)]
        return sorted(k for k in found if not any(p.startswith(".") for p in k.split("/")))

    def local_file(self, key: str) -> Path:
        stored = self.get(key)
        if stored is None:
            raise FileNotFoundError(f"no object {key!r} in {self.url}")
        with self._guard:
            if self._files is None:
                self._files = Path(tempfile.mkdtemp(prefix="ctd-registry-"))
                weakref.finalize(self, shutil.rmtree, self._files, True)
            path = self._files.joinpath(*key.strip("/").split("/"))
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(stored.data)
        return path

    def sweep(self, scope: str) -> list[str]:
        return []
