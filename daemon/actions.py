"""Operator actions: one typed record and one executor for the CLI, the commands topic and
the daemon.

Every action that changes a slot goes through the registry (lock-serialised, so
the daemon and a CLI operator never tear each other's writes) and lands in the
ledger with who and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from deploy.events import RegistryEvent
from deploy.registry import Registry

Action = Literal["retrain", "promote", "reject", "rollback"]

Retrain = Callable[[str, str], bool]
"""``retrain(symbol, reason)`` queues a retrain; False when coalesced or refused."""


@dataclass(frozen=True, slots=True)
class Command:
    action: Action
    symbol: str
    reason: str = ""
    actor: str = "operator"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "action": self.action,
                "symbol": self.symbol,
                "reason": self.reason,
                "actor": self.actor,
            }
        ).encode()


def execute(
    registry: Registry, command: Command, *, evidence: Mapping[str, object], retrain: Retrain
) -> RegistryEvent | None:
    """Carry out ``command``; registry errors (no shadow, nothing to roll back) propagate.

    ``evidence`` is the current trial's partial evidence, recorded with an
    operator promote or reject. Returns the ledger event (None for retrain).
    """
    why = command.reason or f"{command.action} by {command.actor}"
    if command.action == "retrain":
        retrain(command.symbol, why)
        return None
    if command.action == "promote":
        return registry.promote(command.symbol, evidence=evidence, actor=command.actor, reason=why)
    if command.action == "reject":
        return registry.reject(command.symbol, evidence=evidence, actor=command.actor, reason=why)
    return registry.rollback(command.symbol, actor=command.actor, reason=why)
