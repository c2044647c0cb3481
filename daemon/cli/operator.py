"""Operator actions from the command line: through the running daemon, or on the registry.

With a daemon reachable (``CTD_KAFKA_BOOTSTRAP_SERVERS``, or the bundled broker
address the daemon left in ``<data_dir>/daemon.json``) the command goes on the
commands topic, signed with the shared secret (``daemon.kafka.signing``), so the
daemon executes and announces it (metrics, promotions topic, webhook) exactly as
its own decisions. Without one, promote / reject / rollback act on the registry
directly (flock-serialised with any daemon); the daemon picks slot changes up
when it next runs. Either way a promote on a trial shorter than
``promotion_min_samples`` needs ``force``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from daemon.actions import Command, TrialSoFar, execute
from daemon.errors import OperatorError
from daemon.kafka.clients import make_producer
from daemon.kafka.commands_secret import commands_key
from daemon.kafka.probe import broker_reachable
from daemon.kafka.signing import sign_command
from daemon.registry import open_registry
from daemon.settings import Settings
from daemon.store.predictions import PredictionStore
from deploy.events import RegistryEvent
from deploy.registry import Registry
from deploy.trial import saved_trial

ACTION_EVENTS = {"promote": "promoted", "reject": "rejected", "rollback": "rolled_back"}


def daemon_bootstrap(settings: Settings) -> str | None:
    """The broker of a running daemon for this data directory, if any."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    path = settings.paths.runtime
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    servers = info.get("bootstrap_servers")
    return servers if isinstance(servers, str) else None


def run(settings: Settings, command: Command, *, wait_seconds: float = 30.0) -> dict[str, Any]:
    """Carry out ``command``; returns the ledger line it produced (or a note for retrain)."""
    bootstrap = daemon_bootstrap(settings)
    if bootstrap and broker_reachable(bootstrap, timeout=3.0, settings=settings):
        return _via_daemon(settings, bootstrap, command, wait_seconds)
    if command.action == "retrain":
        raise OperatorError("retrain needs a running daemon (none reachable for this data dir)")
    return _direct(settings, command).to_dict()


def _via_daemon(
    settings: Settings, bootstrap: str, command: Command, wait_seconds: float
) -> dict[str, Any]:
    registry = open_registry(settings)
    seen = len(registry.history(command.symbol))
    message = sign_command(command, commands_key(settings, create=False))
    producer = make_producer(settings, bootstrap)
    try:
        key = command.symbol.encode()
        producer.send(settings.topic_commands, key=key, value=message).get(timeout=10)
    finally:
        producer.close(timeout=5)
    if command.action == "retrain":
        return {"sent": settings.topic_commands, "action": "retrain", "symbol": command.symbol}
    wanted = ACTION_EVENTS[command.action]
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        for line in registry.history(command.symbol)[seen:]:
            if line.event == wanted and line.command_id == command.id:
                return line.to_dict()
        time.sleep(0.2)
    raise OperatorError(
        f"sent {command.action} {command.id} to the daemon, but no {wanted!r} line reached "
        f"the ledger of {command.symbol} within {wait_seconds:.0f}s (see the daemon's log: "
        "the action may have been refused, or its signature rejected if this machine's "
        "commands secret is not the daemon's)"
    )


def _direct(settings: Settings, command: Command) -> RegistryEvent:
    registry = open_registry(settings)
    try:
        event = execute(
            registry,
            command,
            trial=_saved_trial(settings, registry, command.symbol),
            retrain=lambda _symbol, _reason: False,
        )
    except Exception as exc:
        raise OperatorError(str(exc)) from exc
    assert event is not None  # only retrain returns None, and it never gets here
    return event


def _saved_trial(settings: Settings, registry: Registry, symbol: str) -> TrialSoFar:
    """The running trial as the prediction log last saved it, if it is this pair's."""
    min_samples = settings.promotion_min_samples
    path = settings.paths.predictions
    if not path.exists():
        return TrialSoFar({}, 0, min_samples)
    log = PredictionStore(path)
    try:
        trial = saved_trial(log, registry, symbol)
    finally:
        log.close()
    if trial is None:
        return TrialSoFar({}, 0, min_samples)
    evidence = {**trial.evidence_dict(), "source": "prediction log"}
    return TrialSoFar(evidence, trial.evidence.n, min_samples)
