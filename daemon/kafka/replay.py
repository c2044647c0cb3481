"""Replay protection: the ids of the commands accepted lately, each held until it expires.

A command is accepted only while its timestamp is within the maximum skew of the clock
(``daemon.kafka.signing``), so its id needs remembering only until ``signed_at + skew``:
a copy arriving later is refused as expired anyway. That bounds memory by the command
rate; ``capacity`` bounds it outright (when full, the id closest to expiry is forgotten
early: a copy of it would still find its id in the ledger if it changes a slot).

Only verified commands are remembered, so unsigned junk cannot fill the window. Across
a restart the window starts empty; the ledger's command ids cover the slot changes.
"""

from __future__ import annotations

import heapq
from typing import Final

DEFAULT_CAPACITY: Final = 100_000

Position = tuple[int, int]
"""Where a record sits on the commands topic: (partition, offset)."""


class ReplayGuard:
    """Remembers each accepted command id with the record that carried it. Not thread-safe:
    the commands consumer's thread is its only user."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._seen: dict[str, Position] = {}
        self._expiry: list[tuple[float, str]] = []  # a heap of (expires_at, id)

    def __len__(self) -> int:
        return len(self._seen)

    def replayed(
        self, command_id: str, position: Position, *, expires_at: float, now: float
    ) -> bool:
        """True if another record already carried ``command_id`` (a replay). Otherwise it is
        remembered until ``expires_at`` and False is returned. The same record again (Kafka
        re-delivering an uncommitted offset) is not a replay."""
        self._forget(now)
        first = self._seen.get(command_id)
        if first is not None:
            return first != position
        while len(self._seen) >= self._capacity:
            _, oldest = heapq.heappop(self._expiry)
            self._seen.pop(oldest, None)
        self._seen[command_id] = position
        heapq.heappush(self._expiry, (expires_at, command_id))
        return False

    def _forget(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, command_id = heapq.heappop(self._expiry)
            self._seen.pop(command_id, None)
