"""Operator commands: the ``ctd.commands`` topic and the CLI share one decoder and one executor.

Command event: ``{"action": "retrain" | "promote" | "reject" | "rollback",
"symbol": ..., "reason": ..., "actor": ...}``. Every action that changes a slot
goes through the registry (flock-serialised, so the daemon and a CLI operator
never tear each other's writes) and lands in the ledger with who and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deploy.events import RegistryEvent
from deploy.registry import Registry
from trainers.data import validate_symbol

Action = Literal["retrain", "promote", "reject", "rollback"]


class InvalidCommand(ValueError):
    """A command message that cannot be executed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _CommandModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    action: Action
    symbol: str
    reason: str = Field("", max_length=1000)
    actor: str = Field("operator", min_length=1, max_length=200)

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        return validate_symbol(value)


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


def decode_command(value: bytes | None) -> Command:
    """Bytes from the commands topic -> Command, or InvalidCommand naming the problem."""
    if not value:
        raise InvalidCommand("empty command message")
    try:
        model = _CommandModel.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise InvalidCommand(f"{where}: {first['msg']}") from None
    return Command(model.action, model.symbol, model.reason, model.actor)


def execute(
    registry: Registry,
    command: Command,
    *,
    evidence: Mapping[str, Any],
    retrain: Callable[[str, str], bool],
) -> RegistryEvent | None:
    """Carry out ``command``; registry errors (no shadow, nothing to roll back) propagate.

    ``evidence`` is the current trial's partial evidence, recorded with an
    operator promote or reject. ``retrain(symbol, reason)`` queues a retrain.
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
