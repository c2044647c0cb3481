"""Bar -> published prediction latency through the whole daemon, champion and shadow scored.

    python -m bench.predictions [--symbols 100] [--bars 4000] [--rate 200]

A daemon process (``ctd run``) on the bundled broker serves --symbols symbols,
each with a champion and a shadow (one xgboost model trained once, placed twice
per symbol) and 200 bars of history. The producer and the consumer run in this
process, the daemon in its own (sharing one interpreter would time the GIL).
Once the history's predictions are out, single-bar messages go out round-robin
over the symbols at --rate bars/s while a consumer reads ``ctd.predictions``.
Latency per bar: from just before the producer's send of the bar to the
consumer receiving its served record (broker, ingest, store commit, features,
two ONNX sessions, trial, prediction-log commit, publish, broker, consumer).
Printed: p50 / p99 / p999 and max, and the daemon's own view
(``ctd_prediction_latency_seconds``: poll returned -> publish acknowledged;
mean from its sum and count over the live bars).
"""

from __future__ import annotations

# ruff: noqa: E402
from daemon.logs import configure_logging

configure_logging("WARNING", "console")

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from daemon.kafka.bars import encode_bar, encode_batch
from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import ensure_topics
from daemon.settings import Settings
from deploy.registry import Registry
from tests.support.helpers import own_settings, wait_for
from tests.support.reliability import DaemonProcess, free_port
from trainers.data import bar_records
from trainers.pipeline import train_symbol
from trainers.synthetic import MarketGenerator, MarketSpec

HISTORY = 200


def place_models(settings: Settings, symbols: list[str], tmp: Path) -> None:
    """One xgboost model, placed as champion and shadow of every symbol."""
    bars = MarketGenerator(MarketSpec("TRAIN", seed=1, signal_strength=1.0)).next_bars(3000)
    result = train_symbol("TRAIN", bars, settings.train_config, tmp / "staging")
    if not result.passed:
        raise RuntimeError(f"the model did not pass its gates: {result.reason}")
    registry = Registry(settings.paths.registry)
    for symbol in symbols:
        for _ in range(2):
            registry.place(symbol, registry.add_version(symbol, tmp / "staging"))


class Reader(threading.Thread):
    """Consumes the predictions topic; records when each bar's served record arrived."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,  # tansu holds a fetch until this deadline (settings.py)
        )
        parts = wait_for(lambda: self.consumer.partitions_for_topic(settings.topic_predictions), 30)
        tps = [TopicPartition(settings.topic_predictions, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:
            self.consumer.position(tp)
        self.arrived: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for msgs in self.consumer.poll(timeout_ms=50).values():
                now = time.perf_counter()
                for msg in msgs:
                    record = json.loads(msg.value)
                    if record["served"]:
                        self.arrived.setdefault((record["symbol"], record["ts"]), now)
        self.consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--bars", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    symbols = [f"P{i:03d}" for i in range(args.symbols)]
    tmp = Path(tempfile.mkdtemp(prefix="ctd-bench-predictions-"))
    with LocalBroker() as broker:
        settings = own_settings(
            broker.bootstrap_servers,
            tmp / "data",
            "bp",
            min_bars=10**9,
            trainers=("xgboost",),
            walk_forward_folds=0,
            kafka_session_timeout_ms=3000,
            kafka_heartbeat_interval_ms=500,
            http_port=free_port(),
            log_format="json",
        )
        ensure_topics(settings, broker.bootstrap_servers)
        place_models(settings, symbols, tmp)
        daemon = DaemonProcess(settings, tmp / "daemon.log").start(ready_timeout=90)
        try:
            run(daemon, broker.bootstrap_servers, symbols, args)
        finally:
            daemon.terminate()


def run(
    daemon: DaemonProcess, bootstrap: str, symbols: list[str], args: argparse.Namespace
) -> None:
    settings = daemon.settings
    gens = {s: MarketGenerator(MarketSpec(s, seed=i)) for i, s in enumerate(symbols)}
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    reader = Reader(settings, bootstrap)
    reader.start()
    last: set[tuple[str, int]] = set()
    for s in symbols:
        recs = bar_records(s, gens[s].next_bars(HISTORY))
        producer.send(settings.topic_bars, key=s.encode(), value=encode_batch(s, recs))
        last.add((s, recs[-1].ts))
    producer.flush()
    # The live stream starts once the history is scored and published, not queued behind it.
    wait_for(lambda: last <= reader.arrived.keys(), 300, message="the history's predictions")
    count0 = daemon.sample("ctd_prediction_latency_seconds_count") or 0.0
    seconds0 = daemon.sample("ctd_prediction_latency_seconds_sum") or 0.0
    sent: dict[tuple[str, int], float] = {}
    started = time.perf_counter()
    for i in range(args.bars):
        symbol = symbols[i % len(symbols)]
        (bar,) = bar_records(symbol, gens[symbol].next_bars(1))
        due = started + i / args.rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.001))
        sent[(symbol, bar.ts)] = time.perf_counter()
        producer.send(settings.topic_bars, key=symbol.encode(), value=encode_bar(bar))
    producer.flush()
    sending = time.perf_counter() - started
    try:
        wait_for(lambda: sent.keys() <= reader.arrived.keys(), 60, message="every served record")
    except TimeoutError:
        missing = sorted(sent.keys() - reader.arrived.keys())
        raise RuntimeError(
            f"{len(missing)} bars got no served record, e.g. {missing[:5]}"
        ) from None
    reader.stop.set()
    reader.join(10)
    ms = np.array([(reader.arrived[k] - t) * 1000 for k, t in sent.items()])
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    count = (daemon.sample("ctd_prediction_latency_seconds_count") or 0.0) - count0
    seconds = (daemon.sample("ctd_prediction_latency_seconds_sum") or 0.0) - seconds0
    print(
        f"{len(symbols)} symbols (champion + shadow, xgboost), {len(sent)} single-bar messages "
        f"at {args.rate:.0f} bars/s ({len(sent) / sending:.0f} sent)"
    )
    print(
        f"bar sent -> served prediction received: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"p999 {p999:.1f} ms, max {ms.max():.1f} ms"
    )
    print(
        f"daemon (poll returned -> publish acknowledged): mean {seconds / count * 1000:.2f} ms "
        f"over {count:.0f} served records"
    )
    producer.close()


if __name__ == "__main__":
    main()
