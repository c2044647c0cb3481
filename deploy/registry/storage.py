"""Where a registry keeps its objects: one small protocol, one module per backend.

Keys are ``/``-separated paths relative to the storage root, e.g.
``BTCUSDT/slots.json``. The registry (``deploy.registry.registry``) holds all
the logic; a backend only stores bytes with these guarantees:

- ``put`` replaces an object whole: a reader, or a restart after a crash at any
  instant, sees the previous bytes or the new ones;
- ``append`` adds whole lines; a crash leaves at most a torn last line, which
  ``get`` still returns and the registry skips (the next ``append`` drops it);
- ``lock(scope)`` excludes every other holder of the same scope on the same
  storage, across processes (the daemon and an operator's CLI);
- ``local_file`` gives a local path holding an object's bytes, for readers that
  need a file (onnxruntime); objects under a version key never change.

Backends: ``LocalStorage`` (a directory, the default), ``MemoryStorage`` (tests
and tools). Every method raises ``OSError`` for storage failures.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol


class RegistryStorage(Protocol):
    """Bytes by key, with atomic replace, line append, listing and an exclusive lock."""

    @property
    def url(self) -> str:
        """Where the objects live, for messages and manifests."""
        ...

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is none."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically."""
        ...

    def append(self, key: str, data: bytes) -> None:
        """Append whole lines (``data`` ends in a newline), creating the object if needed."""
        ...

    def children(self, prefix: str) -> list[str]:
        """Sorted names directly under ``prefix`` ("" for the root): objects and sub-prefixes."""
        ...

    def delete(self, prefix: str) -> None:
        """Remove the object or everything under ``prefix``; nothing there is not an error."""
        ...

    def lock(self, scope: str) -> AbstractContextManager[None]:
        """Hold an exclusive lock on ``scope`` (a symbol) for the duration of the block."""
        ...

    def local_file(self, key: str) -> Path:
        """A local file with the object's bytes. FileNotFoundError if there is no object."""
        ...

    def sweep(self, scope: str) -> list[str]:
        """Remove what interrupted writes under ``scope`` left behind; one note per item."""
        ...
