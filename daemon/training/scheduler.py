"""The bounded queue of worker processes that retrains symbols.

At most one running and one pending job per symbol (later requests coalesce
into the pending one), at most ``workers`` processes at once, failed symbols
back off exponentially (capped) so a poisoned symbol cannot monopolise the pool.
When a symbol is due is ``daemon.training.trigger``'s business; whether a launched job
would only repeat the symbol's last finished run, ``daemon.training.window``'s (a job's
spec is made when it launches, after the previous run of its symbol was reported, so
a job queued behind a run is judged against that run).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import shutil
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from daemon.logs import get_logger
from daemon.training.window import Skip
from daemon.training.worker import JobSpec, WorkerReply, run_job
from trainers.metadata import ModelMetadata

_log = get_logger(component="retrain")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delay after consecutive failures: base x 2^(n-1), at most cap."""

    base_seconds: float = 30.0
    cap_seconds: float = 1800.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return float(min(self.base_seconds * 2 ** (failures - 1), self.cap_seconds))


@dataclass(frozen=True, slots=True)
class TrainJob:
    """A retrain of ``symbol`` requested when it had ``bar_count`` bars. ``force``: train even
    on the bars of its last finished run (an operator's command)."""

    symbol: str
    run_id: str
    bar_count: int
    reason: str
    requested_at: float
    force: bool = False


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a job ended. ``metadata`` is the run's, when the worker sent it; ``skipped`` (with
    ``ok``) when the worker dropped the job untrained; ``stored_bars``: the symbol's bar count
    when the worker loaded its bars, if it got that far."""

    job: TrainJob
    ok: bool
    staging_dir: Path
    duration_seconds: float
    metadata: ModelMetadata | None = None
    error: str | None = None
    cancelled: bool = False
    skipped: Skip | None = None
    stored_bars: int | None = None


@dataclass(slots=True)
class _Running:
    job: TrainJob
    process: BaseProcess
    conn: Connection
    staging_dir: Path
    started: float
    reply: WorkerReply | None = None


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_bound_to_daemon(
    target: Callable[[JobSpec, Connection], None], spec: JobSpec, conn: Connection
) -> None:
    """Worker entry point: run ``target``, but never outlive the daemon.

    A worker does not die with a killed daemon (kill -9, OOM) by itself, nor does
    the forkserver: every forkserver child holds the forkserver's liveness pipe.
    An orphan would train on for up to the job timeout, for a result no one
    reads, while the restarted daemon trains the same symbol again. The daemon
    holds the only read end of ``conn``: when it is gone, the write end reports
    POLLERR and the worker exits.
    """
    watched = os.dup(conn.fileno())  # a dup: the target may close ``conn`` when done
    threading.Thread(
        target=_exit_when_orphaned, args=(watched,), name="ctd-orphan-watch", daemon=True
    ).start()
    target(spec, conn)


def _exit_when_orphaned(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, 0)  # no events asked for: POLLERR and POLLHUP are always reported
    while True:
        for _fd, _event in poller.poll():
            os._exit(1)


def describe_exit(code: int | None) -> str:
    """Why a worker that sent no result ended, from its exit code, for history and logs."""
    if code is None or code == 0:
        return "worker exited without a result"
    if code > 0:
        return f"worker process died (exit code {code})"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    why = f"worker process killed by {name} (exit code {code})"
    if -code == signal.SIGKILL:
        why += "; out of memory (the kernel OOM killer sends SIGKILL) or killed by an operator"
    return why


class RetrainScheduler:
    """Runs training jobs in separate processes; calls ``on_done`` on its own thread."""

    def __init__(
        self,
        *,
        workers: int,
        make_spec: Callable[[TrainJob, Path], JobSpec],
        staging_root: Path,
        timeout_seconds: float,
        on_done: Callable[[JobOutcome], None],
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        target: Callable[[JobSpec, Connection], None] = run_job,
        preload: Sequence[str] = (),
    ) -> None:
        self._workers = workers
        self._make_spec = make_spec
        self._staging_root = staging_root
        self._timeout = timeout_seconds
        self._on_done = on_done
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._target = target
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, TrainJob] = OrderedDict()
        self._running: dict[str, _Running] = {}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._supervise, name="ctd-retrain", daemon=True)
        # Workers fork from a server that imported the training stack once (the
        # worker plus each trainer's backend module in ``preload``), so a job starts
        # in milliseconds and never inherits the daemon's threads.
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload([run_job.__module__, *preload])

    # -- public API (any thread) -------------------------------------------------
    def request(self, symbol: str, bar_count: int, reason: str, *, force: bool = False) -> bool:
        """Queue a retrain; False when coalesced into a pending job or backing off. A pending
        job takes the newest ``bar_count``, and is forced if any of its requests was."""
        with self._lock:
            if self._clock() < self._not_before.get(symbol, 0.0):
                return False
            if symbol in self._pending:
                old = self._pending[symbol]
                self._pending[symbol] = TrainJob(
                    symbol, old.run_id, bar_count, old.reason, old.requested_at, old.force or force
                )
                return False
            self._pending[symbol] = TrainJob(
                symbol, new_run_id(), bar_count, reason, time.time(), force
            )
        self._wake()
        return True

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def busy_symbols(self) -> set[str]:
        with self._lock:
            return set(self._pending) | set(self._running)

    def start(self) -> RetrainScheduler:
        """Start supervising. Left-over staging directories (runs of a killed daemon; each
        daemon has its own data directory) are removed first: nothing will read them."""
        if self._staging_root.is_dir():
            for leftover in self._staging_root.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
                _log.warning("staging_leftover_removed", path=str(leftover))
        self._staging_root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self, grace_seconds: float) -> None:
        """Stop launching; let running jobs finish within ``grace_seconds``, then kill them."""
        deadline = self._clock() + grace_seconds
        with self._lock:
            self._pending.clear()
        self._stopping.set()
        self._wake()
        self._thread.join(timeout=grace_seconds + 10)
        while self._running and self._clock() < deadline:
            self._reap(timeout=0.2)
        for run in list(self._running.values()):
            run.process.kill()
            run.process.join(5)
            self._finish(run, ok=False, error="cancelled at shutdown", cancelled=True)

    # -- supervisor thread --------------------------------------------------------
    def _wake(self) -> None:
        self._wake_w.send_bytes(b"x")

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            wake_in = self._launch_ready()
            self._reap(timeout=wake_in)
            self._kill_overdue()

    def _launch_ready(self) -> float:
        """Launch every pending job that may run now; return how long the supervisor may
        sleep: at most 0.5 s, less if a pending job's backoff ends sooner.

        A job queued while its symbol's previous run was still going waits out the
        backoff that run's failure started, like a new request would.
        """
        while True:
            with self._lock:
                if len(self._running) >= self._workers:
                    return 0.5
                now, wake_in, job = self._clock(), 0.5, None
                for symbol, pending in self._pending.items():
                    if symbol in self._running:
                        continue
                    ready_at = self._not_before.get(symbol, 0.0)
                    if ready_at > now:
                        wake_in = min(wake_in, ready_at - now)
                        continue
                    job = pending
                    break
                if job is None:
                    return wake_in
                del self._pending[job.symbol]
            self._launch(job)

    def _launch(self, job: TrainJob) -> None:
        staging = self._staging_root / f"{job.symbol}-{job.run_id}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        parent_conn, child_conn = self._ctx.Pipe(duplex=False)
        spec = self._make_spec(job, staging)
        process = self._ctx.Process(
            target=run_bound_to_daemon,
            args=(self._target, spec, child_conn),
            name=f"ctd-train-{job.symbol}",
        )
        process.start()
        child_conn.close()
        with self._lock:
            self._running[job.symbol] = _Running(job, process, parent_conn, staging, self._clock())
        _log.info(
            "training_launched",
            symbol=job.symbol,
            run_id=job.run_id,
            pid=process.pid,
            reason=job.reason,
        )

    def _reap(self, timeout: float) -> None:
        with self._lock:
            runs = list(self._running.values())
        waitables: list[Any] = [self._wake_r]
        for run in runs:
            waitables.append(run.process.sentinel)
            if run.reply is None:
                waitables.append(run.conn)
        ready = wait(waitables, timeout=timeout)
        if self._wake_r in ready:
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
        for run in runs:
            if run.reply is None and run.conn in ready:
                try:
                    run.reply = run.conn.recv()
                except (EOFError, OSError):
                    run.reply = None
            if run.process.sentinel in ready or (
                run.reply is not None and not run.process.is_alive()
            ):
                run.process.join(5)
                self._complete(run)

    def _complete(self, run: _Running) -> None:
        if run.reply is None and run.conn.poll():
            try:
                run.reply = run.conn.recv()
            except (EOFError, OSError):
                run.reply = None
        if run.reply is None:
            self._finish(run, ok=False, error=describe_exit(run.process.exitcode))
        elif run.reply.skipped is not None:
            self._finish(run, ok=True)
        elif not run.reply.ok:
            self._finish(run, ok=False, error=run.reply.error)
        else:
            self._finish(run, ok=True)

    def _kill_overdue(self) -> None:
        now = self._clock()
        with self._lock:
            overdue = [r for r in self._running.values() if now - r.started > self._timeout]
        for run in overdue:
            run.process.kill()
            run.process.join(5)
            self._finish(run, ok=False, error=f"timed out after {self._timeout:.0f} s")

    def _finish(
        self, run: _Running, *, ok: bool, error: str | None = None, cancelled: bool = False
    ) -> None:
        with self._lock:
            if self._running.get(run.job.symbol) is not run:
                return
            del self._running[run.job.symbol]
            if ok:
                self._failures.pop(run.job.symbol, None)
                self._not_before.pop(run.job.symbol, None)
            elif not cancelled:
                n = self._failures.get(run.job.symbol, 0) + 1
                self._failures[run.job.symbol] = n
                self._not_before[run.job.symbol] = self._clock() + self._backoff.delay(n)
        run.conn.close()
        outcome = JobOutcome(
            job=run.job,
            ok=ok,
            staging_dir=run.staging_dir,
            duration_seconds=self._clock() - run.started,
            metadata=run.reply.metadata if run.reply is not None else None,
            error=error,
            cancelled=cancelled,
            skipped=run.reply.skipped if run.reply is not None else None,
            stored_bars=run.reply.stored_bars if run.reply is not None else None,
        )
        try:
            self._on_done(outcome)
        except Exception:
            _log.exception("on_done_failed", symbol=run.job.symbol, run_id=run.job.run_id)
        finally:
            shutil.rmtree(run.staging_dir, ignore_errors=True)
