"""Event-to-champion latency of the daemon vs the bare trainer, measured side by side.

For one symbol with 5,000 bars (planted signal), in one run:
  bare   = XGBoost fit + ONNX export of the same candidate, in this process
  bare+  = the whole training pipeline (baseline, parity, gates, metadata), in this process
  daemon = from the moment the last bar is acknowledged by the broker until the
           champion is in the registry (consume, validate, store, commit, trigger,
           worker process, load bars, train, export, registry, promotion event)
Each is repeated --repeat times (fresh symbol each time); medians are reported.

    python bench/e2e.py [--bars 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from daemon.app import Daemon, train_config
from daemon.broker import LocalBroker
from daemon.demo import _records
from daemon.events import encode_batch
from daemon.settings import load_settings
from monitors.base import NullMonitor
from trainers.base import Dataset, make_trainer
from trainers.features import FEATURE_SPEC, training_matrix
from trainers.pipeline import train_symbol
from trainers.splits import chronological_split
from trainers.synthetic import MarketSpec, generate_bars


def bare_fit_export(bars, settings, out: Path) -> float:
    t = time.perf_counter()
    matrix = training_matrix(bars)
    split = chronological_split(
        len(matrix),
        val_fraction=settings.val_fraction,
        test_fraction=settings.test_fraction,
        embargo=FEATURE_SPEC.lookback + FEATURE_SPEC.label_horizon,
    )
    model = make_trainer("xgboost").fit(
        Dataset.from_split(matrix.X, matrix.y, split), NullMonitor(), 0
    )
    model.export_onnx(out / "bare.onnx")
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        tmp_path = Path(tmp)
        tag = uuid.uuid4().hex[:8]
        settings = load_settings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_group_id=f"bench-{tag}",
            topic_bars=f"bench-{tag}.bars",
            topic_dlq=f"bench-{tag}.dlq",
            topic_commands=f"bench-{tag}.commands",
            topic_promotions=f"bench-{tag}.promotions",
            data_dir=tmp_path / "data",
            http_port=0,
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
                train_symbol(symbol, bars, train_config(settings), tmp_path / f"pipe-{i}")
                pipeline.append(time.perf_counter() - t)

                records = _records(symbol, bars)
                for j in range(0, len(records), 1000):
                    producer.send(
                        settings.topic_bars,
                        key=symbol.encode(),
                        value=encode_batch(symbol, records[j : j + 1000]),
                    )
                producer.flush()
                t0 = time.perf_counter()
                deadline = t0 + 300
                while time.perf_counter() < deadline:
                    slots = daemon.registry.slots(symbol)
                    history = daemon.registry.history(symbol)
                    if slots.champion or history:
                        break
                    time.sleep(0.002)
                e2e.append(time.perf_counter() - t0)
                if not daemon.registry.slots(symbol).champion:
                    why = history[-1]["reason"] if history else "timeout"
                    print(f"  note: {symbol} got no champion ({why})")
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
