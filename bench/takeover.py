"""A peer's death to all its symbols served again with full history, beside raw consume.

    python -m bench.takeover [--symbols 100] [--bars 5000] [--batch 100]

Two daemon processes (``tests.support.fleet.Fleet``: separate data directories,
one consumer group on the bundled broker's 6-partition bars topic, one registry
on moto's S3 server over HTTP) ingest --symbols x --bars bars in --batch-bar
messages; no training (min_bars above the bar count), so the run times the
handover itself; every symbol has a champion (one xgboost model, placed for
each symbol before the bars flow), so the new owner claims real registry
entries and scores the next bar with it. Then daemon 0 is killed with SIGKILL, and one more bar per
symbol it served is produced at once. The takeover is done when daemon 1's
store holds every bar of every one of those symbols, the new bar included (its
partitions were rebuilt from Kafka, the symbols claimed in the registry, the
partitions resumed). That time includes the group noticing the death (the
session timeout, 3 s here).

Raw: a group-less kafka-python consumer (the daemon's client settings) reads
the same partitions from the beginning to their end, values untouched, in the
same run, after the takeover. The rebuild rate is daemon 1's own
``ctd_rebuild_bars_total`` over ``ctd_rebuild_duration_seconds``.
"""

from __future__ import annotations

# ruff: noqa: E402
from daemon.logs import configure_logging

configure_logging("WARNING", "console")

import argparse
import os
import sqlite3
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import client_config
from tests.support import reliability as rel
from tests.support.fleet import Fleet, wait_all
from tests.support.reliability import metric_sample
from tests.support.s3 import MotoS3Server
from trainers.data import Bars
from trainers.pipeline import train_symbol

TIMEOUT_SECONDS = 300.0


def counts(path: Path) -> dict[str, int]:
    """Bars per symbol in one daemon's store (a read-only connection)."""
    if not path.exists():
        return {}
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout = 10000")
        try:
            rows = conn.execute("SELECT symbol, COUNT(*) FROM bars GROUP BY symbol").fetchall()
        except sqlite3.OperationalError:
            return {}
    return dict(rows)


def partitions_of(path: Path, symbols: set[str]) -> set[int]:
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT symbol, partition FROM symbol_partitions").fetchall()
    return {p for s, p in rows if s in symbols}


def raw_consume(fleet: Fleet, partitions: set[int], messages: int) -> float:
    """Seconds to read ``messages`` messages of ``partitions`` from the beginning (their
    whole content: tansu's ListOffsets cannot be trusted for the end)."""
    settings = fleet.settings[1]
    consumer = KafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=5000,
        **client_config(settings, fleet.bootstrap),
    )
    try:
        tps = [TopicPartition(settings.topic_bars, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen = 0
        started = time.perf_counter()
        while seen < messages:
            for msgs in consumer.poll(timeout_ms=500).values():
                seen += len(msgs)
            if time.perf_counter() - started > TIMEOUT_SECONDS:
                raise TimeoutError(f"raw consume saw {seen} of {messages} messages")
        return time.perf_counter() - started
    finally:
        consumer.close(autocommit=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    symbols = [f"T{i:03d}" for i in range(args.symbols)]
    tmp = Path(tempfile.mkdtemp(prefix="ctd-bench-takeover-"))
    s3 = MotoS3Server().start()
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": s3.endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=bucket)
    try:
        with LocalBroker() as broker:
            fleet = Fleet(
                broker.bootstrap_servers,
                bucket,
                tmp,
                n=2,
                symbols=symbols,
                min_bars=10 * args.bars,
                retrain_every_bars=10 * args.bars,
            ).start()
            try:
                run(fleet, args.bars, args.batch)
            finally:
                fleet.close()
    finally:
        s3.stop()


def place_champions(fleet: Fleet, bars: int, tmp: Path) -> None:
    """One xgboost model trained on the first symbol's bars, placed as every symbol's
    champion, so a takeover claims real registry entries and reads their metadata."""
    first = fleet.symbols[0]
    records = [rel.bar(first, i) for i in range(bars)]
    settings = fleet.settings[0]
    result = train_symbol(
        first, Bars.from_rows([r[1:] for r in records]), settings.train_config, tmp / "staging"
    )
    if not result.passed:
        raise RuntimeError(f"the champion did not pass its gates: {result.reason}")

    def place(symbol: str) -> None:
        events = fleet.registry.place(symbol, fleet.registry.add_version(symbol, tmp / "staging"))
        # As if the daemon that placed it had announced it: nothing for a new owner to replay.
        fleet.registry.mark_announced(symbol, max(e.seq or 0 for e in events))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(place, fleet.symbols))


def run(fleet: Fleet, bars: int, batch: int) -> None:
    started = time.monotonic()
    place_champions(fleet, bars, fleet.tmp)
    print(f"champions placed in {time.monotonic() - started:.1f} s")
    fleet.produce(bars, batch=batch)
    paths = [s.paths.bars for s in fleet.settings]

    def stored_once(symbol: str) -> bool:
        return sum(c.get(symbol, 0) for c in map(counts, paths)) == bars

    wait_all(stored_once, fleet.symbols, TIMEOUT_SECONDS, "initial ingest")
    victims = sorted(s for s, n in counts(paths[0]).items() if n == bars)
    moved = partitions_of(paths[0], set(victims))
    print(
        f"{len(fleet.symbols)} symbols x {bars} bars in {batch}-bar messages; daemon 0 served "
        f"{len(victims)} symbols on partitions {sorted(moved)} ({len(victims) * bars} bars)"
    )
    fleet.daemons[0].kill()
    killed = time.monotonic()
    fleet.produce(1, batch=1, symbols=victims)
    while True:
        held = counts(paths[1])
        if all(held.get(s, 0) == bars + 1 for s in victims):
            break
        if time.monotonic() - killed > TIMEOUT_SECONDS:
            raise TimeoutError(f"takeover not done within {TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.05)
    served = time.monotonic() - killed
    status, text = fleet.daemons[1].get("/metrics", timeout=30)
    if status != 200:
        raise RuntimeError(f"daemon 1's /metrics answered {status}: {text[:200]}")
    rebuilt = metric_sample(text, "ctd_rebuild_bars_total") or 0.0
    rebuild_s = metric_sample(text, "ctd_rebuild_duration_seconds_sum") or float("nan")
    taken = metric_sample(text, "ctd_symbol_takeovers_total") or 0.0
    owners = {s: fleet.owner(s) for s in victims}
    claimed = sum(o == fleet.member(1) for o in owners.values())
    messages = len(victims) * (-(-bars // batch) + 1)
    raw_s = raw_consume(fleet, moved, messages)
    raw_bars = len(victims) * (bars + 1)
    print(f"takeover: {served:.2f} s from SIGKILL to every symbol served with full history")
    print(f"  {int(taken)} symbols taken over, {claimed} claimed by daemon 1 in the registry")
    if claimed < len(victims):
        print(f"  owners: {owners}, daemon 1 is {fleet.member(1)}")
    print(f"rebuild: {int(rebuilt)} bars in {rebuild_s:.2f} s = {rebuilt / rebuild_s:,.0f} bars/s")
    print(
        f"raw consume of the same partitions: {messages} messages, {raw_bars} bars in "
        f"{raw_s:.2f} s = {raw_bars / raw_s:,.0f} bars/s"
    )
    print(f"ratio rebuild/raw: {(rebuilt / rebuild_s) / (raw_bars / raw_s):.2f}x")


if __name__ == "__main__":
    main()
