"""Retrain storm: bursts of bars that make retraining due far faster than workers can train.

The daemon runs as a child process (the runner of tests/support/reliability.py
with the ``journal`` worker target, which records when every run starts and
ends), so that its memory can be read from /proc: VmRSS while the storm lasts
and VmHWM (the peak resident set) at the end. The retrain queue is sampled from
/metrics (``ctd_retrain_queue_depth``, ``ctd_training_running``) every 0.2 s.

Promised: at most one running and one pending job per symbol (later requests
coalesce into the pending one, which trains on the newest bar count), a queue
bounded by the number of symbols, and a daemon whose memory does not grow with
the number of bars or requests.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.kafka.bars import encode_bar, encode_batch
from daemon.settings import Settings
from tests.support import reliability as rel
from tests.support.helpers import wait_for
from tests.support.reliability_targets import JOURNAL_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURST_BARS = 10_000
MANY = 500
MANY_BARS = 50  # per symbol and burst: min_bars = retrain_every_bars, so due after each
POLL_RECORDS = 100  # 100 ingest transactions for the single-symbol burst: 100 triggers
MIB = 1024


@dataclass
class Samples:
    queue: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)


class Sampler:
    """Scrapes queue depth, running jobs and the daemon's RSS every 0.2 s until stopped."""

    def __init__(self, daemon: rel.DaemonProcess) -> None:
        self._daemon = daemon
        self._stop = threading.Event()
        self.samples = Samples()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            depth = self._daemon.sample("ctd_retrain_queue_depth")
            running = self._daemon.sample("ctd_training_running")
            self.samples.queue.append(depth if depth is not None else 0.0)
            self.samples.running.append(running if running is not None else 0.0)
            self.samples.rss_kib.append(self._daemon.status_kib("VmRSS"))

    def __enter__(self) -> Samples:
        self._thread.start()
        return self.samples

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _trained(store_path: Path) -> dict[str, int]:
    import sqlite3

    conn = sqlite3.connect(f"{store_path.as_uri()}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT symbol, bar_count FROM trained"))
    finally:
        conn.close()


@pytest.fixture
def storm(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[rel.DaemonProcess, Path]]:
    settings = settings_factory(
        http_port=rel.free_port(),
        trainers=("naive",),
        min_bars=50,
        retrain_every_bars=50,
        train_workers=1,  # the storm is about the queue, not throughput; ingest keeps a core
        kafka_max_poll_records=POLL_RECORDS,
        shutdown_grace_seconds=10,
        log_level="WARNING",
        log_format="json",
    )
    journal = tmp_path / "journal.jsonl"
    daemon = rel.DaemonProcess(
        settings,
        tmp_path / "daemon.log",
        runner_args=["--job-target", "journal"],
        extra_env={JOURNAL_ENV: str(journal)},
    )
    try:
        yield daemon.start(), journal
    finally:
        daemon.reap_group()


def _assert_one_run_at_a_time(journal: Path) -> dict[str, int]:
    """No symbol ever had two runs overlapping; return the number of runs per symbol."""
    runs = rel.read_journal(journal)
    for symbol, spans in runs.items():
        for (_s1, end), (start, _e2) in itertools.pairwise(spans):
            assert end is not None and start >= end, f"{symbol}: overlapping runs {spans}"
    return {s: len(v) for s, v in runs.items()}


def test_retrain_storms_coalesce_keep_the_queue_bounded_and_memory_flat(
    storm: tuple[rel.DaemonProcess, Path],
) -> None:
    """10,000 bars for one symbol and two bursts over 500 symbols: one running + one pending per
    symbol, the last run trains on every bar, the queue never exceeds the symbols, RSS is flat."""
    daemon, journal = storm
    s = daemon.settings
    store = s.paths.bars
    assert s.kafka_bootstrap_servers is not None
    producer = rel.make_producer(s.kafka_bootstrap_servers)
    started_rss = daemon.status_kib("VmRSS")

    # -- one symbol, 10,000 bars in one burst of single-bar messages --------------------------
    with Sampler(daemon) as one:
        for i in range(BURST_BARS):
            producer.send(s.topic_bars, key=b"STORM", value=encode_bar(rel.bar("STORM", i)))
        producer.flush(timeout=60)
        wait_for(lambda: rel.stored_count(store) == BURST_BARS, timeout=60, message="burst stored")
        wait_for(
            lambda: _trained(store).get("STORM") == BURST_BARS,
            timeout=60,
            message="a run on all 10,000 bars",
        )
    transactions = daemon.sample("ctd_store_transactions_total") or 0
    runs = _assert_one_run_at_a_time(journal)
    assert transactions >= BURST_BARS / POLL_RECORDS / 2  # many due triggers ...
    assert 1 <= runs["STORM"] <= transactions / 4  # ... coalesced into a few runs
    assert max(one.queue) <= 1 and max(one.running) <= 1
    after_one_rss = daemon.status_kib("VmRSS")

    # -- 500 symbols, twice: the second burst finds most of the first one's jobs pending ------
    symbols = [f"S{k:03d}" for k in range(MANY)]
    with Sampler(daemon) as many:
        for burst in range(2):
            for symbol in symbols:
                bars = [rel.bar(symbol, burst * MANY_BARS + i) for i in range(MANY_BARS)]
                for i in range(0, MANY_BARS, 25):
                    value = encode_batch(symbol, bars[i : i + 25])
                    producer.send(s.topic_bars, key=symbol.encode(), value=value)
            producer.flush(timeout=60)
            total = BURST_BARS + (burst + 1) * MANY * MANY_BARS
            wait_for(lambda total=total: rel.stored_count(store) == total, timeout=90)  # type: ignore[misc]
            if burst == 0:
                wait_for(lambda: max(many.queue, default=0) > MANY / 2, timeout=30)
                after_first_burst_rss = daemon.status_kib("VmRSS")
        time.sleep(2.0)  # a few more samples with the queue full
        end_rss = daemon.status_kib("VmRSS")
    producer.close(timeout=5)
    peak_kib = daemon.status_kib("VmHWM")
    assert daemon.terminate(timeout=60) == 0, daemon.log_tail()

    assert max(many.queue) <= MANY, max(many.queue)  # one pending job per symbol at most
    assert max(many.running) <= s.train_workers
    runs = _assert_one_run_at_a_time(journal)
    assert all(runs.get(sym, 0) <= 2 for sym in symbols), max(runs.values())
    # Flat memory: the second 30,000 bars and 500 coalesced requests cost next to nothing.
    assert end_rss - after_first_burst_rss < 30 * MIB, (after_first_burst_rss, end_rss)
    assert peak_kib - after_one_rss < 100 * MIB, (after_one_rss, peak_kib)
    print(
        f"RSS KiB: started {started_rss}, after 10k burst {after_one_rss}, after first "
        f"500-symbol burst {after_first_burst_rss}, end {end_rss}, peak (VmHWM) {peak_kib}; "
        f"runs STORM {runs['STORM']} for {transactions:.0f} transactions; "
        f"max queue {max(many.queue):.0f}"
    )
