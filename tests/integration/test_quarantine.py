"""One symbol's corrupted registry state quarantines that symbol, never the daemon.

A real daemon on the real broker starts over a registry where one champion's
metadata.json is truncated, one champion's model.onnx is deleted and one
symbol's slots.json is truncated, beside a healthy symbol. It starts, scores the
healthy symbol, serves /metrics (with ``ctd_symbol_quarantined``) and a ready
/readyz naming the three; the broken symbols are neither scored nor trained.
Restoring the metadata file releases that symbol at the next re-check, and its
bars are scored again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from rich.console import Console

from daemon.app import Daemon
from daemon.cli.status import print_status
from daemon.kafka.bars import encode_batch
from daemon.kafka.clients import ensure_topics
from daemon.status import all_status
from deploy.registry import Registry
from tests.support.helpers import own_settings, wait_for
from tests.support.metadata import write_sample_metadata
from trainers.data import bar_records
from trainers.features import FEATURE_SPEC
from trainers.naive import NaiveModel
from trainers.synthetic import MarketGenerator, MarketSpec

pytestmark = [pytest.mark.integration]

GOOD, BAD_META, NO_MODEL, BAD_SLOTS = "GOOD", "BADMETA", "NOMODEL", "BADSLOTS"
BAD_LEDGER, BAD_TRIAL = "BADLEDGER", "BADTRIAL"
SYMBOLS = (GOOD, BAD_META, NO_MODEL, BAD_SLOTS, BAD_LEDGER, BAD_TRIAL)
BROKEN = {
    BAD_META: "metadata",
    NO_MODEL: "model",
    BAD_SLOTS: "slots",
    BAD_LEDGER: "ledger",
    BAD_TRIAL: "trial",
}
HISTORY = 300
AFTER: dict[str, int] = {}  # each symbol's last history bar (ts)


def _champion(registry: Registry, symbol: str, staging: Path, last_ts: int) -> str:
    """A naive champion (a real ONNX file) placed for ``symbol``."""
    staging.mkdir(parents=True)
    NaiveModel(0.55, len(FEATURE_SPEC.names)).export_onnx(staging / "model.onnx")
    write_sample_metadata(staging, symbol=symbol, last_ts=last_ts)
    version = registry.add_version(symbol, staging)
    registry.place(symbol, version)
    return version


def scored(daemon: Daemon, symbol: str) -> int:
    """Champion predictions logged for the symbol's bars after its history."""
    with sqlite3.connect(f"file:{daemon.settings.paths.predictions}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT COUNT(*) FROM predictions WHERE symbol = ? AND slot = 'champion'"
            " AND bar_ts > ?",
            (symbol, AFTER[symbol]),
        ).fetchone()
    return int(row[0])


def runs(daemon: Daemon, symbol: str) -> float:
    return sum(
        daemon.metrics.registry.get_sample_value(
            "ctd_training_runs_total", {"symbol": symbol, "outcome": outcome}
        )
        or 0.0
        for outcome in ("champion", "shadow", "rejected", "failed")
    )


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def corrupted(
    broker: Any, tmp_path: Path
) -> Iterator[tuple[Daemon, KafkaProducer, dict[str, Any]]]:
    settings = own_settings(
        broker.bootstrap_servers,
        tmp_path / "data",
        "q",
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=500,
        min_bars=50,
        retrain_every_bars=50,
        trainers=("xgboost",),
    )
    ensure_topics(settings, broker.bootstrap_servers)
    gens = {s: MarketGenerator(MarketSpec(symbol=s, seed=i)) for i, s in enumerate(SYMBOLS)}
    history = {s: bar_records(s, gens[s].next_bars(HISTORY)) for s in SYMBOLS}
    AFTER.update({s: bars[-1].ts for s, bars in history.items()})
    registry = Registry(settings.paths.registry)
    versions = {
        s: _champion(registry, s, tmp_path / "staging" / s, history[s][-1].ts) for s in SYMBOLS
    }
    meta = settings.paths.registry / BAD_META / versions[BAD_META] / "metadata.json"
    meta.write_bytes(meta.read_bytes()[:200])
    (settings.paths.registry / NO_MODEL / versions[NO_MODEL] / "model.onnx").unlink()
    slots = settings.paths.registry / BAD_SLOTS / "slots.json"
    slots.write_bytes(slots.read_bytes()[:10])
    ledger = settings.paths.registry / BAD_LEDGER / "history.jsonl"
    ledger.write_text(ledger.read_text() + '{"event": "no such kind"}\n')
    trial_slots = settings.paths.registry / BAD_TRIAL / "slots.json"
    doc = json.loads(trial_slots.read_text())
    trial_slots.write_text(json.dumps({**doc, "trial": {"state": "not an object"}}))

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    for s in SYMBOLS:  # the history the champions were trained on, stored before start
        producer.send(settings.topic_bars, key=s.encode(), value=encode_batch(s, history[s]))
    producer.flush()
    daemon = Daemon(settings, bootstrap_servers=broker.bootstrap_servers).start()
    context = {"gens": gens, "versions": versions}
    try:
        yield daemon, producer, context
    finally:
        daemon.stop(10)
        producer.close()


def _doctor(daemon: Daemon, *args: str) -> tuple[int, dict[str, Any]]:
    """``ctd doctor --json ...`` as an operator runs it beside the daemon."""
    env = {**os.environ, "CTD_DATA_DIR": str(daemon.settings.data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "doctor", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def test_a_corrupt_symbol_is_quarantined_the_others_keep_working_and_doctor_repairs_it(
    corrupted: tuple[Daemon, KafkaProducer, dict[str, Any]],
) -> None:
    daemon, producer, ctx = corrupted
    topic = daemon.settings.topic_bars

    def send(n: int) -> None:
        for s in SYMBOLS:
            for record in bar_records(s, ctx["gens"][s].next_bars(n)):
                producer.send(topic, key=s.encode(), value=encode_batch(s, [record]))
        producer.flush()

    assert {e.symbol: e.reason for e in daemon.quarantine.entries()} == BROKEN
    send(20)
    wait_for(lambda: scored(daemon, GOOD) >= 20, 60, message="GOOD scored")
    wait_for(lambda: runs(daemon, GOOD) >= 1, 120, message="GOOD trained (min_bars 50)")
    assert scored(daemon, GOOD) == 20  # every bar, each once
    for s in BROKEN:
        assert scored(daemon, s) == 0 and runs(daemon, s) == 0
    for s in (BAD_META, NO_MODEL):
        root = daemon.settings.paths.registry / s
        assert [p.name for p in root.iterdir() if p.is_dir()] == [ctx["versions"][s]]

    status, body = _get(f"{daemon.http.url}/metrics")
    assert status == 200
    text = body.decode()
    for s, reason in BROKEN.items():
        assert f'ctd_symbol_quarantined{{reason="{reason}",symbol="{s}"}} 1.0' in text
    status, body = _get(f"{daemon.http.url}/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["ready"] is True
    assert {q["symbol"]: q["reason"] for q in ready["quarantined"]} == BROKEN
    rows = {r.symbol: r for r in all_status(None, daemon.registry)}
    assert rows[GOOD].quarantined is None and rows[GOOD].champion == ctx["versions"][GOOD]
    assert (rows[BAD_META].quarantined or "").startswith("metadata: ")
    console = Console(record=True, width=200)
    assert print_status(daemon.settings, None, as_json=False, console=console) == 0
    printed = console.export_text()
    assert f"{BAD_SLOTS} is quarantined: slots: " in printed and "slots.json" in printed
    assert f"{GOOD} is quarantined" not in printed

    code, report = _doctor(daemon)  # diagnosis only: nothing changes
    assert code == 1 and sorted(report["unrepaired"]) == sorted(BROKEN)
    assert {f["symbol"]: f["repair"] for f in report["findings"]} == {
        BAD_META: "clear_champion",
        NO_MODEL: "clear_champion",
        BAD_SLOTS: "rebuild_slots",
        BAD_LEDGER: "clean_ledger",
        BAD_TRIAL: "drop_trial",
    }
    code, report = _doctor(daemon, "--apply")
    assert code == 0 and report["unrepaired"] == [], report
    job = daemon.schedules.job("quarantine")
    assert job is not None
    job.func()  # the scheduled re-check, now rather than within the minute
    assert daemon.quarantine.entries() == []
    send(5)
    for s in (BAD_SLOTS, BAD_LEDGER, BAD_TRIAL):  # their champions serve again
        wait_for(lambda s=s: scored(daemon, s) >= 5, 60, message=f"{s} scored after repair")
    assert daemon.registry.slots(BAD_SLOTS).champion == ctx["versions"][BAD_SLOTS]
    for s in (BAD_META, NO_MODEL):  # no older version: cleared, to be retrained
        # the new bars may already have started a retrain, which writes its own ledger lines
        assert daemon.registry.slots(s).champion != ctx["versions"][s]
        cleared = [e for e in daemon.registry.history(s) if e.actor == "doctor"]
        assert [(e.from_version, e.to_version) for e in cleared] == [(ctx["versions"][s], None)]
    assert scored(daemon, GOOD) == 25
