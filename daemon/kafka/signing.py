"""The commands topic's wire format: every operator command signed, dated and unique.

One JSON object per message (UTF-8; the key is the symbol)::

    {"v": 1, "id": "9f1c0e...", "ts": "2026-12-07T10:15:00.123456Z",
     "action": "rollback", "symbol": "BTCUSDT", "reason": "bad fills",
     "actor": "operator:ann", "force": false, "sig": "5d0e..."}

- ``v``: the format version, 1.
- ``id``: 128 random bits as 32 lowercase hex digits; the nonce, and the command's id in
  the ledger (``deploy.events.RegistryEvent.command_id``).
- ``ts``: when it was signed, ISO 8601 UTC ending in ``Z``.
- ``action``: retrain | promote | reject | rollback; ``symbol``: a valid symbol;
  ``reason``: at most 1,000 characters; ``actor``: 1 to 200 characters.
- ``force``: a promote goes ahead on a trial shorter than ``promotion_min_samples``.
- ``sig``: lowercase hex HMAC-SHA256, keyed with the shared secret's UTF-8 bytes, of the
  canonical JSON of every other field: ``json.dumps(fields, sort_keys=True,
  separators=(",", ":"), ensure_ascii=True)`` as ASCII bytes (keys sorted, no whitespace,
  non-ASCII characters as ``\\uXXXX``).

Every field is required. A receiver checks in this order and refuses at the first failure:
a JSON object (else invalid); a ``sig`` (else unsigned); the signature matches (else
bad_signature); the fields form a command (else invalid); ``ts`` within the maximum skew
of its clock, either way (else expired). An ``id`` carried by another record is a replay
(``daemon.kafka.replay``); a re-delivery of a slot change finds its ``id`` in the ledger
and changes nothing (``deploy.registry``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daemon.actions import Action, Command
from daemon.errors import InvalidCommand, UnverifiedCommand
from deploy.events import COMMAND_ID_PATTERN
from trainers.data import validate_symbol

FORMAT_VERSION: Final = 1
SIGNATURE_FIELD: Final = "sig"
_TS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_TS_PATTERN: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


def canonical(fields: Mapping[str, object]) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, ASCII only."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signature(key: bytes, fields: Mapping[str, object]) -> str:
    """HMAC-SHA256 of ``canonical(fields)`` as lowercase hex."""
    return hmac.new(key, canonical(fields), hashlib.sha256).hexdigest()


def sign_command(command: Command, key: bytes, *, now: float | None = None) -> bytes:
    """``command`` as a signed message dated ``now`` (default: the clock)."""
    signed_at = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    fields: dict[str, object] = {
        "v": FORMAT_VERSION,
        "id": command.id,
        "ts": signed_at.strftime(_TS_FORMAT),
        "action": command.action,
        "symbol": command.symbol,
        "reason": command.reason,
        "actor": command.actor,
        "force": command.force,
    }
    fields[SIGNATURE_FIELD] = signature(key, fields)
    return json.dumps(fields, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """A command whose signature and age checked out; ``signed_at`` in unix seconds."""

    command: Command
    signed_at: float


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    v: Literal[1]
    id: str = Field(pattern=f"^{COMMAND_ID_PATTERN.pattern}$")
    ts: datetime
    action: Action
    symbol: str
    reason: str = Field(max_length=1000)
    actor: str = Field(min_length=1, max_length=200)
    force: bool

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, value: object) -> datetime:
        if not isinstance(value, str) or _TS_PATTERN.fullmatch(value) is None:
            raise ValueError("must be an ISO 8601 UTC time ending in 'Z'")
        return datetime.fromisoformat(value)  # 'Z': aware, in UTC

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        return validate_symbol(value)


def decode_command(
    value: bytes | None, key: bytes, *, now: float, max_skew: float
) -> SignedCommand:
    """A message from the commands topic -> SignedCommand. UnverifiedCommand (unsigned,
    bad_signature, expired) or InvalidCommand naming the problem; see the module docstring."""
    if not value:
        raise InvalidCommand("empty command message")
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise InvalidCommand(f"message: Invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidCommand("message: not a JSON object")
    sig = doc.pop(SIGNATURE_FIELD, None)
    if sig is None:
        raise UnverifiedCommand("unsigned", "the message has no 'sig' field")
    if not isinstance(sig, str) or not hmac.compare_digest(
        signature(key, doc).encode(), sig.encode(errors="replace")
    ):
        raise UnverifiedCommand("bad_signature", "'sig' does not match the message")
    try:
        fields = _Fields.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise InvalidCommand(f"{where}: {first['msg']}") from None
    signed_at = fields.ts.timestamp()
    if abs(now - signed_at) > max_skew:
        raise UnverifiedCommand(
            "expired",
            f"signed at {doc['ts']}, {now - signed_at:+.0f}s from this daemon's clock "
            f"(commands_max_skew_seconds {max_skew:g})",
        )
    command = Command(
        fields.action, fields.symbol, fields.reason, fields.actor, fields.force, fields.id
    )
    return SignedCommand(command, signed_at)
