# Over 400 lines: one child-process harness and the four shutdown paths it judges.
"""Graceful lifecycle of `ctd run`: readiness while starting and draining, SIGTERM / SIGINT
during training, offsets, store and registry after exit, and workers that never outlive it.

The daemon runs as a real child process (``python -m daemon.cli run``) against the
session broker; it is judged from outside only: exit code and time, /readyz, the
group's committed offsets, the SQLite store and the registry files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from daemon.kafka.broker import LocalBroker
from daemon.settings import load_settings
from daemon.store.bars import BarStore
from deploy.registry import Registry
from tests.conftest import TEST_HEARTBEAT_INTERVAL_MS, TEST_SESSION_TIMEOUT_MS
from tests.support.helpers import wait_for
from trainers.data import BarRecord
from trainers.synthetic import MarketSpec, generate_bars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
GRACE = 3.0
EXIT_MARGIN = 4.0
"""Closing consumers, producer, HTTP server and store after the grace period."""
SLOW_LSTM = {"lstm": {"preset": "deep", "epochs": 400, "patience": 400}}
"""Trains for far longer than any grace period here: still running when the signal comes."""
SHORT_LSTM = {"lstm": {"preset": "tiny", "epochs": 30, "patience": 30}}
"""~6 s of training whose model passes every gate on the GOOD series (seed 0, with signal)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _records(symbol: str, n: int, *, seed: int = 0, signal_strength: float = 0.0) -> list[Any]:
    bars = generate_bars(MarketSpec(symbol=symbol, seed=seed, signal_strength=signal_strength), n)
    return [
        BarRecord(symbol, int(t), float(o), float(h), float(lo), float(c), float(v))
        for t, o, h, lo, c, v in zip(
            bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume, strict=True
        )
    ]


@dataclass
class CtdRun:
    """A `ctd run` child process with its own topics, group, data dir and HTTP port."""

    bootstrap: str
    tmp: Path
    extra_env: dict[str, str]
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[str] | None = None
    produced: dict[str, list[Any]] = field(default_factory=dict)
    end_offsets: dict[int, int] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return f"lc{self.tag}.bars"

    @property
    def group(self) -> str:
        return f"lc{self.tag}"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def log_path(self) -> Path:
        return self.tmp / "ctd.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CtdRun:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTD_")}
        defaults = {
            "CTD_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CTD_KAFKA_GROUP_ID": self.group,
            "CTD_KAFKA_SESSION_TIMEOUT_MS": str(TEST_SESSION_TIMEOUT_MS),
            "CTD_KAFKA_HEARTBEAT_INTERVAL_MS": str(TEST_HEARTBEAT_INTERVAL_MS),
            "CTD_TOPIC_BARS": self.topic,
            "CTD_TOPIC_DLQ": f"lc{self.tag}.dlq",
            "CTD_TOPIC_COMMANDS": f"lc{self.tag}.commands",
            "CTD_TOPIC_PROMOTIONS": f"lc{self.tag}.promotions",
            "CTD_DATA_DIR": str(self.data_dir),
            "CTD_HTTP_PORT": str(self.port),
            "CTD_SHUTDOWN_GRACE_SECONDS": str(GRACE),
            "CTD_LOG_FORMAT": "json",
            "CTD_WALK_FORWARD_FOLDS": "0",
            "CTD_RETRAIN_EVERY_BARS": "1000000",
        }
        env.update(defaults | self.extra_env)
        self._log = self.log_path.open("w")
        # Own session: a Ctrl-C can be sent to the daemon's whole process group, as a terminal does.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        return self

    def produce(self, records: dict[str, list[Any]], batch: int = 100) -> None:
        """Send the bars in batch messages; end offsets come from the broker's acks."""
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False
        )
        futures = []
        for symbol, recs in records.items():
            self.produced.setdefault(symbol, []).extend(recs)
            for i in range(0, len(recs), batch):
                value = encode_batch(symbol, recs[i : i + batch])
                futures.append(producer.send(self.topic, key=symbol.encode(), value=value))
        producer.flush(timeout=30)
        for future in futures:
            meta = future.get(timeout=30)
            self.end_offsets[meta.partition] = max(
                self.end_offsets.get(meta.partition, 0), meta.offset + 1
            )
        producer.close(timeout=5)

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def readyz(self) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, f"ctd run exited early:\n{self.log_tail()}"
            return self.readyz() == 200

        wait_for(ready, timeout, interval=0.1, message="/readyz 200")

    def wait_training(self, timeout: float = 60.0) -> None:
        """Until a worker has started training (the gauge counts from launch, which includes
        starting the forkserver)."""
        wait_for(
            lambda: (
                self.metric("ctd_training_running") == 1.0
                and "training_started" in (e["event"] for e in self.events())
            ),
            timeout,
            interval=0.05,
            message=f"training started\n{self.log_tail()}",
        )

    def wait_ingested(self, timeout: float = 60.0) -> None:
        total = sum(len(range(0, len(r), 100)) for r in self.produced.values())
        wait_for(
            lambda: self.metric("ctd_ingest_messages_total") == float(total),
            timeout,
            interval=0.1,
            message=f"{total} messages ingested",
        )

    def signal_and_watch(
        self, sig: int, *, group: bool = False, repeat_after: float | None = None
    ) -> tuple[float, list[tuple[float, int | None]]]:
        """Send ``sig``; poll /readyz until the process exits.

        Returns the seconds to exit and the (seconds since the signal, /readyz status) seen.
        """
        proc = self.proc
        assert proc is not None

        def send() -> None:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

        sent = time.monotonic()
        send()
        statuses: list[tuple[float, int | None]] = []
        repeat_at = None if repeat_after is None else sent + repeat_after
        while proc.poll() is None:
            now = time.monotonic()
            if now - sent > 60:
                pytest.fail(f"ctd run did not exit 60 s after the signal:\n{self.log_tail()}")
            if repeat_at is not None and now >= repeat_at:
                send()
                repeat_at = None
            statuses.append((now - sent, self.readyz()))
            time.sleep(0.05)
        return time.monotonic() - sent, statuses

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-n:])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None:
            self._log.close()


@pytest.fixture
def ctd(broker: LocalBroker, tmp_path: Path) -> Iterator[Any]:
    runs: list[CtdRun] = []

    def make(**env: str) -> CtdRun:
        run = CtdRun(broker.bootstrap_servers, tmp_path / f"run{len(runs)}", env)
        run.tmp.mkdir()
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def assert_drained_unready(statuses: list[tuple[float, int | None]]) -> None:
    """/readyz turned 503 within a second of the signal and never answered 200 again."""
    codes = [code for _, code in statuses]
    assert 503 in codes, statuses
    first = codes.index(503)
    assert statuses[first][0] < 1.0 and 200 not in codes[first:], statuses


def assert_offsets_committed(run: CtdRun) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=run.bootstrap, group_id=run.group, enable_auto_commit=False
    )
    try:
        committed = {p: consumer.committed(TopicPartition(run.topic, p)) for p in run.end_offsets}
    finally:
        consumer.close()
    assert committed == run.end_offsets


def assert_store_exact(run: CtdRun) -> None:
    store = BarStore(run.data_dir / "bars.sqlite", read_only=True)
    try:
        assert store.counts() == {s: len(r) for s, r in run.produced.items()}
        for symbol, records in run.produced.items():
            stored = Counter(int(t) for t in store.load(symbol).ts)
            assert stored == Counter(r.ts for r in records), symbol
    finally:
        store.close()


def assert_registry_consistent(data_dir: Path) -> list[str]:
    """Nothing half-written; returns the symbols' complete versions."""
    root = data_dir / "registry"
    assert not list(root.rglob(".staging-*")), "unfinished version copy left behind"
    assert not list(root.rglob(".slots.json.*.tmp")), "unfinished slots write left behind"
    assert Registry(root).recover() == []
    registry = Registry(root)
    versions = []
    for symbol in registry.symbols():
        known = registry.versions(symbol)
        for v in known:
            vdir = root / symbol / v
            assert (vdir / "model.onnx").stat().st_size > 0
            assert json.loads((vdir / "metadata.json").read_text())["version"] == v
        slots = registry.slots(symbol)
        assert {slots.champion, slots.shadow} - {None} <= set(known)
        versions += [f"{symbol}/{v}" for v in known]
    staging = data_dir / "staging"
    assert not staging.exists() or not list(staging.iterdir()), "job staging left behind"
    return versions


def test_sigterm_during_training_cancels_it_at_the_deadline_and_exits_clean(ctd) -> None:
    """SIGTERM while a long job trains: /readyz 503 while draining, exit 0 within the grace
    period, every produced bar stored once with its offset committed, no half-written model."""
    run = ctd(
        CTD_TRAINERS="lstm",
        CTD_TRAINER_PARAMS=json.dumps(SLOW_LSTM),
        CTD_MIN_BARS="800",
    ).start()
    run.wait_ready()
    run.produce(
        {"SLOW": _records("SLOW", 800), **{f"Q{i}": _records(f"Q{i}", 120) for i in range(4)}}
    )
    run.wait_training()
    run.wait_ingested()
    assert run.readyz() == 200

    seconds, statuses = run.signal_and_watch(signal.SIGTERM)

    assert run.proc is not None and run.proc.returncode == 0, run.log_tail()
    assert GRACE - 0.5 <= seconds <= GRACE + EXIT_MARGIN, run.log_tail()
    assert_drained_unready(statuses)
    kinds = [e["event"] for e in run.events()]
    assert "training_cancelled" in kinds and "training_failed" not in kinds
    assert kinds[-1] == "daemon_stopped"
    assert_offsets_committed(run)
    assert_store_exact(run)
    assert assert_registry_consistent(run.data_dir) == []


def test_ctrl_c_to_the_process_group_lets_training_finish_within_grace(ctd) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C) does not kill the worker: the
    job finishes during the drain, its model is registered completely, and ctd exits 0."""
    run = ctd(
        CTD_TRAINERS="lstm",
        CTD_TRAINER_PARAMS=json.dumps(SHORT_LSTM),
        CTD_MIN_BARS="2500",
        CTD_SHUTDOWN_GRACE_SECONDS="60",
    ).start()
    run.wait_ready()
    run.produce({"GOOD": _records("GOOD", 2500, signal_strength=1.0)})
    run.wait_training()
    run.wait_ingested()

    _, statuses = run.signal_and_watch(signal.SIGINT, group=True)

    assert run.proc is not None and run.proc.returncode == 0, run.log_tail()
    assert_drained_unready(statuses)
    kinds = [e["event"] for e in run.events()]
    assert "model_registered" in kinds, run.log_tail()
    assert kinds.index("daemon_draining") < kinds.index("model_registered")
    assert "training_cancelled" not in kinds and "training_failed" not in kinds
    assert_offsets_committed(run)
    assert_store_exact(run)
    assert len(assert_registry_consistent(run.data_dir)) == 1


def test_second_signal_cancels_training_at_once(ctd) -> None:
    """A second SIGTERM while draining cancels the training without waiting out a long grace
    period; the job counts as cancelled, not failed, and ctd still exits 0."""
    run = ctd(
        CTD_TRAINERS="lstm",
        CTD_TRAINER_PARAMS=json.dumps(SLOW_LSTM),
        CTD_MIN_BARS="800",
        CTD_SHUTDOWN_GRACE_SECONDS="120",
    ).start()
    run.wait_ready()
    run.produce({"SLOW": _records("SLOW", 800)})
    run.wait_training()

    seconds, _ = run.signal_and_watch(signal.SIGTERM, repeat_after=0.5)

    assert run.proc is not None and run.proc.returncode == 0, run.log_tail()
    assert seconds < 0.5 + EXIT_MARGIN, run.log_tail()
    kinds = [e["event"] for e in run.events()]
    assert "training_cancelled" in kinds and "training_failed" not in kinds
    assert_registry_consistent(run.data_dir)


def test_readyz_is_503_while_start_is_blocked_and_a_failed_start_releases_its_port(
    tmp_path: Path,
) -> None:
    """While start() waits on a broker that never answers /readyz says 503 (not started); the
    failed start then stops what it started, so the HTTP port is free again."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections (kernel backlog) and never answers
    port = _free_port()
    settings = load_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{silent.getsockname()[1]}",
        kafka_request_timeout_ms=2000,
        data_dir=tmp_path / "data",
        http_port=port,
    )
    daemon = Daemon(settings, bootstrap_servers=settings.kafka_bootstrap_servers or "")
    errors: list[BaseException] = []

    def start() -> None:
        try:
            daemon.start()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    try:
        answer = wait_for(lambda: _get_json(f"http://127.0.0.1:{port}/readyz"), 10, 0.02)
        checks = {
            "started": False,
            "not_draining": True,
            "store": True,
            "store_writable": True,
            "broker": False,
            "group": False,
        }
        assert answer == (503, {"ready": False, "checks": checks, "quarantined": []})
    finally:
        thread.join(30)
        silent.close()
    assert errors, "start() against a silent broker must fail"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener not
        s.bind(("127.0.0.1", port))
        s.listen()


def _get_json(url: str) -> tuple[int, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None
