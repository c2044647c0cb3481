"""Errors raised by the model registry.

Hierarchy::

    RegistryError(Exception)
    ├── UnknownVersionError(RegistryError, KeyError)       no complete version with that id
    ├── InvalidVersionIdError(RegistryError, ValueError)   an id that is not a registry version id
    ├── ArtifactError(RegistryError)                       staging dir lacks model.onnx / metadata
    ├── DuplicateVersionError(RegistryError)               adding a version id that already exists
    ├── AlreadyInSlotError(RegistryError)                  placing the current champion or shadow
    ├── NoShadowError(RegistryError)                       promote / reject with an empty shadow
    ├── NoChampionError(RegistryError)                     rollback with no champion at all
    ├── NothingToRollBackError(RegistryError)              rollback with no previous champion
    └── RegistryCorrupt(RegistryError)                     on-disk state that no crash can produce

An invalid symbol raises ``trainers.data.InvalidSymbolError`` (a ``ValueError``),
the one symbol error every package shares.
"""

from __future__ import annotations

from pathlib import Path


class RegistryError(Exception):
    """Base class of every error the registry raises on purpose."""


class UnknownVersionError(RegistryError, KeyError):
    def __init__(self, symbol: str, version: str) -> None:
        self.symbol, self.version = symbol, version
        super().__init__(f"{symbol}: no complete version {version!r} in the registry")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InvalidVersionIdError(RegistryError, ValueError):
    def __init__(self, version: object, pattern: str) -> None:
        self.version = version
        super().__init__(f"invalid version id {version!r}: must match {pattern}")


class ArtifactError(RegistryError):
    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class DuplicateVersionError(RegistryError):
    def __init__(self, symbol: str, version: str) -> None:
        self.symbol, self.version = symbol, version
        super().__init__(f"{symbol}: version {version} already exists")


class AlreadyInSlotError(RegistryError):
    def __init__(self, symbol: str, version: str, slot: str) -> None:
        self.symbol, self.version, self.slot = symbol, version, slot
        super().__init__(f"{symbol}: version {version} is already the {slot}")


class NoShadowError(RegistryError):
    def __init__(self, symbol: str, action: str) -> None:
        self.symbol, self.action = symbol, action
        super().__init__(f"{symbol}: cannot {action}, there is no shadow")


class NoChampionError(RegistryError):
    def __init__(self, symbol: str, action: str) -> None:
        self.symbol, self.action = symbol, action
        super().__init__(f"{symbol}: cannot {action}, there is no champion")


class NothingToRollBackError(RegistryError):
    def __init__(self, symbol: str, champion: str) -> None:
        self.symbol, self.champion = symbol, champion
        super().__init__(
            f"{symbol}: cannot roll back champion {champion}, no previous champion is retired"
        )


class RegistryCorrupt(RegistryError):
    """``where``: the file or object (a path or a storage URL) that is corrupt."""

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where, self.problem = str(where), problem
        super().__init__(f"{where}: {problem}")
