"""Worker targets around the real worker, for tests that pin when a run loads its bars; no
tests here.

``after_backfill_job`` is the real job, started once the symbol's whole backfill is stored (its
bar count in ``backfill-bars`` beside the bar store): the first run of a burst then loads every
bar, as a worker that starts late does, while the burst's later requests queue behind it.

``gated_job`` runs ``daemon.training.worker.run_job`` (it loads the bars, judges them against
the last finished run's window, replies), with ``train_symbol`` replaced by a fake run that
touches ``started-<staging dir>`` in the test's flag directory (the staging root's parent)
once its bars are loaded, raises once if ``fail`` is there, waits for ``gate``, and reports
the window it was given as a rejected run's metadata. A test can so hold a run in flight and
queue a request behind it, without training anything.

Kept light: a worker imports its target's module, and this one needs nothing the forkserver
has not already imported.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from daemon.store.bars import BarStore
from daemon.training import worker
from daemon.training.window import DataWindow
from tests.support.helpers import wait_for
from tests.support.metadata import sample_metadata
from trainers.data import Bars
from trainers.metadata import DataRange

BACKFILL_FILE = "backfill-bars"


def fake_train(symbol: str, bars: Bars, config: Any, staging: Path) -> SimpleNamespace:
    """Instead of ``trainers.pipeline.train_symbol``: see the module docstring."""
    flags = staging.parent.parent
    (flags / f"started-{staging.name}").touch()
    if (flags / "fail").exists():
        (flags / "fail").unlink()
        raise RuntimeError("failed once on purpose")
    wait_for((flags / "gate").exists, timeout=30, message="the test opens the gate")
    window = DataWindow.of(bars)
    data = DataRange(
        n_bars=window.n_bars,
        first_ts=window.first_ts,
        last_ts=window.last_ts,
        n_rows=window.n_bars,
        sha256=window.sha256,
    )
    return SimpleNamespace(
        metadata=sample_metadata(symbol, passed=False).model_copy(update={"data": data})
    )


def gated_job(spec: worker.JobSpec, conn: Connection) -> None:
    """The real worker around the fake training."""
    worker.train_symbol = fake_train  # type: ignore[attr-defined,assignment]
    worker.run_job(spec, conn)


def after_backfill_job(spec: worker.JobSpec, conn: Connection) -> None:
    """The real job, once ``spec.symbol`` has the bar count in ``backfill-bars`` stored."""
    want = int((spec.store_path.parent / BACKFILL_FILE).read_text())

    def backfilled() -> bool:
        store = BarStore(spec.store_path, read_only=True)
        try:
            return store.count(spec.symbol) >= want
        finally:
            store.close()

    wait_for(backfilled, timeout=120, message=f"{want} bars of {spec.symbol} stored")
    worker.run_job(spec, conn)
