"""Quarantine: a symbol whose registry state cannot be read is set aside; the others go on.

Corruption no crash can cause (a truncated metadata.json or slots.json, a deleted
model.onnx, a ledger line that does not parse) used to stop start-up or fail every
scrape. Now the first reader that meets it (start-up recovery, live scoring, a
scrape) puts the symbol here: live scoring and training skip it, and the daemon
reports it (``ctd_symbol_quarantined``, the ``symbol_quarantined`` log event,
/readyz's JSON, ``ctd status``). ``ctd doctor`` explains and repairs; the daemon
re-checks quarantined symbols every minute and releases each one that reads whole.

``reason`` is a bounded label (``REASONS``): the file that failed, not its text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from deploy.errors import ArtifactError, RegistryCorrupt, UnknownVersionError
from deploy.handoff import TrialCheckpoint
from deploy.registry import Registry
from deploy.registry.ledger import HISTORY_FILE, SLOTS_FILE
from deploy.registry.registry import METADATA_FILE, MODEL_FILE

STATE_ERRORS: Final = (RegistryCorrupt, UnknownVersionError, ArtifactError)
"""The errors that mean a symbol's stored state is unreadable (not a transient failure)."""

REASONS: Final = ("slots", "trial", "ledger", "metadata", "model", "version")
RECHECK_SECONDS: Final = 60.0
"""How often the daemon re-reads quarantined symbols (a repair takes effect by then)."""

TRIAL_PART: Final = f"{SLOTS_FILE}:trial"
"""Where a bad trial checkpoint is reported: the ``trial`` field of slots.json."""


@dataclass(frozen=True, slots=True)
class Quarantined:
    symbol: str
    reason: str
    detail: str
    since: float  # unix time

    def to_dict(self) -> dict[str, str | float]:
        return {
            "symbol": self.symbol,
            "reason": self.reason,
            "detail": self.detail,
            "since": self.since,
        }


def reason_of(error: BaseException) -> str:
    """The bounded reason label of a state error: which file failed."""
    if isinstance(error, UnknownVersionError):
        return "version"
    where = str(getattr(error, "where", getattr(error, "path", "")))
    for suffix, reason in (
        (SLOTS_FILE, "slots"),
        (TRIAL_PART, "trial"),
        (HISTORY_FILE, "ledger"),
        (METADATA_FILE, "metadata"),
        (MODEL_FILE, "model"),
    ):
        if where.endswith(suffix):
            return reason
    return "version"


def check_symbol(registry: Registry, symbol: str) -> None:
    """Read everything live scoring and training will read of ``symbol``; raise the first
    state error (slots, trial checkpoint, ledger, then each slotted version's files, metadata
    and model hash)."""
    state = registry.state(symbol)
    slots = state.slots
    if state.trial is not None:
        try:
            TrialCheckpoint.from_dict(state.trial)
        except (ValueError, KeyError, TypeError) as exc:
            where = f"{registry.url.rstrip('/')}/{symbol}/{TRIAL_PART}"
            raise RegistryCorrupt(where, f"bad trial checkpoint: {exc}") from exc
    registry.history(symbol)
    for version in (slots.champion, slots.shadow):
        if version is None:
            continue
        names = registry.storage.children(f"{symbol}/{version}")
        for name in (METADATA_FILE, MODEL_FILE):
            if name not in names:
                raise RegistryCorrupt(
                    f"{registry.url.rstrip('/')}/{symbol}/{version}/{name}",
                    "missing (a slot names this version)",
                )
        registry.model_path(symbol, version)  # parses metadata.json, checks the model's hash


class Quarantine:
    """The quarantined symbols of this process. Thread-safe.

    ``on_enter(entry)`` is called once per quarantine (outside the lock), for the log.
    """

    def __init__(self, on_enter: Callable[[Quarantined], None] | None = None) -> None:
        self._entries: dict[str, Quarantined] = {}
        self._lock = threading.Lock()
        self._on_enter = on_enter

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._entries

    def add(self, symbol: str, error: BaseException) -> bool:
        """Quarantine ``symbol`` because of ``error``; False if it already was."""
        entry = Quarantined(symbol, reason_of(error), str(error), time.time())
        with self._lock:
            if symbol in self._entries:
                return False
            self._entries[symbol] = entry
        if self._on_enter is not None:
            self._on_enter(entry)
        return True

    def release(self, symbol: str) -> bool:
        with self._lock:
            return self._entries.pop(symbol, None) is not None

    def entries(self) -> list[Quarantined]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.symbol)

    def check(self, registry: Registry, symbols: Iterable[str]) -> None:
        """Quarantine each of ``symbols`` whose state does not read whole (start-up)."""
        for symbol in symbols:
            try:
                check_symbol(registry, symbol)
            except STATE_ERRORS as exc:
                self.add(symbol, exc)

    def recheck(self, registry: Registry) -> list[str]:
        """Release every quarantined symbol that now reads whole; returns them."""
        released = []
        for entry in self.entries():
            try:
                check_symbol(registry, entry.symbol)
            except STATE_ERRORS:
                continue
            if self.release(entry.symbol):
                released.append(entry.symbol)
        return released
