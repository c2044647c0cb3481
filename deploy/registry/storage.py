"""Where a registry keeps its objects: one small protocol, one module per backend.

Keys are ``/``-separated paths relative to the storage root, e.g.
``BTCUSDT/slots.json``. The registry (``deploy.registry.registry``) holds all
the logic; a backend only stores bytes with these guarantees:

- ``get`` returns an object's bytes and a ``tag`` naming exactly those bytes
  (an S3 ETag; a content hash locally), from one read;
- ``put`` replaces an object whole: a reader, or a restart after a crash at any
  instant, sees the previous bytes or the new ones;
- ``put_if`` is compare-and-swap: it writes only if the object is still the
  one ``tag`` names (``None``: only if there is none), else raises ``Conflict``
  and writes nothing. Every read-modify-write of the registry goes through it,
  so two writers on two machines can never both move a symbol's slots;
- ``local_file`` gives a local path holding an object's bytes, for readers that
  need a file (onnxruntime); objects under a version key never change.

``shared`` says whether other machines may write at the same time (object
storage): recovery then never deletes what might be a write in flight.

Backends: ``LocalStorage`` (a directory, the default), ``MemoryStorage`` (tests
and tools), ``S3Storage`` (``s3://bucket/prefix``, the fleet; extra ``s3``).
Every method raises ``OSError`` for storage failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Stored:
    """An object's bytes and the tag ``put_if`` compares against."""

    data: bytes
    tag: str


class Conflict(Exception):
    """A ``put_if`` lost: the object changed (or appeared, or vanished) since it was read."""

    def __init__(self, key: str, tag: str | None) -> None:
        self.key, self.tag = key, tag
        expected = "no object" if tag is None else f"tag {tag}"
        super().__init__(f"{key}: expected {expected}; another writer got there first")


class RegistryStorage(Protocol):
    """Bytes by key, with atomic replace, compare-and-swap, listing and local copies."""

    @property
    def url(self) -> str:
        """Where the objects live, for messages and manifests."""
        ...

    @property
    def shared(self) -> bool:
        """True when processes on other machines may write concurrently."""
        ...

    def get(self, key: str) -> Stored | None:
        """The object's bytes and tag, or None if there is none."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically (for objects written once, under new keys)."""
        ...

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Replace the object only if it is still the one ``tag`` names (None: only create it);
        return the new tag. Conflict, and nothing written, otherwise."""
        ...

    def children(self, prefix: str) -> list[str]:
        """Sorted names directly under ``prefix`` ("" for the root): objects and sub-prefixes."""
        ...

    def delete(self, prefix: str) -> None:
        """Remove the object or everything under ``prefix``; nothing there is not an error."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """Sorted keys of every object under ``prefix``, at any depth, relative to it (one
        listing, not one per level: retention looks at a symbol's every version at once).
        Names starting with ``.`` are internal and left out, as in ``children``."""
        ...

    def local_file(self, key: str) -> Path:
        """A local file with the object's bytes. FileNotFoundError if there is no object."""
        ...

    def sweep(self, scope: str) -> list[str]:
        """Remove what interrupted writes under ``scope`` left behind; one note per item."""
        ...
