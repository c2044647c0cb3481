"""Operator actions from the command line: through the running daemon, or on the registry.

With a daemon reachable (``CTD_KAFKA_BOOTSTRAP_SERVERS``, or the bundled broker
address the daemon left in ``<data_dir>/daemon.json``) the command goes on the
commands topic, so the daemon executes and announces it (metrics, promotions
topic, webhook) exactly as its own decisions. Without one, promote / reject /
rollback act on the registry directly (flock-serialised with any daemon);
the daemon picks slot changes up when it next runs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from daemon.commands import Command, execute
from daemon.kafka import broker_reachable, make_producer
from daemon.predictions import PredictionStore
from daemon.settings import Settings
from deploy.events import RegistryEvent
from deploy.registry import Registry
from deploy.sequential import PairedSequentialTest

ACTION_EVENTS = {"promote": "promoted", "reject": "rejected", "rollback": "rolled_back"}


class OperatorError(RuntimeError):
    """The action could not be carried out; the message says why."""


def daemon_bootstrap(settings: Settings) -> str | None:
    """The broker of a running daemon for this data directory, if any."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    path = settings.data_dir / "daemon.json"
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
    registry = Registry(settings.registry_dir)
    seen = len(registry.history(command.symbol))
    producer = make_producer(settings, bootstrap)
    try:
        producer.send(
            settings.topic_commands, key=command.symbol.encode(), value=command.to_json()
        ).get(timeout=10)
    finally:
        producer.close(timeout=5)
    if command.action == "retrain":
        return {"sent": settings.topic_commands, "action": "retrain", "symbol": command.symbol}
    wanted = ACTION_EVENTS[command.action]
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        for line in registry.history(command.symbol)[seen:]:
            if line.get("event") == wanted and line.get("actor") == command.actor:
                return line
        time.sleep(0.2)
    raise OperatorError(
        f"sent {command.action} to the daemon, but no {wanted!r} line reached the ledger of "
        f"{command.symbol} within {wait_seconds:.0f}s (see the daemon's log: the action may "
        "have been refused)"
    )


def _direct(settings: Settings, command: Command) -> RegistryEvent:
    registry = Registry(settings.registry_dir)
    try:
        event = execute(
            registry,
            command,
            evidence=_trial_evidence(settings, registry, command.symbol),
            retrain=lambda _symbol, _reason: False,
        )
    except Exception as exc:
        raise OperatorError(str(exc)) from exc
    assert event is not None  # only retrain returns None, and it never gets here
    return event


def _trial_evidence(settings: Settings, registry: Registry, symbol: str) -> dict[str, Any]:
    """The running trial's evidence as the prediction log last saved it, if it is this pair's."""
    path = settings.data_dir / "predictions.sqlite"
    if not path.exists():
        return {}
    store = PredictionStore(path)
    try:
        state = store.load_state(symbol)
    finally:
        store.close()
    slots = registry.slots(symbol)
    if state is None or state.test is None or state.shadow_version != slots.shadow:
        return {}
    evidence = PairedSequentialTest.from_dict(state.test).evidence.to_dict()
    return {**evidence, "source": "prediction log", "last_bar_ts": state.last_bar_ts}
