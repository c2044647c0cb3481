"""ctd's ingest path vs the raw kafka-python consume rate, on the same messages in one run.

    python -m bench.ingest [--symbols 50] [--bars 4000] [--batch 100] [--forms batch,single]
                           [--no-daemon]

For each message form (batch form with --batch bars per message, and single-bar
messages) the bars (--symbols x --bars, keyed by symbol) are produced once to a
fresh topic on the bundled broker, then drained by fresh consumer groups, each
built by ``daemon.kafka.make_consumer`` (the daemon's own client settings):

  raw     poll() until every message arrived; values untouched (bytes only)
  ingest  ``daemon.kafka.ingest.Ingestor.poll_once`` until every message is processed:
          decode + validate, one SQLite transaction per poll (synchronous=FULL,
          real BarStore in a temp dir on the same disk) on the writer thread while
          the next poll is read and decoded, offset commit
  daemon  a whole in-process Daemon (no training: min_bars above the bar count):
          ingest thread = Ingestor + metrics + live path + monitors

kafka-python checks every record batch's CRC-32C, in C with the ``crc32c``
package ctd depends on. ``--crc python`` swaps in kafka-python's pure-Python
CRC for both paths (what a bare ``pip install kafka-python`` runs): raw consume
is then 10x slower and the same ingest work is a far smaller share of it.

Group join (~3 s on tansu) is excluded: raw and ingest wait for their partition
assignment, seek to the beginning, then start the clock. The daemon's join
cannot be separated that way, so its rate is taken from the first poll that
returned messages to the last (the first poll's messages are not counted).
"""

from __future__ import annotations

from pathlib import Path

# ruff: noqa: E402
from daemon.logs import configure_logging

# Before any other ctd module binds its module-level logger (binding freezes the config).
configure_logging("WARNING", "console")

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import kafka.record.util
from kafka import KafkaConsumer, KafkaProducer
from kafka.record._crc32c import crc as crc32c_py
from prometheus_client import CollectorRegistry

from daemon.app import Daemon
from daemon.kafka.bars import encode_bar, encode_batch
from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import ensure_topics, make_consumer, make_producer
from daemon.kafka.ingest import Ingestor
from daemon.settings import Settings
from daemon.store.bars import BarStore
from tests.support.helpers import own_settings
from trainers.data import bar_records
from trainers.synthetic import MarketSpec, generate_bars

DEADLINE_SECONDS = 600.0


@dataclass(frozen=True)
class Rate:
    messages: int
    bars: int
    seconds: float
    cpu_seconds: float
    """Process CPU time over the same span: the contention-proof half of the story."""

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def bars_per_s(self) -> float:
        return self.bars / self.seconds


def messages_for(form: str, symbols: int, bars: int, batch: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of every message, symbols interleaved as a live feed would send them."""
    per_symbol: list[list[tuple[bytes, bytes]]] = []
    for i in range(symbols):
        symbol = f"SYM{i:03d}"
        recs = bar_records(symbol, generate_bars(MarketSpec(symbol, seed=i), bars))
        key = symbol.encode()
        if form == "batch":
            per_symbol.append(
                [(key, encode_batch(symbol, recs[j : j + batch])) for j in range(0, bars, batch)]
            )
        else:
            per_symbol.append([(key, encode_bar(r)) for r in recs])
    return [m for round_ in zip(*per_symbol, strict=True) for m in round_]


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=20
    )
    t = time.perf_counter()
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    seconds = time.perf_counter() - t
    producer.close()
    return seconds


def joined(consumer: KafkaConsumer) -> None:
    """Wait for the partition assignment, then rewind: what was fetched so far comes again."""
    deadline = time.monotonic() + 60
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise TimeoutError("consumer got no partition assignment within 60 s")
        consumer.poll(timeout_ms=100, max_records=1)
    consumer.seek_to_beginning()


def drain_raw(settings: Settings, bootstrap: str, total: int) -> tuple[float, float]:
    consumer = make_consumer(settings, bootstrap, group_id=f"raw-{uuid.uuid4().hex[:8]}")
    try:
        joined(consumer)
        seen = 0
        t, cpu = time.perf_counter(), time.process_time()
        while seen < total:
            for msgs in consumer.poll(
                timeout_ms=settings.kafka_poll_timeout_ms,
                max_records=settings.kafka_max_poll_records,
            ).values():
                seen += len(msgs)
            if time.perf_counter() - t > DEADLINE_SECONDS:
                raise TimeoutError(f"raw consumer saw {seen} of {total} messages")
        return time.perf_counter() - t, time.process_time() - cpu
    finally:
        consumer.close(autocommit=False)


def drain_ingest(
    settings: Settings, bootstrap: str, total: int, store_dir: Path
) -> tuple[float, float]:
    store = BarStore(store_dir / "bars.sqlite")
    consumer = make_consumer(settings, bootstrap, group_id=f"ingest-{uuid.uuid4().hex[:8]}")
    producer = make_producer(settings, bootstrap)
    ingestor = Ingestor(consumer, producer, store, settings)
    try:
        joined(consumer)
        seen = 0
        t, cpu = time.perf_counter(), time.process_time()
        while seen < total:
            report = ingestor.poll_once()
            if report.invalid:
                raise RuntimeError(f"unexpected invalid messages: {report.dlq_reasons[:3]}")
            seen += report.messages
            if time.perf_counter() - t > DEADLINE_SECONDS:
                raise TimeoutError(f"ingest processed {seen} of {total} messages")
        return time.perf_counter() - t, time.process_time() - cpu
    finally:
        ingestor.close()
        producer.close()
        store.close()


def drain_daemon(settings: Settings, bootstrap: str, total: int) -> tuple[int, float, float]:
    """(messages timed, seconds, CPU seconds) from the first non-empty poll to the last message."""
    metrics = CollectorRegistry()
    daemon = Daemon(settings, bootstrap_servers=bootstrap, metrics_registry=metrics).start()

    def count() -> int:
        return int(metrics.get_sample_value("ctd_ingest_messages_total") or 0)

    try:
        wait_until(lambda: count() > 0)
        n0, t0, cpu = count(), time.perf_counter(), time.process_time()
        wait_until(lambda: count() >= total)
        return total - n0, time.perf_counter() - t0, time.process_time() - cpu
    finally:
        daemon.stop(10)


def wait_until(cond: Callable[[], bool]) -> None:
    deadline = time.perf_counter() + DEADLINE_SECONDS
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError("daemon did not ingest every message in time")
        time.sleep(0.002)


def run_form(
    form: str, args: argparse.Namespace, broker: LocalBroker, tmp: Path
) -> dict[str, Rate]:
    settings = own_settings(
        broker.bootstrap_servers,
        tmp / f"daemon-{form}",
        "bench-",
        min_bars=10 * args.bars,  # no training: this measures ingest only
        log_level="WARNING",
    )
    bootstrap = broker.bootstrap_servers
    ensure_topics(settings, bootstrap)
    messages = messages_for(form, args.symbols, args.bars, args.batch)
    total, bars = len(messages), args.symbols * args.bars
    size = sum(len(v) for _, v in messages)
    produce_s = produce(bootstrap, settings.topic_bars, messages)
    print(
        f"[{form}] {total:,} messages ({size / 1e6:.1f} MB, {bars:,} bars) produced in "
        f"{produce_s:.1f} s ({total / produce_s:,.0f} msg/s)",
        flush=True,
    )
    out = {"raw": Rate(total, bars, *drain_raw(settings, bootstrap, total))}
    store_dir = tmp / f"ingest-{form}"
    store_dir.mkdir()
    out["ingest"] = Rate(total, bars, *drain_ingest(settings, bootstrap, total, store_dir))
    stored = sum(BarStore(store_dir / "bars.sqlite", read_only=True).counts().values())
    if stored != bars:
        raise RuntimeError(f"store holds {stored} bars, expected {bars}")
    if args.daemon:
        timed, seconds, cpu = drain_daemon(settings, bootstrap, total)
        if timed:  # else the first poll took everything: too small a run to time
            out["daemon"] = Rate(timed, round(timed * bars / total), seconds, cpu)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--bars", type=int, default=4000, help="bars per symbol")
    parser.add_argument("--batch", type=int, default=100, help="bars per batch-form message")
    parser.add_argument("--forms", default="batch,single")
    parser.add_argument("--no-daemon", dest="daemon", action="store_false")
    parser.add_argument(
        "--crc", choices=("c", "python"), default="c", help="kafka-python's CRC-32C check"
    )
    args = parser.parse_args()
    if args.bars % args.batch:
        parser.error("--bars must be a multiple of --batch")
    if args.crc == "python":
        # calc_crc32c binds its implementation as a default argument at import.
        kafka.record.util.calc_crc32c.__defaults__ = (crc32c_py,)

    results: dict[str, dict[str, Rate]] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        for form in args.forms.split(","):
            results[form] = run_form(form, args, broker, Path(tmp))

    crc = kafka.record.util.calc_crc32c.__defaults__[0]
    crc_name = "pure Python" if crc is crc32c_py else f"C ({crc.__module__.split('.')[0]} package)"
    print(
        f"\n{args.symbols} symbols x {args.bars} bars; batch form = {args.batch} bars/message; "
        f"kafka-python CRC: {crc_name}; {os.cpu_count()} CPUs"
    )
    header = (
        f"{'form':<8}{'path':<8}{'seconds':>9}{'msgs/s':>11}{'bars/s':>11}{'vs raw':>8}"
        f"{'CPU s':>8}{'bars/CPU s':>12}{'vs raw':>8}"
    )
    print(header)
    print("-" * len(header))
    for form, rates in results.items():
        raw = rates["raw"]
        for path, r in rates.items():
            per_cpu = r.bars / r.cpu_seconds
            print(
                f"{form:<8}{path:<8}{r.seconds:>9.2f}{r.msgs_per_s:>11,.0f}{r.bars_per_s:>11,.0f}"
                f"{r.msgs_per_s / raw.msgs_per_s:>7.2f}x{r.cpu_seconds:>8.2f}{per_cpu:>12,.0f}"
                f"{per_cpu / (raw.bars / raw.cpu_seconds):>7.2f}x"
            )
    print(
        "target: ingest / raw >= 0.50x (wall rate; the CPU columns are the same ratio in "
        "process CPU time, steadier on a busy machine)"
    )


if __name__ == "__main__":
    main()
