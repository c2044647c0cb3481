"""Registry decisions as frozen, typed records.

One record type for every line of a symbol's ``history.jsonl``; the four kinds
in ``PROMOTION_TOPIC_KINDS`` are also what the daemon publishes on the
promotions topic (DESIGN.md). ``from_version`` / ``to_version`` by kind:

===========================  =============================  ==========================
kind                         from_version                   to_version
===========================  =============================  ==========================
``champion_bootstrapped``    None                           the first champion
``shadow_placed``            the champion it is scored      the new shadow
                             against (None if none)
``shadow_superseded``        the shadow being replaced      the new shadow
``promoted``                 the old champion               the new champion
``rejected``                 the champion, which stays      the rejected shadow
``rolled_back``              the champion backed out        the restored champion
``training_failed``,         whatever the caller records    (usually the champion / the
``candidate_rejected``                                      candidate, or None)
===========================  =============================  ==========================
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from trainers.data import validate_symbol

EventKind = Literal[
    "promoted",
    "rejected",
    "rolled_back",
    "champion_bootstrapped",
    "shadow_placed",
    "shadow_superseded",
    "training_failed",
    "candidate_rejected",
]
EVENT_KINDS: Final[frozenset[str]] = frozenset(get_args(EventKind))
PROMOTION_TOPIC_KINDS: Final[frozenset[str]] = frozenset(
    {"promoted", "rejected", "rolled_back", "champion_bootstrapped"}
)
"""The kinds the promotions topic carries (DESIGN.md contract)."""
RECORD_ONLY_KINDS: Final[frozenset[str]] = frozenset({"training_failed", "candidate_rejected"})
"""Kinds that change no slot, so they go to the history without a slots.json write."""

_TS_PATTERN: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
COMMAND_ID_PATTERN: Final = re.compile(r"[0-9a-f]{32}")
"""An operator command's id: 128 random bits as lowercase hex (the daemon's commands topic)."""


def utc_now() -> str:
    """Now as ISO 8601 UTC with microseconds and a ``Z`` suffix (the ``ts`` format)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """One registry decision or audit note; validated on construction.

    ``evidence`` must be JSON-serializable without NaN/inf, so a bad value fails
    here rather than when the line is written or published; it is deep-copied into
    a read-only mapping.
    """

    event: EventKind
    symbol: str
    from_version: str | None
    to_version: str | None
    evidence: Mapping[str, Any]
    ts: str
    actor: str = "daemon"
    reason: str = ""
    seq: int | None = None
    """Position in the symbol's ledger, once recorded there (None before)."""
    command_id: str | None = None
    """The id of the operator command that made this decision (None for the daemon's own):
    a command delivered twice finds it here and is not applied again."""
    forced: bool = False
    """An operator promote that overrode the trial's minimum sample count (``--force``)."""

    def __post_init__(self) -> None:
        if self.event not in EVENT_KINDS:
            raise ValueError(
                f"unknown event kind {self.event!r}; valid kinds: {', '.join(sorted(EVENT_KINDS))}"
            )
        validate_symbol(self.symbol)
        if _TS_PATTERN.fullmatch(self.ts) is None:
            raise ValueError(f"event ts {self.ts!r} is not ISO 8601 UTC ending in 'Z'")
        if self.command_id is not None and COMMAND_ID_PATTERN.fullmatch(self.command_id) is None:
            raise ValueError(
                f"command_id {self.command_id!r} must match {COMMAND_ID_PATTERN.pattern}"
            )
        try:
            # A deep copy through JSON: later mutation of the caller's dict cannot reach us.
            evidence = json.loads(json.dumps(dict(self.evidence), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.event} evidence is not plain JSON: {exc}") from exc
        object.__setattr__(self, "evidence", MappingProxyType(evidence))

    def to_dict(self) -> dict[str, Any]:
        """A fresh JSON-ready dict (the promotions-topic fields plus actor, reason and, once
        recorded, the ledger ``seq``; ``command_id`` and ``forced`` only when set)."""
        out = {
            "event": self.event,
            "symbol": self.symbol,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "evidence": json.loads(json.dumps(dict(self.evidence))),
            "ts": self.ts,
            "actor": self.actor,
            "reason": self.reason,
        }
        if self.seq is not None:
            out["seq"] = self.seq
        if self.command_id is not None:
            out["command_id"] = self.command_id
        if self.forced:
            out["forced"] = True
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RegistryEvent:
        """Inverse of ``to_dict``; ValueError names the bad or missing field."""
        try:
            seq = doc.get("seq")
            if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
                raise ValueError(f"seq must be an integer, got {seq!r}")
            for key in ("from_version", "to_version"):
                if doc.get(key) is not None and not isinstance(doc.get(key), str):
                    raise ValueError(f"{key} must be a string or null, got {doc.get(key)!r}")
            evidence = doc.get("evidence") or {}
            if not isinstance(evidence, Mapping):
                raise ValueError(f"evidence must be an object, got {evidence!r}")
            command_id, forced = doc.get("command_id"), doc.get("forced", False)
            if command_id is not None and not isinstance(command_id, str):
                raise ValueError(f"command_id must be a string or null, got {command_id!r}")
            if not isinstance(forced, bool):
                raise ValueError(f"forced must be a boolean, got {forced!r}")
            return cls(
                doc["event"],
                doc["symbol"],
                doc.get("from_version"),
                doc.get("to_version"),
                evidence,
                doc["ts"],
                str(doc.get("actor", "daemon")),
                str(doc.get("reason", "")),
                seq,
                command_id,
                forced,
            )
        except KeyError as exc:
            raise ValueError(f"event has no {exc.args[0]!r} field") from None
        except TypeError as exc:
            raise ValueError(f"malformed event: {exc}") from None

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON of ``to_dict()``, e.g. a Kafka message value."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    @property
    def is_promotion_topic_event(self) -> bool:
        """True for the kinds published on the promotions topic."""
        return self.event in PROMOTION_TOPIC_KINDS
