# Over 400 lines: the one daemon-in-a-child-process harness every reliability test shares.
"""Shared machinery of the reliability tests (tests/reliability/); no tests here.

The fault tests run the daemon as a real child process (so that ``kill -9``
kills a daemon, not the test) and judge it from the outside only: the SQLite
store, the registry files, the Kafka topics and committed offsets, /metrics,
/readyz and /proc. The process is either the real entry point
(``python -m daemon.cli run``) or this module run as a script, which does the
same with test seams the CLI does not have::

    python -m tests.support.reliability [--job-target NAME] [--crash-in-...-at POINT]

``--job-target`` picks a worker function of tests/support/reliability_targets.py
(``slow``: sleeps before the real job; ``journal``: records start and end of
every run to a file);
``--crash-in-promote-at`` / ``--crash-in-rollback-at`` / ``--crash-in-register-at``
SIGKILL the daemon when the registry reaches that crash point
(``deploy.durable.crash_point``) inside the first ``promote`` / ``rollback`` command / the
registration of the first passing run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from pydantic import SecretStr

from daemon.kafka.bars import encode_batch
from daemon.settings import Settings
from deploy.registry import Registry
from tests.support.helpers import ledger, wait_for
from trainers.data import BarRecord

T0 = 1_735_689_600  # 2025-01-01T00:00:00Z
_REPO_ROOT = Path(__file__).resolve().parents[2]


# -- data ----------------------------------------------------------------------------
def bar(symbol: str, i: int) -> BarRecord:
    """The i-th bar of a deterministic, valid series for ``symbol`` (1-minute bars)."""
    base = 100.0 + 10.0 * math.sin(i / 17.0) + 0.01 * i
    close = base + math.cos(i / 5.0)
    high = max(base, close) + 0.5
    low = min(base, close) - 0.5
    return BarRecord(symbol, T0 + 60 * i, base, high, low, close, float(1 + i % 13))


Row = tuple[str, int, float, float, float, float, float]


def row(record: BarRecord) -> Row:
    return tuple(record)  # a BarRecord is a store row in column order


def stored_rows(store_path: Path) -> list[Row]:
    """Every row of the bars table, read over a separate read-only connection."""
    with contextlib.closing(sqlite3.connect(f"{store_path.as_uri()}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout = 10000")
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT symbol, ts, open, high, low, close, volume FROM bars ORDER BY symbol, ts"
            )
        ]


def stored_count(store_path: Path) -> int:
    if not store_path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"{store_path.as_uri()}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout = 10000")
        try:
            return int(conn.execute("SELECT count(*) FROM bars").fetchone()[0])
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def counter_table(store_path: Path) -> dict[str, int]:
    """The store's per-symbol counters (symbol_counts), which must agree with the rows."""
    with contextlib.closing(sqlite3.connect(f"{store_path.as_uri()}?mode=ro", uri=True)) as conn:
        return dict(conn.execute("SELECT symbol, n FROM symbol_counts WHERE n > 0"))


def count_by_symbol(rows: Iterable[Row]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r[0]] = out.get(r[0], 0) + 1
    return out


def assert_stored_exactly(store_path: Path, bars: Iterable[BarRecord]) -> list[Row]:
    """The store holds exactly ``bars``, each once with its exact values, and its per-symbol
    counters agree with the rows. Returns the rows."""
    rows = stored_rows(store_path)
    expected = sorted({row(b) for b in bars})
    assert rows == expected, f"{len(rows)} rows stored, {len(expected)} expected"
    assert counter_table(store_path) == count_by_symbol(rows)
    return rows


def make_producer(bootstrap: str, **config: Any) -> KafkaProducer:
    """A plain test producer (bytes in, acks=all, not idempotent: see NOTES.md)."""
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        **config,
    )


def send_batches(bootstrap: str, topic: str, recs: Sequence[BarRecord], batch: int = 250) -> None:
    """Produce ``recs`` (one symbol) as batch messages keyed by the symbol; wait for acks."""
    producer = make_producer(bootstrap)
    try:
        futures = [
            producer.send(
                topic,
                key=recs[0].symbol.encode(),
                value=encode_batch(recs[0].symbol, recs[i : i + batch]),
            )
            for i in range(0, len(recs), batch)
        ]
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close(timeout=5)


def assert_registry_consistent(root: Path) -> Registry:
    """recover() succeeds; every slot names a complete version; nothing is torn or left over."""
    reg = Registry(root)
    reg.recover()
    for symbol in reg.symbols():
        symdir = root / symbol
        doc = (
            json.loads((symdir / "slots.json").read_text())
            if (symdir / "slots.json").exists()
            else {"champion": None, "shadow": None, "retired": [], "seq": 0}
        )
        held = [doc["champion"], doc["shadow"], *doc.get("retired", [])]
        for version in filter(None, held):
            meta = json.loads((symdir / version / "metadata.json").read_text())
            assert meta["version"] == version, (symbol, version)
            assert (symdir / version / "model.onnx").stat().st_size > 0, (symbol, version)
        residue = [p.name for p in symdir.iterdir() if p.name.startswith((".staging-", ".slots"))]
        assert residue == [], (symbol, residue)
        history = ledger(reg, symbol)
        assert [h["seq"] for h in history] == list(range(1, len(history) + 1)), symbol
        if history and "seq" in doc:
            assert doc["seq"] <= history[-1]["seq"], symbol
    return reg


def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int | None]:
    """The group's committed offset per partition, read without joining the group."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    try:
        partitions = wait_for(lambda: consumer.partitions_for_topic(topic), 10.0)
        return {
            p: consumer.committed(TopicPartition(topic, p), timeout_ms=10_000)
            for p in sorted(partitions)
        }
    finally:
        consumer.close(autocommit=False)


# -- the daemon as a child process ------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as CTD_* environment variables (on top of this process's non-CTD env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"CTD_{name.upper()}"] = text
    return env


class DaemonProcess:
    """One daemon child process in its own session (so teardown can reap its whole group)."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        cwd: Path | None = None,
        runner_args: Sequence[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """``runner_args=None`` runs ``python -m daemon.cli run``; a list runs this module's
        runner with those arguments."""
        self.settings = settings
        self.url = f"http://{settings.http_host}:{settings.http_port}"
        self.log_path = log_path
        self._cwd = cwd or _REPO_ROOT
        if runner_args is None:
            self._argv = [sys.executable, "-m", "daemon.cli", "run"]
        else:
            self._argv = [sys.executable, "-m", "tests.support.reliability", *runner_args]
        self._env = {**settings_env(settings), **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_timeout: float = 60.0) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._argv,
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(ready_timeout)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"daemon exited early:\n{self.log_tail()}")
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout, interval=0.1, message="daemon /readyz == 200")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """(HTTP status, body) of GET ``path``; (0, error) when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def sample(self, name: str, **labels: str) -> float | None:
        status, text = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}: {text[:200]}"
        return metric_sample(text, name, **labels)

    def kill(self) -> None:
        """SIGKILL the daemon process only (not its workers): what ``kill -9 <pid>`` does."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def reap_group(self) -> None:
        """Teardown: SIGKILL whatever is left of this child's process group."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def group_members(self) -> list[int]:
        """Live processes (not zombies) in this child's process group: daemon, forkserver,
        workers."""
        assert self.proc is not None
        return [pid for pid, pgid, state in _processes() if pgid == self.proc.pid and state != "Z"]

    def status_kib(self, field: str) -> int:
        """A ``/proc/<pid>/status`` memory field in KiB, e.g. VmRSS or VmHWM (peak RSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _processes() -> Iterator[tuple[int, int, str]]:
    """(pid, process group, state) of every process, from /proc/<pid>/stat."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        yield int(entry.name), int(fields[2]), fields[0]


def metric_sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format; None when absent."""
    want = {k: str(v) for k, v in labels.items()}
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        got = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
        if {k: v.strip('"') for k, v in got.items()} == want:
            return float(value)
    return None


# -- journal of the journal_job worker target ---------------------------------------------
def read_journal(path: Path) -> dict[str, list[tuple[float, float | None]]]:
    """symbol -> [(start, end or None)] per run, from a ``journal_job`` file."""
    runs: dict[tuple[str, str], dict[str, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            key = (entry.pop("symbol"), entry.pop("run_id"))
            runs.setdefault(key, {}).update(entry)
    out: dict[str, list[tuple[float, float | None]]] = {}
    for (symbol, _run), times in runs.items():
        out.setdefault(symbol, []).append((times["start"], times.get("end")))
    return {s: sorted(v, key=lambda t: t[0]) for s, v in out.items()}


# -- the runner -------------------------------------------------------------------------
def _arm(point: str) -> None:
    """From now on, SIGKILL this process when a durable write reaches ``point``."""
    from deploy import durable

    def crash(name: str) -> None:
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    durable.crash_point = crash


def _crash_in_command(action: str, point: str) -> None:
    """SIGKILL this process at the durable-write ``point`` of the first ``action`` command
    (armed when the command is handled: the slots writes of start-up, such as the claim
    of a takeover, pass)."""
    from daemon.app import Daemon

    handle = Daemon.handle_command

    def armed(self: Daemon, command: Any) -> Any:
        if command.action == action:
            _arm(point)
        return handle(self, command)

    Daemon.handle_command = armed  # type: ignore[method-assign]


def _crash_in_register(point: str) -> None:
    """SIGKILL this process at the durable-write ``point`` of the first passing run's
    registration: add_version (model.onnx, then metadata.json), then the slot decision
    (slots.json, history.jsonl)."""
    from daemon.training.outcomes import RunRecorder

    register = RunRecorder._register

    def armed(self: RunRecorder, outcome: Any, meta: Any) -> Any:
        _arm(point)
        return register(self, outcome, meta)

    RunRecorder._register = armed  # type: ignore[method-assign]


def _slow_store_writes(seconds: float) -> None:
    """Hold every bar-store write transaction open ``seconds`` longer (on the ingest writer
    thread, before its inserts): a kill then finds a write in flight most of the time."""
    from daemon.store.bars import BarStore

    insert = BarStore._insert_new

    def slow(self: BarStore, conn: Any, by_symbol: Any) -> Any:
        time.sleep(seconds)
        return insert(self, conn, by_symbol)

    BarStore._insert_new = slow  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    """``ctd run`` (daemon/cli.py) with the test seams; settings come from CTD_* as usual."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--job-target", choices=["run_job", "slow", "journal"], default="run_job")
    parser.add_argument("--crash-in-promote-at", default=None)
    parser.add_argument("--crash-in-rollback-at", default=None)
    parser.add_argument("--crash-in-register-at", default=None)
    parser.add_argument("--store-write-delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    from daemon.logs import configure_logging
    from daemon.settings import load_settings

    settings = load_settings()
    # Before importing daemon.app: its module-level loggers bind the configuration at import.
    configure_logging(settings.log_level, "json")
    from daemon.app import Daemon
    from tests.support.reliability_targets import JOB_TARGETS

    if args.crash_in_promote_at:
        _crash_in_command("promote", args.crash_in_promote_at)
    if args.crash_in_rollback_at:
        _crash_in_command("rollback", args.crash_in_rollback_at)
    if args.crash_in_register_at:
        _crash_in_register(args.crash_in_register_at)
    if args.store_write_delay:
        _slow_store_writes(args.store_write_delay)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    assert settings.kafka_bootstrap_servers is not None
    daemon = Daemon(
        settings,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        job_target=JOB_TARGETS[args.job_target],
    ).start()
    try:
        # In slices: a signal delivered to another thread runs its handler only when the
        # main thread executes bytecode again, which an untimed wait never does.
        while not stop.wait(0.2):
            pass
    finally:
        daemon.stop(settings.shutdown_grace_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
