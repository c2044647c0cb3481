# Over 400 lines: setup (training, placing, warm-up), the two modes and the report share
# the run's state; split, each part would need it passed around.
"""The whole live path for a fleet: --symbols symbols, champion + shadow each, one daemon.

    python -m bench.fleet [--symbols 1000] [--family xgboost|tcn] [--preset tiny]
                          [--bars-per-symbol 100] [--rate N [--seconds S]]
                          [--fetch-max-wait-ms MS] [--train-bars 3000]

One champion and one shadow of --family are trained once (``bench.live.train_version``:
the champion on the first 90% of the training bars, the shadow on all of them) and
copied into the daemon's registry for every symbol with ``Registry.add_version`` +
``place``, so each symbol has valid metadata and slots. Every symbol's bars start
one bar after the training bars end (``trained_until``), so the trial counts every
scored bar; it never decides (promotion_alpha 1e-9, min_samples 10**6), so every bar
pays for it. No retraining: ``min_bars`` 10**9, no retrain / tune cron, live monitors
request no retrain; the bench checks that no training run happened.

Warm-up, through the broker: one batch message per symbol with the bars the live
buffer holds (feature lookback + model window - 1) plus 10, so the in-process
``Daemon`` loads every symbol's two ONNX sessions, fills its buffer, claims its
trial and scores a few bars before the measured stream. Pre-loading the bar store
instead would leave all that cold-start work inside the measurement.
The measured stream is single-bar messages round-robin over the symbols.

The process's collector is set as ``ctd run`` sets it (``daemon.cli.run.settle_heap``,
right after the daemon has started); --default-gc keeps CPython's defaults.
The daemon is warmed up before the stream is sent, by a spawned child process (its
producer has its own GIL, so this process's CPU time is the daemon's).
Flat-out (no --rate): the child sends the whole stream as fast as it can (linger 20
ms; far faster than the daemon drains it), so the daemon runs against a backlog:
decode, store, features, both sessions, prediction log, trial, publish. The
sustained rate and CPU per bar are taken from the later of "the child finished
sending" and "10% of the stream's served predictions acknowledged" to 90% (no
producer competing for the cores, no tail of the last poll). Paced (--rate N): the
child sends N bars/s (linger 0) for --seconds (else --bars-per-symbol per symbol).

Latency (paced): from ``time.time()`` just before the child's ``send()`` of the bar
(linger 0) to ``time.time()`` when the daemon's producer gets the broker's
acknowledgement of that bar's served prediction (a wrapper around
``PredictionPublisher._acked``): the record is then on the predictions topic. Both
are the same machine's wall clock. A consumer of the topic would add its own fetch
wait, which is not the daemon's. Note tansu holds a fetch until
``kafka_fetch_max_wait_ms`` (50 ms by default): --fetch-max-wait-ms sets it.
Each bar's latency is split where its poll returned and where the live path began
and ended for that poll (a wrapper around ``LivePath.on_batch``): broker + fetch,
ingest (store write, read-ahead, offset commit), the live path of the whole poll,
publish -> broker ack.

CPU per bar: this process's CPU time (the daemon, plus a 50 Hz sampler) over the
measured span (paced: child start to last acknowledgement), per stream bar. Peak
RSS: this process's VmHWM (the bench's own encoded messages are in it: its RSS
before the daemon starts is shown). Raw: after the daemon stops, a kafka-python
consumer with the daemon's settings drains the same topic
(``bench.ingest.drain_raw``).
"""

from __future__ import annotations

# ruff: noqa: E402
from daemon.logs import configure_logging

# Before any other ctd module binds its module-level logger (binding freezes the config).
configure_logging("WARNING", "console")

import argparse
import math
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from bench.ingest import drain_raw, produce
from bench.live import slice_bars, train_version
from bench.scale import outcomes_so_far, status_kib
from daemon.app import Daemon
from daemon.cli.run import settle_heap
from daemon.kafka.bars import encode_bar, encode_batch
from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import ensure_topics
from daemon.live.path import LivePath
from daemon.live.publish import PredictionPublisher, PredictionRecord
from daemon.registry import open_registry
from daemon.settings import Settings
from deploy.registry import Registry
from tests.support.helpers import own_settings, wait_for
from trainers.data import bar_records
from trainers.features import FEATURE_SPEC
from trainers.synthetic import MarketGenerator, MarketSpec, generate_bars

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

WARM_SCORED = 10
"""Bars per symbol scored in the warm-up, beyond the buffer's fill."""
STREAM_TIMEOUT = 600.0
"""Seconds the stream's served predictions may take after it was sent."""
TARGET_RATE = 20_000.0
TARGET_P99_MS = 2.0
BAR_SECONDS = MarketSpec("BAR", seed=0).bar_seconds
Message = tuple[bytes, bytes]


@dataclass
class Acks:
    """Wall-clock time of each served prediction's acknowledgement, keyed (symbol, ts);
    for the stream's, also the poll that returned its bar (``received_at``, monotonic) and
    the ack's monotonic time, and per poll when the live path started and ended."""

    stream_from_ts: int
    warm: dict[tuple[str, int], float] = field(default_factory=dict)
    stream: dict[tuple[str, int], float] = field(default_factory=dict)
    polled: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    live: dict[float, tuple[float, float]] = field(default_factory=dict)

    def wrap(self, acked: Callable[..., None]) -> Callable[..., None]:
        def recording(
            publisher: PredictionPublisher, record: PredictionRecord, received_at: float | None
        ) -> None:
            if record.served:
                now = time.time()
                key = (record.symbol, record.ts)
                if record.ts < self.stream_from_ts:
                    self.warm[key] = now
                else:
                    self.stream[key] = now
                    if received_at is not None:
                        self.polled[key] = (received_at, time.monotonic())
            acked(publisher, record, received_at)

        return recording

    def wrap_live(self, on_batch: Callable[..., Any]) -> Callable[..., Any]:
        def timing(path: LivePath, bars: Any, received_at: float | None = None) -> Any:
            start = time.monotonic()
            out = on_batch(path, bars, received_at)
            if received_at is not None:
                self.live[received_at] = (start, time.monotonic())
            return out

        return timing

    def stages_ms(
        self, keys: Sequence[tuple[str, int]], latency_ms: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Each stream bar's latency split at its poll's return, the live path's start and
        end: broker + fetch, ingest (store write, read-ahead, offset commit), live path
        (the whole poll's), publish -> broker ack."""
        rows = []
        for key, total in zip(keys, latency_ms, strict=True):
            received, acked = self.polled[key]
            start, end = self.live[received]
            after_poll = (acked - received) * 1000
            rows.append(
                (
                    total - after_poll,
                    (start - received) * 1000,
                    (end - start) * 1000,
                    (acked - end) * 1000,
                )
            )
        columns = np.array(rows).T
        names = (
            "broker + fetch",
            "ingest (store, commit)",
            "live path (whole poll)",
            "publish -> ack",
        )
        return dict(zip(names, columns, strict=True))


class Sampler(threading.Thread):
    """Every 20 ms: (wall time, this process's CPU time, stream predictions acknowledged)."""

    def __init__(self, acks: Acks) -> None:
        super().__init__(daemon=True)
        self.acks = acks
        self.samples: list[tuple[float, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.samples.append((time.time(), time.process_time(), len(self.acks.stream)))


@dataclass(frozen=True)
class Workload:
    symbols: list[str]
    warmup: list[Message]
    stream: list[Message]
    stream_keys: list[tuple[str, int]]
    stream_from_ts: int
    last_warm_ts: int


def train_pair(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, int]:
    """Staging dirs of the champion and the shadow, and the newest training bar's ts."""
    n = args.train_bars
    bars = generate_bars(MarketSpec("FLEETTRAIN", seed=7, signal_strength=1.0), n)
    scratch = Registry(tmp / "scratch-registry")
    dirs = (tmp / "champion", tmp / "shadow")
    for out, train in zip(dirs, (slice_bars(bars, 0, n - n // 10), bars), strict=True):
        _, seconds = train_version(
            "FLEETTRAIN", args.family, args.preset, train, registry=scratch, out=out
        )
        print(f"trained {out.name} ({args.family}) in {seconds:.1f} s", flush=True)
    return dirs[0], dirs[1], int(bars.ts[-1])


def place_everywhere(settings: Settings, symbols: Sequence[str], dirs: Sequence[Path]) -> int:
    """Copy champion then shadow in for every symbol; return the models' window."""
    registry = open_registry(settings)
    t = time.perf_counter()
    for symbol in symbols:
        for staging in dirs:
            registry.place(symbol, registry.add_version(symbol, staging))
    champion = registry.slots(symbol).champion
    assert champion is not None
    onnx = registry.metadata(symbol, champion).onnx
    assert onnx is not None
    window = onnx.window
    print(f"placed 2 versions x {len(symbols)} symbols in {time.perf_counter() - t:.1f} s")
    return window


def workload(symbols: list[str], history: int, per_symbol: int, start_ts: int) -> Workload:
    """Warm-up batches (``history`` bars each), then single bars round-robin."""
    warmup, columns = [], []
    for i, symbol in enumerate(symbols):
        gen = MarketGenerator(MarketSpec(symbol, seed=i, start_ts=start_ts))
        warmup.append(
            (symbol.encode(), encode_batch(symbol, bar_records(symbol, gen.next_bars(history))))
        )
        columns.append(bar_records(symbol, gen.next_bars(per_symbol)))
    stream = [(r.symbol.encode(), encode_bar(r)) for row in zip(*columns, strict=True) for r in row]
    keys = [(r.symbol, r.ts) for row in zip(*columns, strict=True) for r in row]
    stream_from = start_ts + BAR_SECONDS * history
    return Workload(symbols, warmup, stream, keys, stream_from, stream_from - BAR_SECONDS)


def send(
    bootstrap: str, topic: str, messages: list[Message], rate: float | None, out: Queue[list[float]]
) -> None:
    """Child process: send ``messages`` at ``rate``/s (None: as fast as possible, batched);
    put each send's wall time on ``out``."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=0 if rate else 20,
    )
    sent = []
    start = time.perf_counter()
    for i, (key, value) in enumerate(messages):
        if rate:
            due = start + i / rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.0005))
        sent.append(time.time())
        producer.send(topic, key=key, value=value)
    producer.flush()
    sent.append(time.time())  # the last: every message acknowledged
    producer.close()
    out.put(sent)


@dataclass
class Result:
    bars_per_s: float = 0.0
    cpu_per_bar: float = 0.0
    window: str = ""
    sent_per_s: float | None = None
    produced_at: float = 0.0
    latency_ms: np.ndarray | None = None
    stages_ms: dict[str, np.ndarray] = field(default_factory=dict)
    base_rss: int = 0
    peak_rss: int = 0
    trial_samples: int = 0
    retrains: int = 0
    raw_msgs_per_s: float = 0.0
    raw_cpu_per_msg: float = 0.0
    messages: int = 0


def steady(
    samples: list[tuple[float, float, int]], total: int, not_before: float
) -> tuple[float, float, str]:
    """Rate and CPU per bar from 10% of the stream acknowledged (and not before
    ``not_before``: the producer's end) to 90%."""
    a = next((s for s in samples if s[2] >= 0.1 * total and s[0] >= not_before), None)
    b = next((s for s in samples if s[2] >= 0.9 * total), None)
    if a is None or b is None or b[0] <= a[0]:
        raise RuntimeError("the stream is too short to time: raise --bars-per-symbol")
    n = b[2] - a[2]
    return n / (b[0] - a[0]), (b[1] - a[1]) / n, f"{n:,} bars over {b[0] - a[0]:.1f} s"


def run(args: argparse.Namespace, broker: LocalBroker, tmp: Path) -> Result:
    bootstrap = broker.bootstrap_servers
    settings = own_settings(
        bootstrap,
        tmp / "data",
        "fleet-",
        trainers=(args.family,),
        min_bars=10**9,
        retrain_every_bars=10**9,
        retrain_cron=None,
        tune_cron=None,
        live_monitor_retrain=False,
        promotion_alpha=1e-9,
        promotion_min_samples=10**6,
        promotion_max_samples=10**7,
        kafka_fetch_max_wait_ms=args.fetch_max_wait_ms,
        log_level="WARNING",
    )
    ensure_topics(settings, bootstrap)
    champion, shadow, trained_until = train_pair(args, tmp)
    symbols = [f"F{i:05d}" for i in range(args.symbols)]
    window = place_everywhere(settings, symbols, (champion, shadow))
    history = FEATURE_SPEC.lookback + window - 1 + WARM_SCORED
    per_symbol = args.bars_per_symbol
    if args.rate and args.seconds:
        per_symbol = math.ceil(args.rate * args.seconds / args.symbols)
    work = workload(symbols, history, per_symbol, trained_until + BAR_SECONDS)
    total = len(work.stream)
    print(
        f"{args.symbols} symbols, warm-up {history} bars each, stream {total:,} single-bar "
        f"messages ({per_symbol}/symbol)",
        flush=True,
    )
    res = Result(messages=len(work.warmup) + total)
    seconds = produce(bootstrap, settings.topic_bars, work.warmup)
    print(f"warm-up produced before the daemon started in {seconds:.1f} s", flush=True)

    acks = Acks(work.stream_from_ts)
    original = PredictionPublisher._acked
    setattr(PredictionPublisher, "_acked", acks.wrap(original))  # noqa: B010  # bench-only hook
    on_batch = LivePath.on_batch
    setattr(LivePath, "on_batch", acks.wrap_live(on_batch))  # noqa: B010
    res.base_rss = status_kib("self", "VmRSS")
    metrics = CollectorRegistry()
    daemon = Daemon(settings, bootstrap_servers=bootstrap, metrics_registry=metrics).start()
    if not args.default_gc:
        settle_heap()  # as ``ctd run`` does once the daemon has started
    sampler = Sampler(acks)
    try:
        sampler.start()
        warm_keys = {(s, work.last_warm_ts) for s in symbols}
        t = time.perf_counter()
        wait_for(lambda: warm_keys <= acks.warm.keys(), 600, 0.02, "warm-up predictions")
        print(
            f"warmed up in {time.perf_counter() - t:.1f} s; measuring (pid {os.getpid()})",
            flush=True,
        )
        measure(args, settings, work, acks, res)
        sampler.stop.set()
        sampler.join()
        sampler.samples.append((time.time(), time.process_time(), len(acks.stream)))
        if not args.rate:
            res.bars_per_s, res.cpu_per_bar, res.window = steady(
                sampler.samples, total, res.produced_at
            )
        res.peak_rss = status_kib("self", "VmHWM")
        res.trial_samples = sum(n for _, _, n, _ in daemon.live.trial_rows())
        res.retrains = outcomes_so_far(metrics) + daemon.scheduler.pending
    finally:
        sampler.stop.set()
        daemon.stop(10)
        setattr(PredictionPublisher, "_acked", original)  # noqa: B010
        setattr(LivePath, "on_batch", on_batch)  # noqa: B010
    raw_s, raw_cpu = drain_raw(settings, bootstrap, res.messages)
    res.raw_msgs_per_s, res.raw_cpu_per_msg = res.messages / raw_s, raw_cpu / res.messages
    return res


def measure(
    args: argparse.Namespace, settings: Settings, work: Workload, acks: Acks, res: Result
) -> None:
    """Send the stream from a spawned child; wait for every served prediction."""
    ctx = multiprocessing.get_context("spawn")
    out: Queue[list[float]] = ctx.Queue()
    child = ctx.Process(
        target=send,
        args=(settings.kafka_bootstrap_servers, settings.topic_bars, work.stream, args.rate, out),
    )
    t0, cpu0 = time.time(), time.process_time()
    child.start()
    sent = out.get(timeout=3600)
    child.join()
    res.produced_at = sent.pop()
    total = len(work.stream)
    first = sent[0]
    res.sent_per_s = total / (sent[-1] - first)
    print(
        f"stream sent at {res.sent_per_s:,.0f} msg/s; all on the topic "
        f"{res.produced_at - t0:.1f} s after the child started",
        flush=True,
    )
    wait_for(lambda: len(acks.stream) >= total, STREAM_TIMEOUT, 0.02, "every stream prediction")
    if not args.rate:
        return
    t1, cpu1 = max(acks.stream.values()), time.process_time()
    res.bars_per_s = total / (t1 - first)
    res.cpu_per_bar = (cpu1 - cpu0) / total
    res.window = f"{total:,} bars, first send -> last ack {t1 - first:.1f} s"
    res.latency_ms = np.array(
        [(acks.stream[k] - s) * 1000 for k, s in zip(work.stream_keys, sent, strict=True)]
    )
    res.stages_ms = acks.stages_ms(work.stream_keys, res.latency_ms)


def report(args: argparse.Namespace, res: Result) -> None:
    mode = f"paced at {args.rate:,.0f} bars/s" if args.rate else "flat-out"
    family = args.family if args.family == "xgboost" else f"{args.family} {args.preset}"
    print(
        f"\n{args.symbols} symbols, {family}"
        f" champion + shadow, {mode}; fetch_max_wait_ms {args.fetch_max_wait_ms}; "
        f"collector {'CPython defaults' if args.default_gc else 'settled as ctd run'}; "
        f"{os.cpu_count()} CPUs (shared: absolute numbers are lower than on a quiet machine)"
    )
    rows = [("sustained bars/s through the live path", f"{res.bars_per_s:,.0f} ({res.window})")]
    if res.sent_per_s is not None:
        rows.append(("  sent by the producer (child process)", f"{res.sent_per_s:,.0f} bars/s"))
    if res.latency_ms is not None:
        p50, p99, p999 = np.percentile(res.latency_ms, [50, 99, 99.9])
        rows.append(
            (
                "bar sent -> served prediction acked",
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, p999 {p999:.2f} ms, "
                f"max {res.latency_ms.max():.2f} ms",
            )
        )
        for stage, ms in res.stages_ms.items():
            p50, p99 = np.percentile(ms, [50, 99])
            rows.append((f"  {stage}", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"))
    rows += [
        ("daemon process CPU per bar", f"{res.cpu_per_bar * 1e6:,.0f} us"),
        ("peak RSS (VmHWM, this process)", f"{res.peak_rss / 1024:,.0f} MiB"),
        ("  of which before the daemon started", f"{res.base_rss / 1024:,.0f} MiB"),
        (
            "raw kafka-python consume, same topic",
            f"{res.raw_msgs_per_s:,.0f} msg/s ({res.messages:,} messages, "
            f"{res.raw_cpu_per_msg * 1e6:.0f} us CPU/msg)"
            + ("" if args.rate else f"; live path = {res.bars_per_s / res.raw_msgs_per_s:.2f}x"),
        ),
        ("trial samples counted (all symbols)", f"{res.trial_samples:,}"),
        ("training runs started / queued", f"{res.retrains}"),
    ]
    for name, value in rows:
        print(f"{name:<42}{value}")
    print(
        f"targets: >= {TARGET_RATE:,.0f} bars/s flat-out on 2 cores; "
        f"p99 < {TARGET_P99_MS:.0f} ms paced at {TARGET_RATE / 2:,.0f} bars/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--family", default="xgboost", choices=("xgboost", "tcn"))
    parser.add_argument("--preset", default="tiny", help="preset of tcn")
    parser.add_argument("--bars-per-symbol", type=int, default=100, help="measured stream")
    parser.add_argument("--rate", type=float, default=None, help="paced: bars/s (else flat-out)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="paced: stream length (overrides bars)"
    )
    parser.add_argument("--fetch-max-wait-ms", type=int, default=50)
    parser.add_argument("--train-bars", type=int, default=3000)
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's collector defaults (ctd run's settle_heap not applied)",
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("CTD_BENCH_DIR")) as tmp,
        LocalBroker() as broker,
    ):
        report(args, run(args, broker, Path(tmp)))


if __name__ == "__main__":
    main()
