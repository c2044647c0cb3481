"""Every file and directory ctd keeps under ``CTD_DATA_DIR``, named once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class _Under:
    """A name inside the data directory, read as ``paths.root / name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, paths: DataPaths, owner: type | None = None) -> Path:
        return paths.root / self.name


@dataclass(frozen=True, slots=True)
class DataPaths:
    """The data directory's layout; nothing else builds a path inside it by hand."""

    root: Path

    bars = _Under("bars.sqlite")
    """The bar store (SQLite, WAL)."""
    predictions = _Under("predictions.sqlite")
    """The prediction log: live predictions, labels, trial states (SQLite, WAL)."""
    registry = _Under("registry")
    """The default registry location (``CTD_REGISTRY_URL`` unset)."""
    registry_cache = _Under("registry-cache")
    """Local copies of model files from an object-store registry (immutable, so never stale)."""
    runtime = _Under("daemon.json")
    """Where a running daemon can be reached (pid, broker, HTTP); removed on stop."""
    member = _Under("member")
    """This daemon's name in registry claims when no static group instance id is set."""
    commands_secret = _Under("commands.secret")
    """The key operator commands are signed with when ``CTD_COMMANDS_SECRET`` is unset
    (generated once, mode 0600; the CLI of this machine reads it)."""
    announced = _Under("announced.json")
    """Per symbol, the ledger seq up to which decisions were announced."""
    staging = _Under("staging")
    """Worker output before it becomes a registry version; emptied at start-up."""
    broker_log = _Under("broker.log")
    """Output of the bundled broker."""
    demo_log = _Under("demo.log")
    """Logs of `ctd demo` while its live table is on screen."""
    manifest = _Under("manifest.json")
    """Default output of `ctd manifest`."""
    tuning = _Under("tuning")
    """Hyperparameter tuning: the studies and each symbol's best params (`ctd tune`)."""
    studies = _Under("tuning/studies.sqlite3")
    """Every optuna study, one per symbol, trainer and search problem (SQLite)."""

    def compare_png(self, symbol: str) -> Path:
        """Default chart of `ctd compare SYMBOL`."""
        return self.root / "reports" / f"{symbol}-compare.png"

    def tuned(self, symbol: str) -> Path:
        """The best tuned params of ``symbol``, per trainer (JSON; ``daemon.training.tuned``)."""
        return self.root / "tuning" / f"{symbol}.json"

    def report(self, symbol: str) -> Path:
        """Default output of `ctd report SYMBOL`."""
        return self.root / "reports" / f"{symbol}.md"
