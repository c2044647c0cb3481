"""Trigger policy, backoff, and the worker-process scheduler (real child processes)."""

from __future__ import annotations

import os
import queue
import time
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from daemon.training.scheduler import Backoff, JobOutcome, RetrainScheduler, TrainJob
from daemon.training.trigger import TriggerPolicy
from daemon.training.worker import JobSpec, WorkerReply, run_job
from tests.support.metadata import sample_metadata
from trainers.config import TrainConfig


@pytest.mark.parametrize(
    ("total", "trained_at", "due"),
    [
        (99, None, False),  # below min_bars
        (100, None, True),  # exactly min_bars, never trained
        (149, 100, False),  # 49 new bars
        (150, 100, True),  # exactly retrain_every_bars new bars
        (500, 100, True),
    ],
)
def test_trigger_policy_boundaries(total: int, trained_at: int | None, due: bool) -> None:
    """Due at exactly min_bars and exactly retrain_every_bars new bars, not one bar before."""
    assert TriggerPolicy(min_bars=100, retrain_every_bars=50).due(total, trained_at) is due


def test_backoff_doubles_and_caps() -> None:
    """Delays double per consecutive failure and never exceed the cap."""
    b = Backoff(base_seconds=10, cap_seconds=60)
    assert [b.delay(n) for n in range(6)] == [0.0, 10.0, 20.0, 40.0, 60.0, 60.0]


# -- targets that run in real worker processes (module level: picklable) -------------
def _ok(spec: JobSpec, conn: Connection) -> None:
    (spec.staging_dir / "model.onnx").write_bytes(b"x")
    conn.send(WorkerReply(metadata=sample_metadata(spec.symbol)))


def _slow_ok(spec: JobSpec, conn: Connection) -> None:
    time.sleep(1.0)
    _ok(spec, conn)


def _die(spec: JobSpec, conn: Connection) -> None:
    os._exit(7)


def _hang(spec: JobSpec, conn: Connection) -> None:
    time.sleep(60)


def _die_for_bad(spec: JobSpec, conn: Connection) -> None:
    if spec.symbol == "BAD":
        os._exit(9)
    _ok(spec, conn)


@contextmanager
def _scheduler(
    tmp_path: Path,
    target,
    *,
    workers: int = 1,
    timeout: float = 30.0,
    backoff: Backoff | None = None,
):
    done: queue.Queue[JobOutcome] = queue.Queue()

    def make_spec(job: TrainJob, staging: Path) -> JobSpec:
        return JobSpec(
            job.symbol,
            job.run_id,
            tmp_path / "missing.sqlite",
            100,
            staging,
            TrainConfig(),
            "WARNING",
        )

    sched = RetrainScheduler(
        workers=workers,
        make_spec=make_spec,
        staging_root=tmp_path / "staging",
        timeout_seconds=timeout,
        on_done=done.put,
        backoff=backoff or Backoff(base_seconds=0.0, cap_seconds=0.0),
        target=target,
    ).start()
    try:
        yield sched, done
    finally:
        sched.stop(5)


def _next(done: queue.Queue[JobOutcome], timeout: float = 30.0) -> JobOutcome:
    return done.get(timeout=timeout)


def test_successful_job_reports_and_cleans_staging(tmp_path: Path) -> None:
    """A job's reply reaches on_done, then its staging directory is removed."""
    with _scheduler(tmp_path, _ok) as (sched, done):
        assert sched.request("AAA", 100, "test")
        out = _next(done)
        assert out.ok and out.metadata is not None and out.metadata.passed
        assert out.job.symbol == "AAA"
        deadline = time.monotonic() + 5
        while out.staging_dir.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not out.staging_dir.exists()


def test_worker_death_is_a_failed_job_and_the_pool_recovers(tmp_path: Path) -> None:
    """A worker that dies is reported with its exit code; the next symbol still trains."""
    with _scheduler(tmp_path, _die_for_bad) as (sched, done):
        sched.request("BAD", 100, "test")
        sched.request("GOOD", 100, "test")
        outcomes = {o.job.symbol: o for o in (_next(done), _next(done))}
        assert not outcomes["BAD"].ok
        assert "exit code 9" in (outcomes["BAD"].error or "")
        assert outcomes["GOOD"].ok


def test_real_worker_error_is_reported_not_raised(tmp_path: Path) -> None:
    """run_job turns an exception in training (here: no store) into an error reply."""
    with _scheduler(tmp_path, run_job) as (sched, done):
        sched.request("AAA", 100, "test")
        out = _next(done, timeout=60)
        assert not out.ok
        assert out.error and "missing.sqlite" in out.error


def test_hung_worker_is_killed_at_the_timeout(tmp_path: Path) -> None:
    """A job running past timeout_seconds is killed and reported as timed out."""
    with _scheduler(tmp_path, _hang, timeout=1.0) as (sched, done):
        sched.request("AAA", 100, "test")
        out = _next(done)
        assert not out.ok and "timed out" in (out.error or "")


def test_requests_coalesce_to_one_pending_per_symbol(tmp_path: Path) -> None:
    """While a symbol trains, many requests leave exactly one pending job with the newest count."""
    with _scheduler(tmp_path, _slow_ok) as (sched, done):
        assert sched.request("AAA", 100, "first")
        deadline = time.monotonic() + 10
        while sched.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sched.running == 1
        results = [sched.request("AAA", 100 + i, "more") for i in range(1, 50)]
        assert results[0] is True and not any(results[1:])
        assert sched.pending == 1
        first, second = _next(done), _next(done)
        assert (first.job.bar_count, second.job.bar_count) == (100, 149)
        assert sched.pending == 0 and sched.running == 0


def test_concurrency_is_bounded_by_workers(tmp_path: Path) -> None:
    """With two workers and five symbols, never more than two jobs run at once."""
    with _scheduler(tmp_path, _slow_ok, workers=2) as (sched, done):
        for s in "ABCDE":
            sched.request(s, 100, "test")
        peak = 0
        finished = 0
        deadline = time.monotonic() + 30
        while finished < 5 and time.monotonic() < deadline:
            peak = max(peak, sched.running)
            try:
                done.get(timeout=0.02)
                finished += 1
            except queue.Empty:
                pass
        assert finished == 5
        assert peak == 2


def test_failed_symbol_backs_off(tmp_path: Path) -> None:
    """After a failure, requests for that symbol are refused until the backoff delay passes."""
    with _scheduler(tmp_path, _die, backoff=Backoff(base_seconds=3600, cap_seconds=3600)) as (
        sched,
        done,
    ):
        sched.request("AAA", 100, "test")
        assert not _next(done).ok
        assert sched.request("AAA", 200, "again") is False
        assert sched.request("BBB", 100, "other symbol") is True


def test_stop_kills_running_jobs_after_grace(tmp_path: Path) -> None:
    """stop() returns within the grace period and reports the killed job as cancelled."""
    with _scheduler(tmp_path, _hang) as (sched, done):
        sched.request("AAA", 100, "test")
        deadline = time.monotonic() + 10
        while sched.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        sched.stop(0.5)
        assert time.monotonic() - t0 < 10
    out = _next(done, timeout=1)
    assert out.cancelled and not out.ok
