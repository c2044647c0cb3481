"""Event-to-champion latency of the daemon vs the bare trainer, measured side by side.

For one symbol with 5,000 bars (planted signal), in one run:
  bare   = XGBoost fit + ONNX export of the same candidate, in this process
  bare+  = the whole training pipeline (baseline, parity, gates, metadata), in this process
  daemon = from the moment the triggering (last) bar is acknowledged by the broker
           until the champion is in the registry (consume, validate, store, commit,
           trigger, worker process, load bars, train, export, registry)
Each is repeated --repeat times (fresh symbol each time); medians are reported.

    python -m bench.e2e [--bars 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def bare_fit_export(bars, settings, out: Path) -> float:
    from monitors.base import NullMonitor
    from trainers.features import training_matrix
    from trainers.table import make_trainer

    t = time.perf_counter()
    matrix = training_matrix(bars)
    data = matrix.dataset(val_fraction=settings.val_fraction, test_fraction=settings.test_fraction)
    model = make_trainer("xgboost").fit(data, NullMonitor(), 0)
    model.export_onnx(out / "bare.onnx")
    return time.perf_counter() - t


def event_to_registry(daemon, producer, topic: str, symbol: str, bars) -> float:
    """Seconds from the triggering (last) bar's acknowledgement to the registry decision.

    All bars but the last are sent and stored first, so the clock measures what the
    daemon does for the event that triggers training, not the ingest of the history.
    """
    from daemon.kafka.bars import encode_batch
    from trainers.data import bar_records

    records = bar_records(symbol, bars)
    history, last = records[:-1], records[-1:]
    for j in range(0, len(history), 1000):
        producer.send(topic, key=symbol.encode(), value=encode_batch(symbol, history[j : j + 1000]))
    producer.flush()
    deadline = time.perf_counter() + 120
    while daemon.store.count(symbol) < len(history) and time.perf_counter() < deadline:
        time.sleep(0.005)
    producer.send(topic, key=symbol.encode(), value=encode_batch(symbol, last)).get(timeout=10)
    t0 = time.perf_counter()
    deadline = t0 + 300
    while time.perf_counter() < deadline:
        if daemon.registry.slots(symbol).champion or daemon.registry.history(symbol):
            break
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    if not daemon.registry.slots(symbol).champion:
        ledger = daemon.registry.history(symbol)
        print(f"  note: {symbol} got no champion ({ledger[-1].reason if ledger else 'timeout'})")
    return elapsed


def main() -> None:
    # Imported here, not at module level: training workers fork from a forkserver
    # that re-imports the main script, and a heavy one would add ~0.7 s to each job.
    from kafka import KafkaProducer
    from prometheus_client import CollectorRegistry

    from daemon.app import Daemon
    from daemon.kafka.broker import LocalBroker
    from tests.support.helpers import own_settings
    from trainers.pipeline import train_symbol
    from trainers.synthetic import MarketSpec, generate_bars

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        tmp_path = Path(tmp)
        settings = own_settings(
            broker.bootstrap_servers,
            tmp_path / "data",
            "bench-",
            min_bars=args.bars,
            retrain_every_bars=10 * args.bars,
            train_window_bars=args.bars,
            trainers=("xgboost",),
            log_level="WARNING",
        )
        daemon = Daemon(
            settings,
            bootstrap_servers=broker.bootstrap_servers,
            metrics_registry=CollectorRegistry(),
        ).start()
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap_servers,
            acks="all",
            enable_idempotence=False,
            linger_ms=5,
        )
        bare, pipeline, e2e = [], [], []
        try:
            for i in range(args.repeat):
                symbol = f"BENCH{i}"
                bars = generate_bars(
                    MarketSpec(symbol=symbol, seed=100 + i, signal_strength=1.0), args.bars
                )
                bare.append(bare_fit_export(bars, settings, tmp_path))
                t = time.perf_counter()
                train_symbol(symbol, bars, settings.train_config, tmp_path / f"pipe-{i}")
                pipeline.append(time.perf_counter() - t)

                e2e.append(event_to_registry(daemon, producer, settings.topic_bars, symbol, bars))
        finally:
            producer.close()
            daemon.stop(10)

    b, p, d = (statistics.median(x) for x in (bare, pipeline, e2e))
    print(f"bars per symbol:                       {args.bars}")
    print(f"repeats:                               {args.repeat}")
    print(f"bare XGBoost fit + ONNX export:        {b * 1000:8.1f} ms (median)")
    print(f"bare training pipeline (all gates):    {p * 1000:8.1f} ms (median)")
    print(f"daemon event -> champion in registry:  {d * 1000:8.1f} ms (median)")
    print(f"ratio daemon / bare fit+export:        {d / b:8.2f}x")
    print(f"ratio daemon / bare pipeline:          {d / p:8.2f}x")


if __name__ == "__main__":
    main()
