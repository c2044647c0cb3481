"""The fleet's record of its online FDR procedure (``fdr.json`` at the registry root).

e-LOND (``deploy.fdr``) numbers every shadow trial of the fleet with its own
test index and lowers each trial's promote level by how many promotions it has
made so far (its discoveries). Every machine of a fleet shares one registry, so
that state lives there, in one small document::

    {"policy": "e_lond", "horizon": 50, "rho": 0.1, "gamma": "flat_then_log2",
     "next_index": 12, "discoveries": [3, 7], "write": "<random token>"}

Both changes are a compare-and-swap (``RegistryStorage.put_if``), retried on
Conflict, so it works alike on a local directory and on S3:

- ``claim`` hands out ``next_index`` and writes it plus one: of two machines
  claiming at once, one write lands and the other re-reads, so no index is
  handed out twice;
- ``discover`` adds indices to the set: a writer that lost re-reads and adds
  again, so no discovery is lost, and adding one twice is a no-op, so a retry
  never counts one twice.

``write`` is a fresh random token per write: two writes are never the same
bytes, which ``S3Storage.put_if`` relies on to tell its own retried write from
another machine's (without it, two claims of the same index would write equal
documents and both count as landed).

``horizon``, ``rho`` and ``gamma`` (the shape of the sequence, ``deploy.fdr``)
fix the procedure's gamma sequence when the document is created; a reader
configured with another sequence gets ``FdrMismatch`` (mixing two sequences could
spend more than the whole budget). A document without ``gamma`` was written
before the shape was recorded, with the shape of then, ``LEGACY_SHAPE``: it is
refused like any other mismatch, not migrated in place. Deleting (or moving
aside) the document restarts the procedure: the guarantee does not span the
restart.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

from deploy.errors import FdrMismatch, RegistryBusy, RegistryCorrupt
from deploy.registry.storage import Conflict, RegistryStorage

FDR_FILE: Final = "fdr.json"
POLICY: Final = "e_lond"
GAMMA_SHAPE: Final = "flat_then_log2"
"""The gamma sequence's shape this release runs (``deploy.fdr.gamma``): flat over the
horizon, then rho ln(H+1)^2 (1/ln(t)^2 - 1/ln(t+1)^2)."""
LEGACY_SHAPE: Final = "flat_then_t2"
"""The shape of documents without ``gamma``: flat over the horizon, then rho H / (t (t-1))."""
CAS_ATTEMPTS: Final = 50


@dataclass(frozen=True, slots=True)
class FdrRecord:
    """The content of fdr.json: the gamma sequence (horizon, rho, shape), the next index to
    hand out (from 1), and the indices whose trials the procedure promoted (sorted,
    distinct)."""

    horizon: int
    rho: float
    next_index: int = 1
    discoveries: tuple[int, ...] = ()
    shape: str = GAMMA_SHAPE


class FleetFdr:
    """fdr.json of one registry storage, for a procedure with ``horizon``, ``rho`` and
    ``shape``.

    Every method reads the storage afresh; raises OSError for storage failures,
    RegistryCorrupt for a document that does not parse, FdrMismatch for one started
    with another sequence, RegistryBusy when a write keeps losing.
    """

    def __init__(
        self, storage: RegistryStorage, *, horizon: int, rho: float, shape: str = GAMMA_SHAPE
    ) -> None:
        if not (isinstance(horizon, int) and horizon >= 1):
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        if not 0.0 < rho < 1.0:
            raise ValueError(f"rho must be in (0, 1), got {rho!r}")
        if not (isinstance(shape, str) and shape):
            raise ValueError(f"shape must be a non-empty string, got {shape!r}")
        self.storage, self.horizon, self.rho, self.shape = storage, horizon, rho, shape

    @property
    def where(self) -> str:
        return f"{self.storage.url.rstrip('/')}/{FDR_FILE}"

    def read(self) -> FdrRecord:
        """The record as stored now; a fresh one when there is none yet."""
        return self._read()[0]

    def claim(self) -> tuple[int, FdrRecord]:
        """A test index no other caller, on any machine, ever gets; and the record after it."""

        def change(record: FdrRecord) -> FdrRecord:
            return replace(record, next_index=record.next_index + 1)

        after = self._update(change)
        return after.next_index - 1, after

    def discover(self, indices: Iterable[int]) -> FdrRecord:
        """Add the indices of promoted trials (those already there stay counted once)."""
        new = {int(i) for i in indices}
        if any(i < 1 for i in new):
            raise ValueError(f"test indices start at 1, got {sorted(new)}")
        if not new:
            return self.read()

        def change(record: FdrRecord) -> FdrRecord:
            found = tuple(sorted(set(record.discoveries) | new))
            # An index above the counter (only after fdr.json was deleted by hand) moves the
            # counter past it, so it is never handed out again.
            return replace(
                record, discoveries=found, next_index=max(record.next_index, found[-1] + 1)
            )

        return self._update(change)

    # -- internals ---------------------------------------------------------------------------

    def _read(self) -> tuple[FdrRecord, str | None]:
        stored = self.storage.get(FDR_FILE)
        if stored is None:
            return FdrRecord(self.horizon, self.rho, shape=self.shape), None
        try:
            record = _decode(json.loads(stored.data))
        except (TypeError, ValueError) as exc:
            raise RegistryCorrupt(self.where, f"bad fdr document: {exc}") from exc
        for name, recorded, configured in (
            ("horizon", record.horizon, self.horizon),
            ("rho", record.rho, self.rho),
            ("gamma", record.shape, self.shape),
        ):
            if recorded != configured:
                raise FdrMismatch(self.where, name, recorded, configured)
        return record, stored.tag

    def _update(self, change: Callable[[FdrRecord], FdrRecord]) -> FdrRecord:
        for attempt in range(CAS_ATTEMPTS):
            record, tag = self._read()
            after = change(record)
            try:
                self.storage.put_if(FDR_FILE, _encode(after), tag)
            except Conflict:
                time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
                continue
            return after
        raise RegistryBusy(FDR_FILE, CAS_ATTEMPTS)


def _encode(record: FdrRecord) -> bytes:
    doc = {
        "policy": POLICY,
        "horizon": record.horizon,
        "rho": record.rho,
        "gamma": record.shape,
        "next_index": record.next_index,
        "discoveries": list(record.discoveries),
        "write": secrets.token_hex(16),
    }
    return json.dumps(doc, indent=2, allow_nan=False).encode() + b"\n"


def _decode(doc: Any) -> FdrRecord:
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("policy") != POLICY:
        raise ValueError(f"policy must be {POLICY!r}, got {doc.get('policy')!r}")
    horizon, next_index = _count(doc, "horizon"), _count(doc, "next_index")
    rho = doc.get("rho")
    if not isinstance(rho, float) or not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be a number in (0, 1), got {rho!r}")
    shape = doc.get("gamma", LEGACY_SHAPE)  # written before the shape was recorded
    if not isinstance(shape, str) or not shape:
        raise ValueError(f"gamma must be a non-empty string, got {shape!r}")
    found = doc.get("discoveries")
    if not isinstance(found, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 1 <= i < next_index for i in found
    ):
        raise ValueError(
            f"discoveries must be a list of indices in [1, {next_index}), got {found!r}"
        )
    if found != sorted(set(found)):
        raise ValueError(f"discoveries must be sorted and distinct, got {found!r}")
    return FdrRecord(horizon, rho, next_index, tuple(found), shape)


def _count(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    return value
