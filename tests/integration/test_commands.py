"""Operator commands through the real broker into a running daemon: only signed, fresh,
first-seen commands for known symbols are executed; everything else changes nothing and is
counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from daemon.actions import Command
from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from daemon.kafka.commands_secret import commands_key
from daemon.kafka.signing import sign_command
from daemon.settings import Settings
from deploy.registry import Registry, Slots
from tests.support import reliability as rel
from tests.support.helpers import ledger, wait_for
from tests.support.metadata import write_sample_metadata
from trainers.features import FEATURE_SPEC
from trainers.naive import NaiveModel

pytestmark = pytest.mark.integration

SYMBOL = "BTCUSDT"
UNKNOWN = 500


def _version(reg: Registry, base: Path, name: str) -> str:
    staging = base / f"staging-{name}"
    write_sample_metadata(staging, symbol=SYMBOL)
    NaiveModel(0.6, len(FEATURE_SPEC.names)).export_onnx(staging / "model.onnx")
    return reg.add_version(SYMBOL, staging)


class Rig:
    """A daemon whose registry holds champion C (B and A retired, oldest first) and shadow D
    with no trial evidence; nothing trains (min_bars is out of reach)."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        reg = Registry(settings.paths.registry)
        self.a, self.b, self.c, self.d = (_version(reg, tmp, n) for n in "abcd")
        reg.place(SYMBOL, self.a)
        for shadow in (self.b, self.c):
            reg.place(SYMBOL, shadow)
            reg.promote(SYMBOL, evidence={})
        reg.place(SYMBOL, self.d)
        assert settings.kafka_bootstrap_servers is not None
        self.daemon = Daemon(settings, bootstrap_servers=settings.kafka_bootstrap_servers).start()
        wait_for(lambda: self.daemon.readiness()["group"], 60, message="the daemon joined")
        self.key = commands_key(settings, create=False)  # the file the daemon generated
        self.producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)

    @property
    def registry(self) -> Registry:
        return self.daemon.registry

    def send(self, value: bytes, key: bytes = SYMBOL.encode()) -> None:
        self.producer.send(self.settings.topic_commands, key=key, value=value).get(timeout=10)

    def signed(self, command: Command, now: float | None = None) -> bytes:
        message = sign_command(command, self.key, now=now)
        self.send(message, command.symbol.encode())
        return message

    def sample(self, name: str, **labels: str) -> float:
        value = self.daemon.metrics.registry.get_sample_value(name, labels)
        assert value is not None, (name, labels)
        return value

    def commands(self, action: str, outcome: str) -> float:
        return self.sample("ctd_commands_total", action=action, outcome=outcome)

    def rejected(self, reason: str) -> float:
        return self.sample("ctd_commands_rejected_total", reason=reason)

    def close(self) -> None:
        self.producer.close(timeout=5)
        self.daemon.stop(10)


@pytest.fixture
def rig(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[Rig]:
    settings = settings_factory(http_port=0, min_bars=100_000, trainers=("naive",))
    r = Rig(settings, tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_forged_expired_and_replayed_commands_change_nothing_and_are_counted(rig: Rig) -> None:
    """An unsigned, a badly signed and an expired rollback are each refused and counted by
    reason; a signed one rolls C back to B; the same message sent again is a replay, refused
    before it could roll B back to A."""
    before, lines = rig.registry.slots(SYMBOL), ledger(rig.registry, SYMBOL)
    fields = {"action": "rollback", "symbol": SYMBOL, "reason": "forged", "actor": "mallory"}
    rig.send(json.dumps(fields).encode())
    wrong_key = b"not-the-daemon-secret-0123456789"
    rig.send(sign_command(Command("rollback", SYMBOL, "forged"), wrong_key))
    skew = rig.settings.commands_max_skew_seconds
    rig.signed(Command("rollback", SYMBOL, "stale"), now=time.time() - skew - 5)
    for reason in ("unsigned", "bad_signature", "expired"):
        wait_for(lambda r=reason: rig.rejected(r) == 1, 30, message=f"{reason} counted")
    assert rig.registry.slots(SYMBOL) == before
    assert ledger(rig.registry, SYMBOL) == lines
    assert rig.commands("rollback", "done") == 0

    command = Command("rollback", SYMBOL, "bad fills", "operator:ann")
    message = rig.signed(command)
    wait_for(lambda: rig.commands("rollback", "done") == 1, 30, message="the rollback ran")
    after = Slots(rig.b, rig.d, (rig.a,))
    assert rig.registry.slots(SYMBOL) == after
    rig.send(message)
    wait_for(lambda: rig.rejected("replayed") == 1, 30, message="the replay counted")
    assert rig.registry.slots(SYMBOL) == after
    rolled = [e for e in ledger(rig.registry, SYMBOL) if e["event"] == "rolled_back"]
    assert [(e["to_version"], e["command_id"]) for e in rolled] == [(rig.b, command.id)]
    assert rig.commands("rollback", "done") == 1
    assert rig.commands("rollback", "duplicate") == 0
    assert rig.rejected("unsigned") == rig.rejected("bad_signature") == rig.rejected("expired") == 1


def test_a_promote_on_a_short_trial_is_refused_unless_forced_and_the_cli_signs(
    rig: Rig,
) -> None:
    """Through the daemon, a promote of a shadow without trial evidence is refused; `ctd
    promote --force` (signed by the CLI with the secret the daemon generated) promotes it,
    and its ledger line records force and the command id the CLI printed."""
    lines = ledger(rig.registry, SYMBOL)
    rig.signed(Command("promote", SYMBOL, "too early"))
    wait_for(lambda: rig.commands("promote", "refused") == 1, 30, message="promote refused")
    assert rig.registry.slots(SYMBOL).champion == rig.c
    assert ledger(rig.registry, SYMBOL) == lines

    env = {k: v for k, v in os.environ.items() if not k.startswith("CTD_")}
    s = rig.settings
    env |= {
        "CTD_DATA_DIR": str(s.data_dir),
        "CTD_KAFKA_BOOTSTRAP_SERVERS": str(s.kafka_bootstrap_servers),
        "CTD_TOPIC_COMMANDS": s.topic_commands,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "promote", SYMBOL, "--force", "--actor", "ann"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert (line["event"], line["to_version"], line["forced"]) == ("promoted", rig.d, True)
    assert rig.registry.slots(SYMBOL).champion == rig.d
    assert ledger(rig.registry, SYMBOL)[-1]["command_id"] == line["command_id"]
    assert rig.commands("promote", "done") == 1
    assert rig.rejected("bad_signature") == 0


def test_commands_for_symbols_never_stored_create_nothing(rig: Rig) -> None:
    """500 signed retrains of symbols the daemon never stored a bar for are refused: no
    registry directory, no metric series, no job; a retrain of a stored symbol runs."""
    unknown = [f"UNK{i:03d}" for i in range(UNKNOWN)]
    for symbol in unknown:
        rig.producer.send(
            rig.settings.topic_commands,
            key=symbol.encode(),
            value=sign_command(Command("retrain", symbol), rig.key),
        )
    rig.producer.flush(timeout=30)
    wait_for(
        lambda: rig.commands("retrain", "refused") == UNKNOWN, 60, message="500 retrains refused"
    )
    assert rig.registry.symbols() == [SYMBOL]
    assert sorted(p.name for p in rig.settings.paths.registry.iterdir()) == [SYMBOL]
    labels = {
        value
        for family in rig.daemon.metrics.registry.collect()
        for sample in family.samples
        for value in sample.labels.values()
    }
    assert not {s for s in unknown if s in labels}
    assert rig.daemon.scheduler.pending == rig.daemon.scheduler.running == 0
    assert rig.commands("retrain", "done") == 0

    known = "KNOWN"
    bars = [rel.bar(known, i) for i in range(60)]
    rig.producer.send(rig.settings.topic_bars, key=known.encode(), value=encode_batch(known, bars))
    rig.producer.flush(timeout=10)
    wait_for(lambda: rig.daemon.store.count(known) == 60, 30, message="bars stored")
    rig.signed(Command("retrain", known))
    wait_for(lambda: rig.commands("retrain", "done") == 1, 30, message="the retrain queued")
