"""``ctd tune``: search one trainer's hyperparameters for a symbol, offline.

Bars come from the daemon's bar store (``SYMBOL``) or an OHLCV CSV file
(``--csv FILE --symbol S``), the newest ``CTD_TRAIN_WINDOW_BARS`` of them, as a
retrain would see them. The study continues in ``<data_dir>/tuning/studies.sqlite3``
and the best params are stored for the symbol (``daemon.training.tuned``), where
every later retrain of it, in the daemon or by ``ctd train``, picks them up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from daemon.cli.csvfile import read_ohlcv_csv
from daemon.errors import EXIT_FAILURE, EXIT_OK, UsageError
from daemon.settings import Settings
from daemon.store.bars import BarStore
from daemon.training.tuned import TunedParams, TunedStore
from trainers.data import Bars, validate_symbol
from trainers.tuning import TuningResult, tune


@dataclass(frozen=True, slots=True)
class TuneOutcome:
    """A ``ctd tune`` run: the search's result and where the best params went (None when
    no trial completed, so nothing was stored)."""

    result: TuningResult
    saved: Path | None


def tune_symbol(
    settings: Settings,
    symbol: str,
    trainer: str,
    *,
    csv: Path | None,
    trials: int,
    timeout: float,
    seed: int | None = None,
) -> TuneOutcome:
    """Tune ``trainer`` for ``symbol`` on its bars and store the best params.

    The base config is ``settings.train_config``: the operator's trainer params,
    never earlier tuned ones (a search starts from what the operator set).
    Raises InvalidSymbolError, UsageError (no bars), CsvFormatError, and
    ``trainers.tuning.tune``'s errors (unknown trainer, nothing to tune, too
    few bars, optuna missing).
    """
    validate_symbol(symbol)
    bars = _bars(settings, symbol, csv).tail(settings.train_window_bars)
    result = tune(
        symbol,
        bars,
        settings.train_config,
        trainer,
        trials=trials,
        timeout=timeout,
        storage=settings.paths.studies,
        seed=seed,
    )
    record = TunedParams.from_result(result)
    saved = None if record is None else TunedStore(settings.paths).save(symbol, record)
    return TuneOutcome(result, saved)


def print_outcome(outcome: TuneOutcome, console: Console, *, trained: tuple[str, ...]) -> int:
    """The result as a small table; the exit code (1 when no trial ever completed)."""
    r = outcome.result
    table = Table(title=f"ctd tune {r.symbol} {r.trainer}", show_header=False)
    table.add_row("best value", "-" if r.value is None else f"{r.value:.5f} ({r.objective})")
    table.add_row("best trial", "-" if r.best_trial is None else str(r.best_trial))
    for name, value in sorted((r.params or {}).items()):
        table.add_row(f"  {name}", repr(value))
    done = f"{r.completed} completed, {r.pruned} pruned, {r.failed} failed"
    table.add_row("this run", f"{done} in {r.seconds:.1f} s ({r.folds} folds, {r.n_bars} bars)")
    table.add_row("study", f"{r.study} ({r.study_trials} trials)")
    console.print(table)
    for error in r.errors[:3]:
        console.print(f"failed trial: {error}")
    if outcome.saved is None:
        console.print("no trial completed: nothing stored (raise --timeout or check the errors)")
        return EXIT_FAILURE
    console.print(f"saved: {outcome.saved}")
    if r.trainer not in trained:
        console.print(
            f"note: {r.trainer} is not in CTD_TRAINERS; retrains use these params once it is "
            f"(or `ctd train --trainers {r.trainer}`)"
        )
    return EXIT_OK


def _bars(settings: Settings, symbol: str, csv: Path | None) -> Bars:
    if csv is not None:
        return read_ohlcv_csv(csv)
    path = settings.paths.bars
    if not path.exists():
        raise UsageError(f"no bar store at {path}; pass --csv FILE --symbol {symbol}")
    store = BarStore(path, read_only=True)
    try:
        bars = store.load(symbol, last_n=settings.train_window_bars)
    finally:
        store.close()
    if not len(bars):
        raise UsageError(f"no bars of {symbol} in {path}; pass --csv FILE --symbol {symbol}")
    return bars
