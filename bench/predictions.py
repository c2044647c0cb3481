"""Bar -> published prediction latency through the whole daemon, champion and shadow scored.

    python -m bench.predictions [--symbols 100] [--bars 5000] [--rate 500]

An in-process daemon on the bundled broker serves --symbols symbols, each with
a champion and a shadow (one xgboost model trained once, placed twice per
symbol) and 200 bars of history. Then single-bar messages go out round-robin
over the symbols at --rate bars/s; a consumer reads ``ctd.predictions`` at the
same time. Latency per bar: from just before the producer's send of the bar to
the consumer receiving its served record (producer batching, broker, ingest,
store commit, features, two ONNX sessions, trial, prediction-log commit,
publish, broker, consumer). Printed: p50 / p99 / p999 and max, and the
daemon's own view (``ctd_prediction_latency_seconds``: poll returned -> publish
acknowledged; mean from its sum and count).
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

from daemon.app import Daemon
from daemon.kafka.bars import encode_bar, encode_batch
from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import ensure_topics
from daemon.settings import Settings
from tests.support.helpers import own_settings, wait_for
from trainers.data import bar_records
from trainers.pipeline import train_symbol
from trainers.synthetic import MarketGenerator, MarketSpec

HISTORY = 200


def place_models(daemon: Daemon, symbols: list[str], tmp: Path) -> None:
    """One xgboost model, placed as champion and shadow of every symbol."""
    bars = MarketGenerator(MarketSpec("TRAIN", seed=1, signal_strength=1.0)).next_bars(3000)
    result = train_symbol("TRAIN", bars, daemon.settings.train_config, tmp / "staging")
    if not result.passed:
        raise RuntimeError(f"the model did not pass its gates: {result.reason}")
    registry = daemon.registry.unfenced()
    for symbol in symbols:
        for _ in range(2):
            registry.place(symbol, registry.add_version(symbol, tmp / "staging"))


class Reader(threading.Thread):
    """Consumes the predictions topic; records when each bar's served record arrived."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
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
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=500.0)
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
        )
        ensure_topics(settings, broker.bootstrap_servers)
        daemon = Daemon(settings, bootstrap_servers=broker.bootstrap_servers).start()
        try:
            run(daemon, broker.bootstrap_servers, symbols, args, tmp)
        finally:
            daemon.stop(10)


def run(
    daemon: Daemon, bootstrap: str, symbols: list[str], args: argparse.Namespace, tmp: Path
) -> None:
    settings = daemon.settings
    place_models(daemon, symbols, tmp)
    gens = {s: MarketGenerator(MarketSpec(s, seed=i)) for i, s in enumerate(symbols)}
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    for s in symbols:
        recs = bar_records(s, gens[s].next_bars(HISTORY))
        producer.send(settings.topic_bars, key=s.encode(), value=encode_batch(s, recs))
    producer.flush()
    wait_for(lambda: all(daemon.store.count(s) == HISTORY for s in symbols), 120)
    reader = Reader(settings, bootstrap)
    reader.start()
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
    wait_for(lambda: len(reader.arrived) >= len(sent), 120, message="every served record")
    reader.stop.set()
    reader.join(10)
    elapsed = time.perf_counter() - started
    ms = np.array([(reader.arrived[k] - t) * 1000 for k, t in sent.items()])
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    sample = daemon.metrics.registry.get_sample_value
    count = sample("ctd_prediction_latency_seconds_count") or 0.0
    total = sample("ctd_prediction_latency_seconds_sum") or float("nan")
    print(
        f"{len(symbols)} symbols (champion + shadow, xgboost), {len(sent)} single-bar messages "
        f"at {args.rate:.0f} bars/s ({len(sent) / elapsed:.0f} achieved)"
    )
    print(
        f"bar sent -> served prediction received: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"p999 {p999:.1f} ms, max {ms.max():.1f} ms"
    )
    print(
        f"daemon (poll returned -> publish acknowledged): mean {total / count * 1000:.2f} ms "
        f"over {count:.0f} bars"
    )
    producer.close()


if __name__ == "__main__":
    main()
