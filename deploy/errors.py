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
    ├── RegistryCorrupt(RegistryError)                     on-disk state that no crash can produce
    ├── FencedError(RegistryError)                         a daemon's write after another took over
    ├── DuplicateCommandError(RegistryError)               an operator command already in the ledger
    └── RegistryBusy(RegistryError)                        compare-and-swap lost too many times

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


class FencedError(RegistryError):
    """A daemon's write for a symbol that a newer owner has claimed (a fleet handoff).

    ``mine`` and ``theirs`` name the claims as ``owner@epoch``. The daemon counts it,
    logs it and stops acting for the symbol; the write did not happen.
    """

    def __init__(self, symbol: str, mine: str, theirs: str) -> None:
        self.symbol, self.mine, self.theirs = symbol, mine, theirs
        super().__init__(
            f"{symbol}: fenced: this daemon's claim {mine} is older than {theirs} on record; "
            "another daemon now acts for the symbol"
        )


class RegistryBusy(RegistryError):
    """A compare-and-swap write lost too many times in a row (heavy contention on a symbol)."""

    def __init__(self, symbol: str, attempts: int) -> None:
        self.symbol, self.attempts = symbol, attempts
        super().__init__(f"{symbol}: registry write still contended after {attempts} attempts")


class DuplicateCommandError(RegistryError):
    """An operator command whose id is already in the symbol's ledger (``seq``): it was
    applied once (e.g. before a crash cut off its offset commit) and is not applied again."""

    def __init__(self, symbol: str, command_id: str, seq: int | None) -> None:
        self.symbol, self.command_id, self.seq = symbol, command_id, seq
        super().__init__(f"{symbol}: command {command_id} was already applied (ledger seq {seq})")


class FdrMismatch(RegistryError, ValueError):
    """fdr.json was started with another gamma sequence than the one configured here."""

    def __init__(self, where: str, name: str, recorded: object, configured: object) -> None:
        self.where, self.name = where, name
        self.recorded, self.configured = recorded, configured
        if name == "horizon":
            remedy = f"set {name} {recorded!r} on every machine of the fleet"
        else:  # not a setting: fixed by the release
            remedy = (
                f"this release runs e-LOND with {name} {configured!r} only: keep the fleet on "
                f"the release that started it, or move {where} aside to start a new "
                "procedure, whose guarantee covers the trials from then on"
            )
        super().__init__(
            f"{where}: the fleet's e-LOND procedure was started with {name} {recorded!r}, this "
            f"daemon is configured with {configured!r}; a running procedure's sequence cannot "
            f"change ({remedy})"
        )
