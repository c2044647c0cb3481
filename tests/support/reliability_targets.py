"""Worker targets for the reliability tests' ``job_target`` seam; no tests here.

Every training run unpickles its target by module name in a fresh worker, so
this module imports almost nothing (daemon.training.worker is preloaded by the
forkserver): a crash test then measures the daemon, not our imports.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.training.worker import run_job

if TYPE_CHECKING:
    from collections.abc import Callable

    from daemon.training.worker import JobSpec

SLOW_SECONDS_ENV = "RELIABILITY_SLOW_SECONDS"
JOURNAL_ENV = "RELIABILITY_JOURNAL"


def slow_job(spec: JobSpec, conn: Connection) -> None:
    """The real job, after ``RELIABILITY_SLOW_SECONDS``: a long training run, made observable."""
    time.sleep(float(os.environ.get(SLOW_SECONDS_ENV, "2")))
    run_job(spec, conn)


def journal_job(spec: JobSpec, conn: Connection) -> None:
    """The real job, bracketed by start / end lines in ``RELIABILITY_JOURNAL``."""
    path = os.environ[JOURNAL_ENV]
    _journal(path, {"symbol": spec.symbol, "run_id": spec.run_id, "start": time.time()})
    try:
        run_job(spec, conn)
    finally:
        _journal(path, {"symbol": spec.symbol, "run_id": spec.run_id, "end": time.time()})


def _journal(path: str, entry: dict[str, Any]) -> None:
    # One write() of one short line to an O_APPEND file: lines from workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


_OOM_HEADROOM = 256 << 20


def _vm_size() -> int:
    with Path("/proc/self/status").open() as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def _blow_up_memory() -> None:
    """Allocate (and touch) memory until RLIMIT_AS says no, then die as the OOM killer kills."""
    limit = _vm_size() + _OOM_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    hoard = []
    try:
        while True:
            hoard.append(bytearray(16 << 20))
    except MemoryError:
        os.kill(os.getpid(), signal.SIGKILL)


def faulty_job(spec: JobSpec, conn: Connection) -> None:
    """Worker target: CRASH exits hard, OOM blows up its memory, the others really train."""
    if spec.symbol == "CRASH":
        os._exit(3)
    if spec.symbol == "OOM":
        _blow_up_memory()
    run_job(spec, conn)


def fail_slowly(spec: JobSpec, conn: Connection) -> None:
    """A run that fails after 0.3 s: long enough for a retry to be queued behind it."""
    time.sleep(0.3)
    os._exit(5)


JOB_TARGETS: dict[str, Callable[[JobSpec, Connection], None]] = {
    "run_job": run_job,
    "slow": slow_job,
    "journal": journal_job,
}
