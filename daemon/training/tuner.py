"""The daemon's scheduled tuning (``CTD_TUNE_CRON``): each served symbol, one at a time.

``ScheduledTuning.run_all`` runs on a scheduler thread (``daemon.schedules``),
never the ingest thread, and the search itself in a child process forked like a
training worker: tuning fits hundreds of models, and a crash or OOM kill there
must not take ingest down. The child loads the symbol's newest
``CTD_TRAIN_WINDOW_BARS`` bars read-only, runs ``trainers.tuning.tune`` within
the budget, continues the symbol's SQLite study and stores the best params
(``daemon.training.tuned``), which the symbol's next retrain uses. The budget
holds at step granularity inside the child; a child still running well past it
is killed (outcome ``timeout``).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Final, Literal

from daemon.logs import configure_logging, get_logger
from daemon.metrics import Metrics
from daemon.paths import DataPaths
from daemon.settings import Settings
from daemon.store.bars import BarStore
from daemon.training.scheduler import describe_exit, run_bound_to_daemon
from daemon.training.tuned import TunedParams, TunedStore
from trainers.config import TrainConfig
from trainers.tuning import tune

_log = get_logger(component="tuning")

Outcome = Literal["tuned", "no_trials", "failed", "timeout"]
KILL_GRACE: Final = 0.25
"""A child is killed this share of its budget (at least ``KILL_MIN_SECONDS``) past it."""
KILL_MIN_SECONDS: Final = 30.0


@dataclass(frozen=True, slots=True)
class TuneSpec:
    """What a tuning child is told; picklable, no open handles."""

    symbol: str
    trainer: str
    store_path: Path
    window_bars: int
    config: TrainConfig
    trials: int
    budget_seconds: float
    data_dir: Path
    log_level: str


@dataclass(frozen=True, slots=True)
class TuneReply:
    """What a tuning child sends back."""

    outcome: Outcome
    value: float | None = None
    completed: int = 0
    pruned: int = 0
    error: str | None = None


def run_tune(spec: TuneSpec, conn: Connection) -> None:
    """Child entry point: tune one symbol's trainer, store the best params, reply on ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when a child ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(spec.log_level, "json")
    paths = DataPaths(spec.data_dir)
    try:
        store = BarStore(spec.store_path, read_only=True)
        try:
            bars = store.load(spec.symbol, last_n=spec.window_bars)
        finally:
            store.close()
        result = tune(
            spec.symbol,
            bars,
            spec.config,
            spec.trainer,
            trials=spec.trials,
            timeout=spec.budget_seconds,
            storage=paths.studies,
        )
        record = TunedParams.from_result(result)
        if record is not None:
            TunedStore(paths).save(spec.symbol, record)
        reply = TuneReply(
            "tuned" if record is not None else "no_trials",
            result.value,
            result.completed,
            result.pruned,
        )
    except Exception as exc:
        reply = TuneReply("failed", error=f"{type(exc).__name__}: {exc}")
    conn.send(reply)
    conn.close()


class ScheduledTuning:
    """Tunes every served symbol with enough bars, one child process at a time.

    ``target`` runs in the child (``run_tune``); ``start_method`` is multiprocessing's
    (tests fork their own process, which has every module imported already).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        served: Callable[[], Iterable[str]],
        bar_count: Callable[[str], int],
        metrics: Metrics,
        target: Callable[[TuneSpec, Connection], None] = run_tune,
        clock: Callable[[], float] = time.monotonic,
        start_method: Literal["forkserver", "fork"] = "forkserver",
    ) -> None:
        self._settings = settings
        self._served, self._bar_count = served, bar_count
        self._metrics, self._target, self._clock = metrics, target, clock
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._child: BaseProcess | None = None
        # Children fork from the training workers' forkserver: never from the daemon's threads.
        self._ctx = (
            multiprocessing.get_context("fork")
            if start_method == "fork"
            else multiprocessing.get_context("forkserver")
        )

    def run_all(self) -> None:
        """One round: every served symbol with at least ``min_bars`` bars, each trainer of
        ``tune_trainer_names`` with an equal share of ``tune_budget_seconds``."""
        s = self._settings
        trainers = s.tune_trainer_names
        for symbol in sorted(self._served()):
            if self._stopping.is_set():
                return
            if self._bar_count(symbol) < s.min_bars:
                continue
            for trainer in trainers:
                if self._stopping.is_set():
                    return
                self._run_one(symbol, trainer, s.tune_budget_seconds / len(trainers))

    def stop(self) -> None:
        """End the round: the running child is killed (its finished trials are in the study)."""
        self._stopping.set()
        with self._lock:
            child = self._child
        if child is not None and child.is_alive():
            child.kill()

    def _run_one(self, symbol: str, trainer: str, budget: float) -> None:
        s = self._settings
        spec = TuneSpec(
            symbol=symbol,
            trainer=trainer,
            store_path=s.paths.bars,
            window_bars=s.train_window_bars,
            config=s.train_config,
            trials=s.tune_trials,
            budget_seconds=budget,
            data_dir=s.paths.root,
            log_level=s.log_level,
        )
        log = _log.bind(symbol=symbol, trainer=trainer)
        log.info("tuning_started", trials=s.tune_trials, budget_seconds=budget)
        started = self._clock()
        reply = self._run_child(spec, started + budget + max(KILL_MIN_SECONDS, KILL_GRACE * budget))
        self._metrics.tuning_runs.labels(trainer, reply.outcome).inc()
        seconds = round(self._clock() - started, 1)
        if reply.outcome == "tuned":
            log.info(
                "tuning_finished",
                value=reply.value,
                completed=reply.completed,
                pruned=reply.pruned,
                seconds=seconds,
            )
        else:
            log.warning("tuning_" + reply.outcome, error=reply.error, seconds=seconds)

    def _run_child(self, spec: TuneSpec, kill_at: float) -> TuneReply:
        parent, child_conn = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=run_bound_to_daemon,
            args=(self._target, spec, child_conn),
            name=f"ctd-tune-{spec.symbol}",
        )
        with self._lock:
            if self._stopping.is_set():
                return TuneReply("failed", error="daemon stopping")
            self._child = process
            process.start()
        child_conn.close()
        try:
            return self._await(process, parent, kill_at)
        except (EOFError, OSError) as exc:
            return TuneReply("failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            process.join(5)
            parent.close()
            with self._lock:
                self._child = None

    def _await(self, process: BaseProcess, parent: Connection, kill_at: float) -> TuneReply:
        """The child's reply; or why it has none (died, cancelled by stop, killed late)."""
        while not parent.poll(0.5):
            if not process.is_alive():
                if parent.poll(0):  # sent just before it exited
                    break
                return TuneReply("failed", error=describe_exit(process.exitcode))
            if self._stopping.is_set():
                process.kill()
                return TuneReply("failed", error="cancelled: daemon stopping")
            if self._clock() > kill_at:
                process.kill()
                return TuneReply("timeout", error="killed past its time budget")
        reply: TuneReply = parent.recv()
        return reply
