"""Many symbols through one in-process daemon: peak memory, queue depth, training per symbol.

    python -m bench.scale [--symbols 1000] [--bars 1000] [--trainer naive] [--workers 1]
                          [--batch 250]

Every symbol's --bars bars (batch-form messages of --batch bars, symbols
interleaved round by round, as a live feed would send them) go to the bundled
broker while an in-process Daemon ingests them with retraining on:
``min_bars`` = --bars, so each symbol becomes due exactly once, when its last
bar is stored. The run ends when every symbol has a training outcome.

Trainer: ``naive`` by default, with the beat-the-baseline gate off so every
symbol gets a champion (registry copy + fsyncs, placement, live session load,
promotions topic: all the per-symbol work of the daemon), while training itself
costs next to nothing; this measures ctd's own overhead at scale. ``xgboost``
costs ~0.3-1 s more per symbol on 2 cores (the full pipeline with walk-forward),
so 1,000 symbols would take 10+ minutes: run it with fewer symbols.

Memory: the daemon process's VmHWM (/proc/self/status; this process also holds
the produced messages: its RSS before the daemon starts is shown); every
descendant (forkserver, training workers) sampled every 50 ms, summed per
sample; after the forkserver is stopped, RUSAGE_CHILDREN's ru_maxrss (largest
reaped child, broker excluded: it is still running then). Linux carries a
process's high-water mark across exec, so the forkserver (forked from the
daemon, then exec'd) reports at least the daemon's RSS at the moment the first
job started: trust the sampled per-child VmHWM over this line.
"""

from __future__ import annotations

from pathlib import Path

# ruff: noqa: E402
from daemon.logs import configure_logging

# Before any other ctd module binds its module-level logger (binding freezes the config).
configure_logging("WARNING", "console")

import argparse
import multiprocessing.forkserver
import os
import resource
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from daemon.app import Daemon
    from daemon.training.scheduler import JobOutcome

# ctd is imported inside the functions: a forkserver worker re-imports this main module
# before running its job, and a heavy import list here would add ~0.5 s to every job
# that ``ctd run`` (whose main module is a small console script) does not pay.

OUTCOMES = ("champion_bootstrapped", "shadow_placed", "candidate_rejected", "training_failed")
MIB = 1024 * 1024


def status_kib(pid: int | str, field: str) -> int:
    """A ``Vm*`` field of /proc/<pid>/status in KiB; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        out += kids
        frontier += kids
    return out


class Sampler(threading.Thread):
    """Every 50 ms: RSS of the daemon's descendants (broker excluded), queue depth."""

    def __init__(self, daemon: Daemon, broker_pid: int | None) -> None:
        super().__init__(daemon=True)
        self.ctd, self.broker_pid = daemon, broker_pid
        self.stop = threading.Event()
        self.max_children_rss = 0
        self.max_total_rss = 0
        self.max_worker_hwm = 0
        self.max_queue = 0
        self.max_broker_rss = 0

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(0.05):
            kids = [p for p in descendants(me) if p != self.broker_pid]
            children = sum(status_kib(p, "VmRSS") for p in kids)
            self.max_children_rss = max(self.max_children_rss, children)
            self.max_total_rss = max(self.max_total_rss, children + status_kib(me, "VmRSS"))
            self.max_worker_hwm = max(
                [self.max_worker_hwm, *(status_kib(p, "VmHWM") for p in kids)]
            )
            if self.broker_pid:
                self.max_broker_rss = max(self.max_broker_rss, status_kib(self.broker_pid, "VmRSS"))
            if self.ctd.scheduler is not None:
                self.max_queue = max(self.max_queue, self.ctd.scheduler.pending)


def messages(symbols: list[str], bars: int, batch: int) -> list[tuple[bytes, bytes]]:
    """Round r holds bars [r * batch, (r + 1) * batch) of every symbol."""
    from daemon.kafka.bars import encode_batch
    from trainers.data import BarRecord
    from trainers.synthetic import MarketSpec, generate_bars

    per_symbol = []
    for i, symbol in enumerate(symbols):
        b = generate_bars(MarketSpec(symbol, seed=i, signal_strength=0.5), bars)
        recs = [
            BarRecord(symbol, int(t), float(o), float(h), float(lo), float(c), float(v))
            for t, o, h, lo, c, v in zip(
                b.ts, b.open, b.high, b.low, b.close, b.volume, strict=True
            )
        ]
        per_symbol.append(
            [
                (symbol.encode(), encode_batch(symbol, recs[j : j + batch]))
                for j in range(0, bars, batch)
            ]
        )
    return [m for round_ in zip(*per_symbol, strict=True) for m in round_]


def outcomes_so_far(metrics: CollectorRegistry) -> int:
    total = 0.0
    for family in metrics.collect():
        if family.name == "ctd_training_runs":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return int(total)


@dataclass
class Result:
    wall: float = 0.0
    produced: float = 0.0
    ingested: float = 0.0
    once: int = 0
    other_counts: dict[int, int] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    main_hwm: int = 0
    base_rss: int = 0
    children_maxrss: int = 0
    sampler: Sampler | None = None


def run(args: argparse.Namespace, symbols: list[str], msgs: list[tuple[bytes, bytes]]) -> Result:
    from kafka import KafkaProducer
    from prometheus_client import CollectorRegistry

    from daemon.app import Daemon
    from daemon.kafka.broker import LocalBroker
    from tests.support.helpers import own_settings

    res = Result()
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        settings = own_settings(
            broker.bootstrap_servers,
            Path(tmp) / "data",
            "scale-",
            min_bars=args.bars,
            retrain_every_bars=10 * args.bars,
            train_window_bars=args.bars,
            train_workers=args.workers,
            trainers=(args.trainer,),
            gate_require_beat_baseline=args.trainer != "naive",
            log_level="WARNING",
        )
        metrics = CollectorRegistry()
        daemon = Daemon(
            settings, bootstrap_servers=broker.bootstrap_servers, metrics_registry=metrics
        )
        on_done = daemon._on_job_done

        def timed_on_done(outcome: JobOutcome) -> None:
            res.durations.append(outcome.duration_seconds)
            timings = outcome.metadata.timings if outcome.metadata is not None else {}
            if "total_seconds" in timings:
                res.train_seconds.append(float(timings["total_seconds"]))
            on_done(outcome)

        daemon._on_job_done = timed_on_done  # type: ignore[method-assign]  # before start()
        res.base_rss = status_kib("self", "VmRSS")
        started = time.perf_counter()
        daemon.start()
        sampler = Sampler(daemon, broker.pid)
        sampler.start()
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap_servers,
            acks="all",
            enable_idempotence=False,
            linger_ms=20,
        )
        for key, value in msgs:
            producer.send(settings.topic_bars, key=key, value=value)
        producer.flush()
        producer.close()
        res.produced = time.perf_counter() - started
        deadline = started + args.timeout
        while outcomes_so_far(metrics) < len(symbols) and time.perf_counter() < deadline:
            consumed = metrics.get_sample_value("ctd_ingest_messages_total") or 0
            if not res.ingested and consumed >= len(msgs):
                res.ingested = time.perf_counter() - started
            time.sleep(0.2)
        res.wall = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        res.main_hwm = status_kib("self", "VmHWM")
        daemon.stop(30)
        counts: Counter[int] = Counter()
        for symbol in symbols:
            events = [e.event for e in daemon.registry.history(symbol)]
            counts[sum(1 for e in events if e in OUTCOMES)] += 1
        res.once = counts.pop(1, 0)
        res.other_counts = dict(counts)
        fs: Any = multiprocessing.forkserver._forkserver
        fs._stop()  # reap the forkserver so its workers' peak reaches RUSAGE_CHILDREN
        res.children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res.sampler = sampler
    return res


def report(args: argparse.Namespace, res: Result) -> None:
    sampler = res.sampler
    assert sampler is not None
    rows: list[tuple[str, str]] = [
        ("wall: daemon start -> all symbols have an outcome", f"{res.wall:.1f} s"),
        ("  producing every message took", f"{res.produced:.1f} s"),
        ("  consuming every message took", f"{res.ingested:.1f} s" if res.ingested else "n/a"),
        (
            "symbols with exactly one training outcome",
            f"{res.once} / {args.symbols}"
            + (f" (others, by outcome count: {res.other_counts})" if res.other_counts else ""),
        ),
    ]
    if res.durations:
        d = np.asarray(res.durations)
        rows.append(
            (
                "job time launch -> reaped, median / p95",
                f"{np.median(d):.3f} / {np.percentile(d, 95):.3f} s ({len(d)} jobs)",
            )
        )
    if res.train_seconds:
        s = np.asarray(res.train_seconds)
        rows.append(
            (
                "train_symbol inside the worker, median / p95",
                f"{statistics.median(s):.3f} / {np.percentile(s, 95):.3f} s",
            )
        )
    rows += [
        ("retrain queue depth, max", f"{sampler.max_queue}"),
        ("peak RSS daemon process (VmHWM)", f"{res.main_hwm / 1024:.0f} MiB"),
        ("  of which the bench before daemon start (messages)", f"{res.base_rss / 1024:.0f} MiB"),
        (
            "peak RSS one child (forkserver / worker VmHWM)",
            f"{sampler.max_worker_hwm / 1024:.0f} MiB",
        ),
        ("peak RSS children summed (sampled)", f"{sampler.max_children_rss / 1024:.0f} MiB"),
        ("peak RSS daemon + children (sampled)", f"{sampler.max_total_rss / 1024:.0f} MiB"),
        (
            "RUSAGE_CHILDREN ru_maxrss (largest reaped child)",
            f"{res.children_maxrss / 1024:.0f} MiB",
        ),
        ("peak RSS broker (tansu, memory; not ctd)", f"{sampler.max_broker_rss / 1024:.0f} MiB"),
    ]
    for name, value in rows:
        print(f"{name:<52}{value}")
    print("target: peak RSS (daemon + children) < 2048 MiB; every symbol trained once")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--bars", type=int, default=1000, help="bars per symbol (= min_bars)")
    parser.add_argument("--trainer", default="naive", choices=("naive", "xgboost"))
    parser.add_argument("--workers", type=int, default=1, help="train_workers")
    parser.add_argument("--batch", type=int, default=250, help="bars per message")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    if args.bars % args.batch:
        parser.error("--bars must be a multiple of --batch")

    symbols = [f"S{i:05d}" for i in range(args.symbols)]
    t = time.perf_counter()
    msgs = messages(symbols, args.bars, args.batch)
    print(
        f"{args.symbols} symbols x {args.bars} bars = {args.symbols * args.bars:,} bars in "
        f"{len(msgs):,} messages ({sum(len(v) for _, v in msgs) / 1e6:.0f} MB), generated in "
        f"{time.perf_counter() - t:.1f} s; trainer {args.trainer}, {args.workers} worker(s), "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    report(args, run(args, symbols, msgs))


if __name__ == "__main__":
    main()
