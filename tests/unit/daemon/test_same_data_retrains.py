"""Retrains on the bars of the last finished run are dropped: the worker, the scheduler, the
job spec and the outcome recorder together, in real worker processes on a real bar store.

Only training itself is replaced (tests.support.gated_worker): a fake run that reports the
window it was given and, to hold the run in flight while a test queues a request behind it,
waits for a gate file.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from daemon.live.path import SavedTrialPlacer
from daemon.metrics import Metrics
from daemon.settings import load_settings
from daemon.store.bars import BarStore
from daemon.training.jobs import job_spec
from daemon.training.outcomes import RunRecorder
from daemon.training.scheduler import Backoff, JobOutcome, RetrainScheduler, TrainJob
from daemon.training.window import DataWindow, FinishedWindows
from daemon.training.worker import JobSpec, run_job
from deploy.memory_log import MemoryPredictionLog
from deploy.registry import MemoryStorage, Registry
from tests.support.gated_worker import gated_job
from tests.support.helpers import ledger, wait_for
from trainers.data import Bars, bar_records
from trainers.synthetic import MarketSpec, generate_bars

SYMBOL = "AAA"
WINDOW = 100
HISTORY = generate_bars(MarketSpec(symbol=SYMBOL, seed=1), 400)


# -- the rig --------------------------------------------------------------------------------
def _bars(start: int, stop: int) -> Bars:
    """Bars ``start`` to ``stop`` (exclusive) of the symbol's history."""
    s = slice(start, stop)
    h = HISTORY
    return Bars(h.ts[s], h.open[s], h.high[s], h.low[s], h.close[s], h.volume[s])


@dataclass
class Rig:
    """The daemon's training wiring (daemon.app) on a bar store and an in-memory registry."""

    root: Path
    store: BarStore
    registry: Registry
    metrics: Metrics
    windows: FinishedWindows
    scheduler: RetrainScheduler
    done: queue.Queue[JobOutcome]
    trained: list[tuple[str, int]]
    covered: list[tuple[str, int]]

    def add(self, bars: Bars) -> None:
        self.store.upsert(bar_records(SYMBOL, bars))

    def request(self, *, force: bool = False) -> bool:
        return self.scheduler.request(SYMBOL, self.store.count(SYMBOL), "test", force=force)

    def wait_started(self, n: int) -> None:
        wait_for(lambda: len(list(self.root.glob("started-*"))) >= n, 30, message=f"run {n}")

    def open_gate(self) -> None:
        (self.root / "gate").touch()

    def outcomes(self, n: int) -> list[str]:
        """How the next ``n`` jobs ended: trained, failed, or the reason they were dropped."""
        ended = [self.done.get(timeout=30) for _ in range(n)]
        return [
            o.skipped.reason if o.skipped else ("trained" if o.metadata else "failed")
            for o in ended
        ]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"symbol": SYMBOL, **labels})


@contextmanager
def _rig(
    tmp_path: Path,
    target: Callable[[JobSpec, Connection], None] = gated_job,
    **overrides: Any,
) -> Iterator[Rig]:
    settings = load_settings(
        **{
            "data_dir": tmp_path / "data",
            "train_window_bars": WINDOW,
            "min_bars": 50,
            "trainers": ("naive",),
            "log_level": "WARNING",
            **overrides,
        }
    )
    settings.paths.root.mkdir(parents=True)
    store = BarStore(settings.paths.bars)
    registry = Registry(MemoryStorage())
    metrics = Metrics(CollectorRegistry(), version="test")
    metrics.init_symbol(SYMBOL)
    windows = FinishedWindows()
    done: queue.Queue[JobOutcome] = queue.Queue()
    trained: list[tuple[str, int]] = []
    covered: list[tuple[str, int]] = []
    recorder = RunRecorder(
        registry=registry,
        placer=SavedTrialPlacer(registry, MemoryPredictionLog(), actor="daemon"),
        metrics=metrics,
        on_trained=lambda symbol, n: trained.append((symbol, n)),
        on_covered=lambda symbol, n: covered.append((symbol, n)),
        windows=windows,
    )

    def on_done(outcome: JobOutcome) -> None:
        recorder.record(outcome)
        done.put(outcome)

    scheduler = RetrainScheduler(
        workers=1,
        make_spec=partial(job_spec, settings, settings.train_config, registry, windows=windows),
        staging_root=tmp_path / "staging",
        timeout_seconds=60,
        on_done=on_done,
        backoff=Backoff(base_seconds=0.0, cap_seconds=0.0),
        target=target,
    ).start()
    rig = Rig(tmp_path, store, registry, metrics, windows, scheduler, done, trained, covered)
    try:
        yield rig
    finally:
        rig.open_gate()
        scheduler.stop(10)
        store.close()


# -- queued behind a run ----------------------------------------------------------------------
def test_a_retrain_queued_behind_a_run_on_the_same_bars_is_dropped(tmp_path: Path) -> None:
    """Requested while the run that loaded every bar trains, the queued job finds the same
    window when it starts: dropped as same_data, counted, no ledger line, nothing trained."""
    with _rig(tmp_path) as rig:
        rig.add(_bars(0, 300))
        assert rig.request()
        rig.wait_started(1)
        assert rig.request()  # queued behind the running job
        rig.open_gate()
        assert rig.outcomes(2) == ["trained", "same_data"]
        assert rig.sample("ctd_retrains_skipped_total", reason="same_data") == 1
        assert rig.sample("ctd_retrains_skipped_total", reason="few_new_bars") == 0
        assert rig.sample("ctd_training_runs_total", outcome="rejected") == 1
        assert [e["event"] for e in ledger(rig.registry, SYMBOL)] == ["candidate_rejected"]
        assert rig.trained == [(SYMBOL, 300)] and rig.covered == [(SYMBOL, 300)]
        assert len(list(tmp_path.glob("started-*"))) == 1
        assert rig.windows.get(SYMBOL) == DataWindow.of(_bars(200, 300))


def test_a_bar_arriving_while_the_run_trains_makes_the_queued_job_train(tmp_path: Path) -> None:
    """One new bar after the run loaded its bars: a different window, so the queued job trains,
    and the trigger counts from the bars each run saw."""
    with _rig(tmp_path) as rig:
        rig.add(_bars(0, 300))
        assert rig.request()
        rig.wait_started(1)
        rig.add(_bars(300, 301))
        assert rig.request()
        rig.open_gate()
        assert rig.outcomes(2) == ["trained", "trained"]
        assert rig.sample("ctd_retrains_skipped_total", reason="same_data") == 0
        assert rig.trained == [(SYMBOL, 300), (SYMBOL, 301)]


def test_a_corrected_bar_makes_the_queued_job_train(tmp_path: Path) -> None:
    """A bar of the window corrected (same ts, other values) while the run trains: retrained."""
    with _rig(tmp_path) as rig:
        rig.add(_bars(0, 300))
        assert rig.request()
        rig.wait_started(1)
        [last] = bar_records(SYMBOL, _bars(299, 300))
        rig.store.upsert([last._replace(close=last.close * 1.001, high=last.high * 1.01)])
        assert rig.request()
        rig.open_gate()
        assert rig.outcomes(2) == ["trained", "trained"]


def test_an_operators_retrain_queued_behind_a_run_trains_on_the_same_bars(
    tmp_path: Path,
) -> None:
    """A forced request (an operator's command) joins the queued job and makes it train."""
    with _rig(tmp_path) as rig:
        rig.add(_bars(0, 300))
        assert rig.request()
        rig.wait_started(1)
        assert rig.request()
        assert not rig.request(force=True)  # coalesced into the queued job, which it forces
        rig.open_gate()
        assert rig.outcomes(2) == ["trained", "trained"]
        assert rig.request()  # and an unforced one after it is dropped again
        assert rig.outcomes(1) == ["same_data"]


def test_failed_runs_do_not_block_a_retry(tmp_path: Path) -> None:
    """A failed run records no window: the retry on its bars trains (compared with the last run
    that finished), and only a retry of that one is dropped."""
    with _rig(tmp_path) as rig:
        rig.open_gate()
        rig.add(_bars(0, 300))
        assert rig.request()
        assert rig.outcomes(1) == ["trained"]
        rig.add(_bars(300, 310))
        (tmp_path / "fail").touch()
        assert rig.request()
        assert rig.outcomes(1) == ["failed"]
        assert rig.request()
        assert rig.outcomes(1) == ["trained"]
        assert rig.request()
        assert rig.outcomes(1) == ["same_data"]
        events = [e["event"] for e in ledger(rig.registry, SYMBOL)]
        assert events == ["candidate_rejected", "training_failed", "candidate_rejected"]


# -- the real worker ----------------------------------------------------------------------------
def test_the_worker_drops_a_job_before_training(tmp_path: Path) -> None:
    """The real worker judges the bars it loaded: same_data, and with retrain_min_new_bars
    few_new_bars, both without training (a naive run would leave a ledger line)."""
    with _rig(tmp_path, run_job, retrain_min_new_bars=5) as rig:
        rig.add(_bars(0, 300))
        rig.windows.record(SYMBOL, DataWindow.of(_bars(197, 297)))  # 3 bars ago
        assert rig.request()
        assert rig.outcomes(1) == ["few_new_bars"]
        rig.windows.record(SYMBOL, DataWindow.of(_bars(200, 300)))
        assert rig.request()
        assert rig.outcomes(1) == ["same_data"]
        assert ledger(rig.registry, SYMBOL) == []
        assert rig.sample("ctd_retrains_skipped_total", reason="few_new_bars") == 1
        assert rig.covered == [(SYMBOL, 300)] and rig.trained == []


def test_job_spec_carries_the_last_window_unless_forced(tmp_path: Path) -> None:
    """The spec of a job compares with the symbol's last finished run; a forced one with none."""
    settings = load_settings(data_dir=tmp_path, retrain_min_new_bars=7)
    registry = Registry(MemoryStorage())
    windows = FinishedWindows()
    window = DataWindow.of(_bars(0, 100))
    windows.record(SYMBOL, window)

    def spec(job: TrainJob) -> JobSpec:
        return job_spec(settings, settings.train_config, registry, job, tmp_path, windows=windows)

    plain = TrainJob(SYMBOL, "r1", 100, "new_bars", time.time())
    forced = TrainJob(SYMBOL, "r2", 100, "command", time.time(), force=True)
    other = TrainJob("BBB", "r3", 100, "new_bars", time.time())
    assert (spec(plain).previous, spec(plain).min_new_bars) == (window, 7)
    assert spec(forced).previous is None and spec(other).previous is None
    no_memory = job_spec(settings, settings.train_config, registry, plain, tmp_path)
    assert no_memory.previous is None
