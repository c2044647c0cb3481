"""Operator actions: one typed record and one executor for the CLI, the commands topic and
the daemon.

Every action that changes a slot goes through the registry (lock-serialised, so
the daemon and a CLI operator never tear each other's writes) and lands in the
ledger with who, why and the command's id, so that a command delivered twice is
applied once. How a command travels on the commands topic (signed) is
``daemon.kafka.signing``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from daemon.errors import UnforcedPromotion
from deploy.errors import NoShadowError
from deploy.events import RegistryEvent
from deploy.registry import Registry

Action = Literal["retrain", "promote", "reject", "rollback"]

Retrain = Callable[[str, str], bool]
"""``retrain(symbol, reason)`` queues a retrain; False when coalesced or refused."""


def new_command_id() -> str:
    """128 random bits as 32 lowercase hex digits (``deploy.events.COMMAND_ID_PATTERN``)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Command:
    """One operator action. ``force``: promote even on a trial shorter than the minimum.
    ``id``: unique per command (recorded in the ledger); a copy of a command keeps it."""

    action: Action
    symbol: str
    reason: str = ""
    actor: str = "operator"
    force: bool = False
    id: str = field(default_factory=new_command_id)


@dataclass(frozen=True, slots=True)
class TrialSoFar:
    """The running trial as a promote or reject sees it: its partial evidence (recorded
    with the decision) and its paired bars (a promote needs ``min_samples`` or ``force``)."""

    evidence: Mapping[str, object]
    samples: int
    min_samples: int


def execute(
    registry: Registry, command: Command, *, trial: TrialSoFar, retrain: Retrain
) -> RegistryEvent | None:
    """Carry out ``command``; returns the ledger event (None for retrain).

    Raises UnforcedPromotion for a promote on fewer than ``trial.min_samples`` bars without
    ``force``; registry errors (no shadow, nothing to roll back, DuplicateCommandError for a
    command the ledger already has) propagate.
    """
    why = command.reason or f"{command.action} by {command.actor}"
    if command.action == "retrain":
        retrain(command.symbol, why)
        return None
    symbol, actor, command_id = command.symbol, command.actor, command.id
    if command.action == "promote":
        if trial.samples < trial.min_samples and not command.force:
            if registry.slots(symbol).shadow is None:  # the plainer reason, when it holds
                raise NoShadowError(symbol, "promote")
            raise UnforcedPromotion(symbol, trial.samples, trial.min_samples)
        return registry.promote(
            symbol,
            evidence=trial.evidence,
            actor=actor,
            reason=why,
            command_id=command_id,
            forced=command.force,
        )
    if command.action == "reject":
        return registry.reject(
            symbol, evidence=trial.evidence, actor=actor, reason=why, command_id=command_id
        )
    return registry.rollback(symbol, actor=actor, reason=why, command_id=command_id)
