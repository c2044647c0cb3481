"""Every file and directory ctd keeps under ``CTD_DATA_DIR``, named once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DataPaths:
    """The data directory's layout; nothing else builds a path inside it by hand."""

    root: Path

    @property
    def bars(self) -> Path:
        """The bar store (SQLite, WAL)."""
        return self.root / "bars.sqlite"

    @property
    def predictions(self) -> Path:
        """The prediction log: live predictions, labels, trial states (SQLite, WAL)."""
        return self.root / "predictions.sqlite"

    @property
    def registry(self) -> Path:
        """The default registry location (``CTD_REGISTRY_URL`` unset)."""
        return self.root / "registry"

    @property
    def runtime(self) -> Path:
        """Where a running daemon can be reached (pid, broker, HTTP); removed on stop."""
        return self.root / "daemon.json"

    @property
    def announced(self) -> Path:
        """Per symbol, the ledger seq up to which decisions were announced."""
        return self.root / "announced.json"

    @property
    def staging(self) -> Path:
        """Worker output before it becomes a registry version; emptied at start-up."""
        return self.root / "staging"

    @property
    def broker_log(self) -> Path:
        """Output of the bundled broker."""
        return self.root / "broker.log"

    @property
    def demo_log(self) -> Path:
        """Logs of `ctd demo` while its live table is on screen."""
        return self.root / "demo.log"

    @property
    def manifest(self) -> Path:
        """Default output of `ctd manifest`."""
        return self.root / "manifest.json"

    def compare_png(self, symbol: str) -> Path:
        """Default chart of `ctd compare SYMBOL`."""
        return self.root / "reports" / f"{symbol}-compare.png"

    def report(self, symbol: str) -> Path:
        """Default output of `ctd report SYMBOL`."""
        return self.root / "reports" / f"{symbol}.md"
