"""The predictions producer: kafka-python's defaults vs ctd's settings, side by side in one run.

    python -m bench.produce [--records 40000] [--symbols 1000] [--rounds 2]

Sends --records prediction records (``PredictionRecord.to_json`` values, symbol
keys round-robin over --symbols, the idempotency header, a delivery callback
each), as the live path does, to a 6-partition topic on the bundled broker, then
flushes. Every variant is a ``daemon.kafka.clients.make_producer`` producer with
one change at a time put back to kafka-python's default:

  kafka-python defaults  DefaultPartitioner (murmur2 in pure Python per send),
                         16 KB batches
  + kept key hashes      ``KeyHashPartitioner``, 16 KB batches
  ctd                    ``KeyHashPartitioner``, ``PRODUCER_BATCH_BYTES`` batches

Rounds alternate the variants. Prints sends/s, CPU per send (the process: the
sending thread and kafka-python's sender thread) and how often a send woke the
sender thread (kafka-python wakes it on every send while a partition holds a
full batch).
"""

from __future__ import annotations

# ruff: noqa: E402
from daemon.logs import configure_logging

configure_logging("WARNING", "console")

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaProducer
from kafka.partitioner import DefaultPartitioner
from kafka.producer.sender import Sender

from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import PRODUCER_BATCH_BYTES, ensure_topics, make_producer
from daemon.live.publish import IDEMPOTENCY_HEADER, PredictionRecord
from daemon.settings import Settings
from tests.support.helpers import own_settings

KAFKA_PYTHON_BATCH_BYTES = 16384
VARIANTS = ("kafka-python defaults", "+ kept key hashes", "ctd")


@dataclass
class Run:
    seconds: float
    cpu: float
    wakeups: int


class _Wakeups:
    """Counts ``Sender.wakeup`` calls (bench-only hook)."""

    def __init__(self) -> None:
        self.count = 0
        self._original = Sender.wakeup

    def __enter__(self) -> _Wakeups:
        original = self._original

        def counting(sender: Sender) -> None:
            self.count += 1
            original(sender)

        setattr(Sender, "wakeup", counting)  # noqa: B010
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(Sender, "wakeup", self._original)  # noqa: B010


def producer_for(variant: str, settings: Settings, bootstrap: str) -> KafkaProducer:
    producer = make_producer(settings, bootstrap)
    # Bench-only: put single settings back to kafka-python's defaults on the built producer.
    if variant == VARIANTS[0]:
        producer.config["partitioner"] = DefaultPartitioner()
    if variant != "ctd":
        producer._accumulator.config["batch_size"] = KAFKA_PYTHON_BATCH_BYTES
    return producer


def records(symbols: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    now = time.time()
    out = []
    for i in range(symbols):
        r = PredictionRecord(
            symbol=f"F{i:05d}",
            ts=1_700_000_000,
            horizon_bars=1,
            slot="champion",
            served=True,
            version="20261208T005338700367Z-13bf",
            trainer="xgboost",
            target="direction",
            p_up=0.5123,
            predicted_return=None,
            signal=0,
            model_age_seconds=12.3,
            produced_at=now,
        )
        out.append(
            (r.symbol.encode(), r.to_json(), [(IDEMPOTENCY_HEADER, r.idempotency_key.encode())])
        )
    return out


def send_all(
    producer: KafkaProducer,
    topic: str,
    work: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
    n: int,
) -> Run:
    acked = 0

    def ack(_: object) -> None:
        nonlocal acked
        acked += 1

    with _Wakeups() as wakeups:
        t, c = time.perf_counter(), time.process_time()
        for i in range(n):
            key, value, headers = work[i % len(work)]
            producer.send(topic, key=key, value=value, headers=headers).add_callback(ack)
        producer.flush()
        run = Run(time.perf_counter() - t, time.process_time() - c, wakeups.count)
    if acked != n:
        raise RuntimeError(f"{acked} of {n} records acknowledged")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = records(args.symbols)
    runs: dict[str, list[Run]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        settings = own_settings(broker.bootstrap_servers, Path(tmp), prefix="bench-produce-")
        ensure_topics(settings, broker.bootstrap_servers)
        topic = settings.topic_predictions
        producers = {v: producer_for(v, settings, broker.bootstrap_servers) for v in VARIANTS}
        try:
            for p in producers.values():
                p.send(topic, key=b"warm", value=b"{}").get(30)
            for _ in range(args.rounds):
                for v in VARIANTS:
                    runs[v].append(send_all(producers[v], topic, work, args.records))
        finally:
            for p in producers.values():
                p.close(10)

    print(
        f"\n{args.records:,} prediction records per round, {args.symbols} keys, "
        f"{settings.topic_partitions} partitions, {args.rounds} rounds; ctd batches "
        f"{PRODUCER_BATCH_BYTES // 1024} KB"
    )
    header = (
        f"{'producer':<24}{'sends/s':>10}{'CPU us/send':>13}{'wakeups/send':>14}{'vs defaults':>13}"
    )
    print(header)
    print("-" * len(header))
    base = sum(r.cpu for r in runs[VARIANTS[0]])
    for v in VARIANTS:
        for r in runs[v]:
            print(
                f"{v:<24}{args.records / r.seconds:>10,.0f}{1e6 * r.cpu / args.records:>13.1f}"
                f"{r.wakeups / args.records:>14.3f}"
                f"{base / sum(x.cpu for x in runs[v]):>12.2f}x"
            )


if __name__ == "__main__":
    main()
