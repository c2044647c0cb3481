"""Training workers that crash or blow up their memory: the daemon records, backs off, goes on.

An in-process Daemon with one worker slot and the ``job_target`` seam: symbol
CRASH's worker exits hard, OOM's allocates until the address-space limit it
sets on itself is hit and is then SIGKILLed (what the kernel OOM killer does;
RLIMIT_AS keeps the blow-up at a few hundred MiB on any machine), the others
run the real training job. The retry backoff is shortened through its
settings.
"""

from __future__ import annotations

import itertools
import queue
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.app import Daemon
from daemon.settings import Settings
from daemon.training import scheduler as retrain
from daemon.training.worker import JobSpec
from tests.support import reliability as rel
from tests.support.helpers import ledger, wait_for
from tests.support.reliability_targets import fail_slowly, faulty_job
from trainers.config import TrainConfig

pytestmark = pytest.mark.slow

BACKOFF = retrain.Backoff(base_seconds=0.5, cap_seconds=2.0)
BAD = ("CRASH", "OOM")
GOOD = ("GOOD1", "GOOD2")
N_BARS = 1000
RUN_SECONDS = 14.0  # room for 6+ failures: 0.5 + 1 + 2 + 2 + 2 s of backoff, plus the runs


@pytest.fixture
def daemon(settings_factory: Callable[..., Settings]) -> Iterator[Daemon]:
    settings = settings_factory(
        http_port=0,
        retrain_backoff_base_seconds=BACKOFF.base_seconds,
        retrain_backoff_cap_seconds=BACKOFF.cap_seconds,
        trainers=("naive",),
        min_bars=50,
        retrain_every_bars=1_000_000,  # after the first run, only explicit requests retrain
        # A slot per symbol: retry timing then measures the backoff, not queueing.
        train_workers=4,
    )
    d = Daemon(
        settings,
        bootstrap_servers=settings.kafka_bootstrap_servers or "",
        metrics_registry=CollectorRegistry(),
        job_target=faulty_job,  # in the support module: a light import for each worker
    ).start()
    try:
        yield d
    finally:
        d.stop(10)


def _when(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


def _events(d: Daemon, symbol: str, kind: str) -> list[dict[str, object]]:
    if symbol not in d.registry.symbols():
        return []
    return [e for e in ledger(d.registry, symbol) if e["event"] == kind]


def _finished(d: Daemon, symbol: str) -> list[float]:
    """When each run of ``symbol`` that produced a verdict was recorded (a sine-wave series
    may pass its gates against the majority class via the persistence baseline)."""
    kinds = ("candidate_rejected", "champion_bootstrapped", "shadow_placed")
    return [_when(e) for kind in kinds for e in _events(d, symbol, kind)]


def _scrape(d: Daemon) -> str:
    assert d.http is not None
    with urllib.request.urlopen(f"{d.http.url}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


@pytest.mark.integration
def test_crashing_and_oom_workers_fail_clearly_back_off_and_leave_the_pool_working(
    daemon: Daemon,
) -> None:
    """A hard exit and an OOM kill are failed runs with a clear reason in history and metrics;
    the failing symbols are refused during an exponential, capped backoff; the good symbols
    keep training throughout, in slots the crashed workers gave back."""
    s = daemon.settings
    assert s.kafka_bootstrap_servers is not None
    for symbol in (*BAD, *GOOD):
        rel.send_batches(
            s.kafka_bootstrap_servers, s.topic_bars, [rel.bar(symbol, i) for i in range(N_BARS)]
        )
    wait_for(lambda: all(_events(daemon, b, "training_failed") for b in BAD), timeout=60)

    # Keep asking for the failing symbols, as a busy feed or an impatient operator would;
    # the good ones once a second (enough to show they keep training, without crowding
    # the two cores so much that retry timing measures the CPU rather than the backoff).
    requests: dict[str, list[tuple[float, bool]]] = {b: [] for b in BAD}
    deadline = time.monotonic() + RUN_SECONDS
    tick = 0
    while time.monotonic() < deadline:
        for symbol in BAD:
            requests[symbol].append((time.time(), daemon.request_retrain(symbol, "test")))
        if tick % 20 == 0:
            for symbol in GOOD:
                daemon.request_retrain(symbol, "test")
        tick += 1
        time.sleep(0.05)
    wait_for(
        lambda: (
            daemon.scheduler is not None
            and daemon.scheduler.running == 0
            and daemon.scheduler.pending == 0
        ),
        timeout=30,
        message="pool idle",
    )

    text = _scrape(daemon)
    for symbol in BAD:
        failures = _events(daemon, symbol, "training_failed")
        times = [_when(e) for e in failures]
        assert len(failures) >= 6, f"{symbol}: {len(failures)} attempts in {RUN_SECONDS} s"
        assert rel.metric_sample(
            text, "ctd_training_runs_total", symbol=symbol, outcome="failed"
        ) == len(failures)
        for k, (prev, nxt) in enumerate(itertools.pairwise(times), start=1):
            delay = BACKOFF.delay(k)
            # Not before the backoff ends; soon after it (a request is always waiting), so
            # after the 5th failure well below the uncapped 0.5 x 2^4 = 8 s.
            assert nxt - prev >= delay - 0.05, (symbol, k, nxt - prev, delay)
            assert nxt - prev <= delay + 2.5, (symbol, k, nxt - prev, delay)
        # Refused while backing off: no request was accepted inside a backoff window.
        for k, failed_at in enumerate(times, start=1):
            window = (failed_at + 0.05, failed_at + BACKOFF.delay(k) - 0.05)
            inside = [ok for at, ok in requests[symbol] if window[0] <= at <= window[1]]
            assert not any(inside), (symbol, k)
        assert any(not ok for _at, ok in requests[symbol])
    crash_reason = str(_events(daemon, "CRASH", "training_failed")[0]["reason"])
    assert "worker process died (exit code 3)" in crash_reason
    oom_reason = str(_events(daemon, "OOM", "training_failed")[0]["reason"])
    assert "killed by SIGKILL" in oom_reason and "out of memory" in oom_reason

    # The good symbols trained all along, between the failures.
    first_failure = min(_when(_events(daemon, b, "training_failed")[0]) for b in BAD)
    last_failure = max(_when(_events(daemon, b, "training_failed")[-1]) for b in BAD)
    for symbol in GOOD:
        done = _finished(daemon, symbol)
        assert len([t for t in done if first_failure < t < last_failure]) >= 5, symbol
        assert not _events(daemon, symbol, "training_failed")
        assert sum(
            rel.metric_sample(text, "ctd_training_runs_total", symbol=symbol, outcome=outcome)
            or 0.0
            for outcome in ("champion", "shadow", "rejected")
        ) == len(done)

    # The pool still launches work: a fresh request runs to completion.
    before = len(_finished(daemon, "GOOD1"))
    assert daemon.request_retrain("GOOD1", "after the storm of failures")
    wait_for(lambda: len(_finished(daemon, "GOOD1")) > before, timeout=30)


def test_a_retry_queued_during_a_failing_run_still_waits_out_the_backoff(tmp_path: Path) -> None:
    """A request coalesced while the symbol's run was failing launches only after the backoff
    that failure started, not at once (no bypass under steady request pressure)."""
    done: queue.Queue[tuple[float, retrain.JobOutcome]] = queue.Queue()
    sched = retrain.RetrainScheduler(
        workers=1,
        make_spec=lambda job, staging: JobSpec(
            job.symbol, job.run_id, tmp_path / "none.sqlite", 100, staging, TrainConfig(), "ERROR"
        ),
        staging_root=tmp_path / "staging",
        timeout_seconds=30,
        on_done=lambda outcome: done.put((time.monotonic(), outcome)),
        backoff=retrain.Backoff(base_seconds=1.0, cap_seconds=1.0),
        target=fail_slowly,
    ).start()
    try:
        assert sched.request("AAA", 100, "first")
        wait_for(lambda: sched.running == 1, timeout=30)
        assert sched.request("AAA", 101, "queued behind the failing run")
        failed_at, first = done.get(timeout=30)
        ended_at, second = done.get(timeout=30)
    finally:
        sched.stop(5)
    assert not first.ok and not second.ok and second.job.bar_count == 101
    second_started = ended_at - second.duration_seconds
    assert second_started - failed_at >= 1.0 - 0.05
