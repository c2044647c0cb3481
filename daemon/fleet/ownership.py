"""Which partitions this daemon acts for, and the claim its registry writes carry.

The consumer group decides who owns a partition; the registry fences writers
with the claim ``(member, generation)`` of the daemon that owns a symbol's
partition (``deploy.registry.ledger.Claim``). The owned partitions change only
when an assignment completes: during a rebalance a daemon keeps acting on the
claims it had, and a daemon that lost a partition is fenced by the new owner's
newer claim, not by its own bookkeeping.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from deploy.durable import write_atomic
from deploy.errors import FencedError
from deploy.registry import Claim

Partition = tuple[str, int]


class Ownership:
    """Owned partitions with the generation each was assigned in; symbol -> partition from the
    bar store (``symbol_partitions``), refreshed when a symbol is not known yet."""

    def __init__(
        self, member: str, symbol_partitions: Callable[[], Mapping[str, Partition]]
    ) -> None:
        self.member = member
        self._lookup = symbol_partitions
        self._epochs: dict[Partition, int] = {}
        self._partitions: dict[str, Partition] = {}
        self._lock = threading.Lock()

    def assign(self, epochs: Mapping[Partition, int]) -> tuple[set[Partition], set[Partition]]:
        """The new assignment (partition -> generation); returns (gained, lost)."""
        with self._lock:
            before = set(self._epochs)
            self._epochs = dict(epochs)
            return set(epochs) - before, before - set(epochs)

    def partitions(self) -> dict[Partition, int]:
        with self._lock:
            return dict(self._epochs)

    def symbols_of(self, partitions: Iterable[Partition]) -> set[str]:
        """Symbols whose bars come from ``partitions`` (as the bar store knows them)."""
        wanted = set(partitions)
        with self._lock:
            self._partitions = dict(self._lookup())
            return {s for s, p in self._partitions.items() if p in wanted}

    def served(self) -> set[str]:
        """Every symbol of the owned partitions."""
        return self.symbols_of(self.partitions())

    def owns(self, symbol: str) -> bool:
        return self._partition(symbol) in self.partitions()

    def claim(self, symbol: str) -> Claim:
        """The claim for a write about ``symbol``; FencedError if its partition is not ours."""
        partition = self._partition(symbol)
        with self._lock:
            epoch = None if partition is None else self._epochs.get(partition)
        if epoch is None:
            where = "no partition known" if partition is None else f"{partition[0]}:{partition[1]}"
            raise FencedError(symbol, f"{self.member}@-", f"an owner of {where}")
        return Claim(self.member, epoch)

    def _partition(self, symbol: str) -> Partition | None:
        with self._lock:
            known = self._partitions.get(symbol)
        if known is not None:
            return known
        fresh = dict(self._lookup())
        with self._lock:
            self._partitions = fresh
        return fresh.get(symbol)


def member_id(instance_id: str | None, identity_file: Path) -> str:
    """This daemon's name in claims: the static group instance id if set, else a name kept in
    the data directory (so a restarted daemon recognises its own claims)."""
    if instance_id is not None:
        return instance_id
    try:
        kept = identity_file.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        return kept
    name = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    write_atomic(identity_file, name.encode() + b"\n")
    return name
