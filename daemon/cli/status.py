"""``ctd status``: the status rows of ``daemon.status`` as a table or JSON."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from daemon.errors import EXIT_FAILURE, EXIT_OK
from daemon.registry import open_registry
from daemon.settings import Settings
from daemon.status import all_status
from daemon.store.bars import BarStore


def print_status(settings: Settings, symbol: str | None, *, as_json: bool, console: Console) -> int:
    """``ctd status``: a table (or JSON) of every symbol, or of one; exit code."""
    bars = settings.paths.bars
    store = BarStore(bars, read_only=True) if bars.exists() else None
    try:
        rows = all_status(store, open_registry(settings), symbol)
    finally:
        if store is not None:
            store.close()
    if symbol is not None and not rows:
        print(f"ctd: no data for symbol {symbol!r} in {settings.data_dir}", file=sys.stderr)
        return EXIT_FAILURE
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return EXIT_OK
    table = Table(title=f"ctd status ({settings.data_dir})")
    for col in (
        "symbol",
        "bars",
        "versions",
        "champion",
        "trainer",
        "test acc",
        "shadow",
        "last event",
        "at",
        "failures",
        "owner",
    ):
        table.add_column(col)
    for r in rows:
        acc = "-" if r.champion_test_accuracy is None else f"{100 * r.champion_test_accuracy:.1f}%"
        table.add_row(
            r.symbol,
            str(r.bars),
            str(r.versions),
            r.champion or "-",
            r.champion_trainer or "-",
            acc,
            r.shadow or "-",
            r.last_event or "-",
            r.last_event_ts or "-",
            str(r.failures),
            r.owner or "-",
        )
    console.print(table)
    for r in rows:  # below the table: the reason needs the width
        if r.quarantined is not None:
            console.print(f"{r.symbol} is quarantined: {r.quarantined}", markup=False)
    return EXIT_OK
