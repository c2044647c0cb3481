"""A fleet for tests: daemons in one consumer group on a 6-partition topic, one S3 registry.

Each daemon is a real child process (``tests.support.reliability.DaemonProcess``) with its
own data directory; the registry is ``s3://<bucket>/registry`` on the in-process moto
server (``tests.support.s3``). The fleet is judged from outside: the registry objects, each
daemon's SQLite files (read-only connections), /metrics.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from daemon.kafka.bars import encode_batch
from daemon.kafka.clients import ensure_topics
from deploy.registry import Registry
from deploy.registry.s3 import S3Storage
from tests.support import reliability as rel
from tests.support.helpers import own_settings
from trainers.data import BarRecord

SYMBOLS = tuple(f"F{i:02d}" for i in range(12))


class Fleet:
    """``n`` daemons sharing a group, topics and a registry; bars produced and remembered."""

    def __init__(
        self,
        bootstrap: str,
        bucket: str,
        tmp: Path,
        n: int = 3,
        symbols: Sequence[str] = SYMBOLS,
        **overrides: Any,
    ) -> None:
        self.tmp, self.bootstrap, self.symbols = tmp, bootstrap, tuple(symbols)
        values: dict[str, Any] = {
            "registry_url": f"s3://{bucket}/registry",
            "commands_secret": "fleet-test-commands-secret",  # a shared registry needs one
            "kafka_session_timeout_ms": 3000,
            "kafka_heartbeat_interval_ms": 500,
            "topic_partitions": 6,
            "min_bars": 500,
            "retrain_every_bars": 1000,
            "trainers": ("xgboost",),
            "walk_forward_folds": 0,
            # The series is easy; gates are not what this fleet is about.
            "gate_require_beat_baseline": False,
            "gate_max_val_test_diff": 1.0,
            "gate_max_train_val_gap": 1.0,
            "gate_min_test_rows": 30,
            # Trials accumulate evidence and never decide: they must survive a handover.
            "promotion_min_samples": 100_000,
            "promotion_max_samples": 200_000,
            "trial_checkpoint_seconds": 1.0,
            "log_format": "json",
            **overrides,
        }
        base = own_settings(bootstrap, tmp / "d0" / "data", "fleet", **values)
        ensure_topics(base, bootstrap)
        self.settings = [
            base.model_copy(
                update={"data_dir": tmp / f"d{i}" / "data", "http_port": rel.free_port()}
            )
            for i in range(n)
        ]
        self.daemons = [
            rel.DaemonProcess(s, tmp / f"d{i}" / "daemon.log") for i, s in enumerate(self.settings)
        ]
        for s in self.settings:
            s.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(S3Storage(base.registry_url or "", tmp / "cache"))
        self.produced: dict[str, list[BarRecord]] = {s: [] for s in self.symbols}
        self._lock = threading.Lock()

    # -- processes -------------------------------------------------------------------------
    def start(self) -> Fleet:
        for d in self.daemons:
            d.start(ready_timeout=90)
        return self

    def close(self) -> None:
        for d in self.daemons:
            d.reap_group()

    def member(self, i: int) -> str:
        return (self.settings[i].data_dir / "member").read_text().strip()

    def index_of(self, member: str) -> int | None:
        for i in range(len(self.daemons)):
            with contextlib.suppress(FileNotFoundError):
                if self.member(i) == member:
                    return i
        return None

    # -- bars ------------------------------------------------------------------------------
    def produce(
        self,
        per_symbol: int,
        *,
        batch: int = 250,
        producer: Any = None,
        symbols: Sequence[str] | None = None,
    ) -> None:
        """The next ``per_symbol`` bars of every symbol (or of ``symbols``), in batch messages;
        waits for acks."""
        own = producer is None
        producer = rel.make_producer(self.bootstrap) if own else producer
        try:
            futures = []
            for symbol in self.symbols if symbols is None else symbols:
                start = len(self.produced[symbol])
                bars = [rel.bar(symbol, start + j) for j in range(per_symbol)]
                for k in range(0, len(bars), batch):
                    chunk = bars[k : k + batch]
                    value = encode_batch(symbol, chunk)
                    futures.append(producer.send(self._topic, key=symbol.encode(), value=value))
                self.produced[symbol].extend(bars)
            for f in futures:
                f.get(timeout=30)
        finally:
            if own:
                producer.close(timeout=5)

    @contextlib.contextmanager
    def live_feed(self, bars_per_second: float) -> Iterator[None]:
        """Produce one bar per symbol every 1/``bars_per_second`` s while the block runs."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            producer = rel.make_producer(self.bootstrap)
            try:
                while not stop.wait(1.0 / bars_per_second):
                    self.produce(1, batch=1, producer=producer)
            except BaseException as exc:  # surfaced when the block ends
                errors.append(exc)
            finally:
                producer.close(timeout=5)

        thread = threading.Thread(target=run, name="fleet-feed", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)
        assert not errors, errors

    @property
    def _topic(self) -> str:
        return self.settings[0].topic_bars

    # -- what each daemon holds ----------------------------------------------------------------
    def stored(self, i: int, symbol: str) -> list[rel.Row]:
        rows = _read(
            self.settings[i].paths.bars,
            "SELECT symbol, ts, open, high, low, close, volume FROM bars WHERE symbol = ?"
            " ORDER BY ts",
            (symbol,),
        )
        return [tuple(r) for r in rows]

    def trial_n(self, i: int, symbol: str) -> int | None:
        """Paired bars of the symbol's trial in daemon i's prediction log."""
        rows = _read(
            self.settings[i].paths.predictions,
            "SELECT state FROM trials WHERE symbol = ?",
            (symbol,),
        )
        if not rows:
            return None
        test = json.loads(rows[0][0]).get("test")
        return None if test is None else int(test["n"])

    def predicted(self, i: int, symbol: str, bar_ts: int) -> bool:
        rows = _read(
            self.settings[i].paths.predictions,
            "SELECT 1 FROM predictions WHERE symbol = ? AND bar_ts = ? AND slot = 'champion'",
            (symbol, bar_ts),
        )
        return bool(rows)

    def total(self, i: int, name: str) -> float:
        """The sum of every sample of counter ``name`` (all label sets) on daemon i."""
        status, text = self.daemons[i].get("/metrics")
        assert status == 200, text[:200]
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith((f"{name} ", f"{name}{{"))
        )

    def owner(self, symbol: str) -> str | None:
        claim = self.registry.state(symbol).owner
        return None if claim is None else claim.owner

    def busiest(self) -> tuple[int, list[str]]:
        """The daemon that owns the most symbols in the registry, and those symbols."""
        owners = {s: self.owner(s) for s in self.symbols}
        members = [self.member(i) for i in range(len(self.daemons))]
        i = max(range(len(members)), key=lambda i: list(owners.values()).count(members[i]))
        return i, sorted(s for s, o in owners.items() if o == members[i])

    def checkpointed_n(self, symbol: str) -> int | None:
        trial = self.registry.state(symbol).trial
        if trial is None or trial["state"].get("test") is None:
            return None
        return int(trial["state"]["test"]["n"])

    def expected_rows(self, symbol: str) -> list[rel.Row]:
        return sorted(rel.row(b) for b in self.produced[symbol])


def _read(path: Path, sql: str, args: Sequence[Any]) -> list[Any]:
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout = 10000")
        try:
            return conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.OperationalError:  # schema not there yet
            return []


def wait_all(predicate_per_symbol: Any, symbols: Sequence[str], timeout: float, what: str) -> float:
    """Wait until the predicate holds for every symbol; return the seconds it took."""
    started = time.monotonic()
    pending = set(symbols)
    deadline = started + timeout
    while pending:
        pending = {s for s in pending if not predicate_per_symbol(s)}
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s for {sorted(pending)}")
        time.sleep(0.2)
    return time.monotonic() - started
