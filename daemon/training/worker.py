"""What runs inside a training worker process.

The daemon never trains in its own process: a crash, an OOM kill or a hung
native library in training must not take ingest down. The child opens the store
read-only, trains, writes its artifacts to a staging directory and sends back a
small summary; the daemon (the registry's single writer) does the rest.

Before training, the worker judges the bars it loaded against the window of the
symbol's last finished run, and drops a job that would only repeat it
(``daemon.training.window``).

The daemon also owns the worker's lifetime: the worker ignores SIGINT and
SIGTERM (a Ctrl-C in a terminal or a service manager signals the whole process
group, and the daemon decides whether training finishes within the shutdown
grace period or is killed). A worker whose daemon is gone (kill -9, crash) exits
by itself: see daemon.training.scheduler.run_bound_to_daemon.
"""

from __future__ import annotations

import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from daemon.logs import configure_logging, get_logger
from daemon.store.bars import BarStore
from daemon.training.window import DataWindow, Skip, judge, load_size
from trainers.config import TrainConfig
from trainers.metadata import ModelMetadata
from trainers.pipeline import train_symbol


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything a worker needs; picklable, no open handles.

    ``previous``: the window of the symbol's last finished run, None to train whatever the
    bars (``daemon.training.window.judge``, with ``min_new_bars``).
    """

    symbol: str
    run_id: str
    store_path: Path
    window_bars: int
    staging_dir: Path
    config: TrainConfig
    log_level: str
    previous: DataWindow | None = None
    min_new_bars: int = 0


@dataclass(frozen=True, slots=True)
class WorkerReply:
    """What a worker sends back: the run's metadata, why it failed, or why it did not train
    (``skipped``). ``stored_bars``: the symbol's bar count when the bars were loaded (read
    first, so every bar it counts was loaded)."""

    metadata: ModelMetadata | None = None
    error: str | None = None
    traceback: str | None = None
    skipped: Skip | None = None
    stored_bars: int | None = None

    @property
    def ok(self) -> bool:
        return self.metadata is not None


def run_job(spec: JobSpec, conn: Connection) -> None:
    """Worker entry point: train one symbol, send a ``WorkerReply`` on ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(spec.log_level, "json")
    log = get_logger(symbol=spec.symbol, run_id=spec.run_id, process="worker")
    try:
        store = BarStore(spec.store_path, read_only=True)
        try:
            stored = store.count(spec.symbol)
            size = load_size(spec.window_bars, spec.previous, spec.min_new_bars)
            loaded = store.load(spec.symbol, last_n=size)
        finally:
            store.close()
        skip = judge(loaded, spec.window_bars, spec.previous, spec.min_new_bars)
        if skip is not None:
            reply = WorkerReply(skipped=skip, stored_bars=stored)
        else:
            bars = loaded.tail(spec.window_bars)
            log.info("training_started", bars=len(bars))
            result = train_symbol(spec.symbol, bars, spec.config, spec.staging_dir)
            reply = WorkerReply(metadata=result.metadata, stored_bars=stored)
    except Exception as exc:
        log.error("training_error", error=str(exc), exc_info=True)
        reply = WorkerReply(
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=20),
        )
    conn.send(reply)
    conn.close()
