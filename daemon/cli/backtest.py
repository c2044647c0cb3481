"""``ctd backtest``: would this retrain-and-promote policy have served better signals?

Replays one symbol's history (a CSV file, or the bars the local store holds)
through the daemon's lifecycle (``daemon.backtest.replay``), scores the served
signal against the frozen first champion, retrain-and-always-swap and the naive
rule (``daemon.backtest.scores``), and writes backtest.json, backtest.md and
backtest.png (``daemon.backtest.report``). The replay's registry is kept in
``OUT/registry``. A progress bar shows on a terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from daemon.backtest.replay import Replay
from daemon.backtest.report import Costs, Report, build, write
from daemon.cli.csvfile import read_ohlcv_csv
from daemon.errors import UsageError
from daemon.settings import Settings
from daemon.store.bars import BarStore
from trainers.data import Bars, validate_symbol
from trainers.errors import InsufficientDataError
from trainers.targets import RETURN


def load_bars(settings: Settings, symbol: str, csv: Path | None) -> Bars:
    """The history to replay: the CSV file's bars, or the symbol's bars in the local store."""
    if csv is not None:
        return read_ohlcv_csv(csv)
    path = settings.paths.bars
    if not path.exists():
        raise UsageError(f"no bar store at {path}; pass --csv FILE")
    store = BarStore(path, read_only=True)
    try:
        return store.load(symbol)
    finally:
        store.close()


def backtest(
    settings: Settings, symbol: str, csv: Path | None, out: Path, *, cost_bps: float
) -> tuple[Report, list[Path]]:
    """Run the replay and write its report; (the report, the files written)."""
    validate_symbol(symbol)
    bars = load_bars(settings, symbol, csv)
    if len(bars) <= settings.min_bars:  # the lifecycle would never train
        raise InsufficientDataError(f"a backtest of {symbol}", len(bars), settings.min_bars + 1)
    if settings.target == RETURN:
        edge = settings.signal_return_threshold
        costs = Costs(edge, -edge, cost_bps, centre=0.0)
    else:
        costs = Costs(settings.signal_long_above, settings.signal_short_below, cost_bps)
    if sys.stdout.isatty():
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ) as bar:
            task = bar.add_task(f"replaying {symbol}", total=len(bars))

            def advance(done: int, _total: int) -> None:
                bar.update(task, completed=done)

            result = Replay(settings, symbol, bars, out, progress=advance).run()
    else:
        result = Replay(settings, symbol, bars, out).run()
    report = build(result, costs, _notes(settings, bars))
    return report, write(report, result, out)


def _notes(settings: Settings, bars: Bars) -> list[str]:
    """Settings that make the replay behave in ways a reader would not guess."""
    spacing = float(np.median(np.diff(bars.ts)))
    notes = []
    if settings.retrain_cooldown_seconds < spacing:
        notes.append(
            f"CTD_RETRAIN_COOLDOWN_SECONDS ({settings.retrain_cooldown_seconds:.0f} s) is shorter "
            f"than one bar ({spacing:.0f} s): a live monitor that keeps alarming retrains on "
            "every bar, as the daemon would on these bars."
        )
    if settings.retrain_backoff_cap_seconds < spacing:
        notes.append(
            f"CTD_RETRAIN_BACKOFF_CAP_SECONDS ({settings.retrain_backoff_cap_seconds:.0f} s) is "
            f"shorter than one bar ({spacing:.0f} s): a training that keeps failing (too few bars "
            "for a split, say) is retried on every bar, as the daemon would on these bars."
        )
    return notes
