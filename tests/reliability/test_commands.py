"""kill -9 between a rollback command's ledger line and its offset commit: the command comes
back after the restart and is recognised by its id, so it is applied once (C -> B, not on
to A), and announced once."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from daemon.actions import Command
from daemon.kafka.clients import ensure_topics
from daemon.kafka.commands_secret import commands_key
from daemon.kafka.signing import sign_command
from deploy.registry import Registry, Slots
from tests.support import reliability as rel
from tests.support.helpers import ledger, own_settings, read_topic, wait_for
from tests.support.metadata import write_sample_metadata
from trainers.features import FEATURE_SPEC
from trainers.naive import NaiveModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOL = "ALPHA"
CRASH_POINT = "history.jsonl:replaced"  # the ledger line is durable; nothing after it ran


def _version(reg: Registry, base: Path, name: str) -> str:
    staging = base / f"staging-{name}"
    write_sample_metadata(staging, symbol=SYMBOL)
    NaiveModel(0.6, len(FEATURE_SPEC.names)).export_onnx(staging / "model.onnx")
    return reg.add_version(SYMBOL, staging)


def test_a_rollback_redelivered_after_kill_9_is_applied_once(broker: Any, tmp_path: Path) -> None:
    """Champion C (B, A retired). The daemon dies right after the rollback's ledger line, its
    offset uncommitted; the restarted daemon gets the command again, finds its id in the
    ledger (outcome duplicate) and commits: champion B, one rolled_back line, one
    announcement."""
    settings = own_settings(
        broker.bootstrap_servers,
        tmp_path / "data",
        "cmd",
        kafka_session_timeout_ms=2000,  # the killed member leaves the group sooner
        kafka_heartbeat_interval_ms=500,
        http_port=rel.free_port(),
        min_bars=100_000,  # no training: the only registry writer is the command
        log_format="json",
    )
    ensure_topics(settings, broker.bootstrap_servers)
    reg = Registry(settings.paths.registry)
    a, b, c = (_version(reg, tmp_path, n) for n in "abc")
    reg.place(SYMBOL, a)
    for shadow in (b, c):
        reg.place(SYMBOL, shadow)
        reg.promote(SYMBOL, evidence={})
    log = tmp_path / "daemon.log"
    crashing = rel.DaemonProcess(settings, log, runner_args=["--crash-in-rollback-at", CRASH_POINT])
    clean = rel.DaemonProcess(settings, log, runner_args=[])
    group = f"{settings.kafka_group_id}.commands"
    command = Command("rollback", SYMBOL, "live PnL collapsed", "operator:ann")
    try:
        crashing.start()
        producer = rel.make_producer(broker.bootstrap_servers)
        sent = producer.send(
            settings.topic_commands,
            key=SYMBOL.encode(),
            value=sign_command(command, commands_key(settings, create=False)),
        ).get(timeout=10)
        producer.close(timeout=5)
        assert crashing.proc is not None
        code = crashing.proc.wait(timeout=60)
        assert code == -signal.SIGKILL, (
            f"daemon did not die at {CRASH_POINT}: {crashing.log_tail()}"
        )
        wait_for(lambda: crashing.group_members() == [], timeout=15, message="workers gone")

        # The crash point: applied and in the ledger, the offset not committed.
        after = Slots(b, None, (a,))
        assert Registry(settings.paths.registry).slots(SYMBOL) == after
        committed = rel.committed_offsets(broker.bootstrap_servers, group, settings.topic_commands)
        assert (committed[sent.partition] or 0) <= sent.offset

        clean.start()
        wait_for(
            lambda: clean.sample("ctd_commands_total", action="rollback", outcome="duplicate"),
            timeout=60,
            message="the re-delivered rollback was recognised",
        )
        assert clean.sample("ctd_commands_total", action="rollback", outcome="done") == 0
        assert clean.sample("ctd_commands_rejected_total", reason="replayed") == 0
        wait_for(
            lambda: (
                rel.committed_offsets(broker.bootstrap_servers, group, settings.topic_commands)[
                    sent.partition
                ]
                == sent.offset + 1
            ),
            timeout=30,
            message="the re-delivered command's offset committed",
        )
        assert clean.terminate() == 0, clean.log_tail()
    finally:
        crashing.reap_group()
        clean.reap_group()

    reg = rel.assert_registry_consistent(settings.paths.registry)
    assert reg.slots(SYMBOL) == Slots(b, None, (a,))
    rolled = [e for e in ledger(reg, SYMBOL) if e["event"] == "rolled_back"]
    assert [(e["from_version"], e["to_version"], e["command_id"]) for e in rolled] == [
        (c, b, command.id)
    ]
    topic = [
        json.loads(r.value)
        for r in read_topic(broker.bootstrap_servers, settings.topic_promotions, 1, timeout=15)
    ]
    announced = [e for e in topic if e["event"] == "rolled_back"]
    assert [e["command_id"] for e in announced] == [command.id]
