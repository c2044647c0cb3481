"""``ctd doctor [SYMBOL] [--apply]``: what is wrong with each symbol's registry state, and the
repair (``deploy.doctor``); ``--apply`` carries the repairs out.

Safe beside a running daemon: every slot change goes through the registry (a ledger
line by actor ``doctor``), and the daemon re-checks quarantined symbols every minute,
so a repaired symbol is served again without a restart.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.console import Console

from daemon.errors import EXIT_FAILURE, EXIT_OK
from daemon.registry import open_registry
from daemon.settings import Settings
from deploy.doctor import Finding, diagnose, repair_symbol
from trainers.data import validate_symbol


def doctor(
    settings: Settings, symbol: str | None, *, apply: bool, as_json: bool, console: Console
) -> int:
    """Exit 0 when every symbol reads whole (after ``--apply``'s repairs), else 1."""
    registry = open_registry(settings)
    symbols = [validate_symbol(symbol)] if symbol is not None else registry.symbols()
    report = []
    for name in symbols:
        if apply:
            done = repair_symbol(registry, name)
            report += [{**_finding(f), "done": what} for f, what in done]
        else:
            finding = diagnose(registry, name)
            report += [] if finding is None else [_finding(finding)]
    left = [name for name in symbols if diagnose(registry, name) is not None]
    if as_json:
        print(json.dumps({"findings": report, "unrepaired": left}, indent=2))
        return EXIT_FAILURE if left else EXIT_OK
    for item in report:
        console.print(f"{item['symbol']}: {item['reason']}: {item['problem']}", markup=False)
        verb = "repaired" if apply else "repair (--apply)"
        console.print(f"  {verb}: {item.get('done', item['explain'])}", markup=False)
    if not report:
        console.print(f"{len(symbols)} symbol(s) checked: every one reads whole")
    return EXIT_FAILURE if left else EXIT_OK


def _finding(finding: Finding) -> dict[str, str]:
    return asdict(finding)
