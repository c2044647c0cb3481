"""The prediction log: live predictions, their labels and each symbol's trial state, in SQLite.

Implements ``deploy.trial.PredictionLog`` in its own file (``<data_dir>/predictions.sqlite``),
separate from the bar store so that scoring never contends with ingest for one
write lock. ``commit`` writes one ingest batch (every symbol's new predictions, labels of
earlier ones and trial state) in one transaction: after a crash the evidence in
the table and the trials' counts always agree. WAL with ``synchronous=NORMAL``:
a commit survives a process crash (kill -9) and is atomic; a power loss may
drop the newest commits, which the live scorer recomputes from the bar store
(the bars themselves are stored with synchronous=FULL). That halves the
per-batch commit latency on the live path (bench/live.py).

Threads: one connection behind one lock, as in daemon.store.sqlite.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from daemon.errors import PredictionStoreError
from daemon.store.sqlite import SqliteFile, open_sqlite
from deploy.trial import SLOTS, LogWrite, Prediction, Slot, TrialState
from trainers.data import validate_symbol

SCHEMA_VERSION: Final = 2

_COLUMNS: Final = """(
    symbol TEXT NOT NULL,
    bar_ts INTEGER NOT NULL,
    slot TEXT NOT NULL CHECK (slot IN ('champion', 'shadow')),
    version TEXT NOT NULL,
    value REAL NOT NULL,
    outcome REAL,
    resolved_at REAL,
    PRIMARY KEY (symbol, bar_ts, slot)
) WITHOUT ROWID;
"""
"""The predictions table. ``value``: P(up) or a predicted log return; ``outcome``: the label
or the realised log return (``deploy.trial``). Version 1 held P(up) in ``proba`` (checked in
[0, 1]) and a 0/1 ``label``; version 2 holds either target."""

_INDEXES: Final = """
CREATE INDEX IF NOT EXISTS predictions_by_version ON predictions (symbol, version, bar_ts);
CREATE INDEX IF NOT EXISTS predictions_unresolved ON predictions (symbol, bar_ts)
    WHERE outcome IS NULL;
"""

_MIGRATIONS: Final = {
    # Constants only (S608 sees SQL built by concatenation).
    1: "CREATE TABLE predictions_v2 "  # noqa: S608
    + _COLUMNS
    + """
INSERT INTO predictions_v2 SELECT symbol, bar_ts, slot, version, proba, label, resolved_at
    FROM predictions;
DROP TABLE predictions;
ALTER TABLE predictions_v2 RENAME TO predictions;
"""
    + _INDEXES,
}
"""Version -> the script to the next (``daemon.store.sqlite.open_sqlite``)."""

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS predictions "
    + _COLUMNS
    + _INDEXES
    + """
CREATE TABLE IF NOT EXISTS trials (
    symbol TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""
)

_INSERT: Final = """
INSERT INTO predictions (symbol, bar_ts, slot, version, value) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (symbol, bar_ts, slot) DO NOTHING
"""
_RESOLVE: Final = """
UPDATE predictions SET outcome = ?, resolved_at = ?
WHERE symbol = ? AND bar_ts = ? AND outcome IS NULL
"""
_SAVE_STATE: Final = """
INSERT INTO trials (symbol, state, updated_at) VALUES (?, ?, ?)
ON CONFLICT (symbol) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at
"""


class PredictionStore(SqliteFile):
    """``deploy.trial.PredictionLog`` on SQLite (WAL, synchronous=NORMAL).

    Every method raises PredictionStoreError (a daemon.errors.StoreError) for
    SQLite and file-system failures and for a stored trial state that does not
    parse, and trainers.data.InvalidSymbolError for a bad symbol.
    """

    error = PredictionStoreError
    _ping_sql = "SELECT 1 FROM trials LIMIT 1"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = None
        try:
            self._conn = self._open()
        except (sqlite3.Error, OSError) as exc:
            raise PredictionStoreError(self.path, "open", exc) from exc

    def _open(self) -> sqlite3.Connection:
        return open_sqlite(
            self.path,
            schema=_SCHEMA,
            schema_version=SCHEMA_VERSION,
            synchronous="NORMAL",
            migrations=_MIGRATIONS,
        )

    def load_state(self, symbol: str) -> TrialState | None:
        validate_symbol(symbol)
        with self._connection("load_state") as conn:
            row = conn.execute("SELECT state FROM trials WHERE symbol = ?", (symbol,)).fetchone()
        if row is None:
            return None
        try:
            doc = json.loads(row[0])
            if not isinstance(doc, dict):
                raise ValueError(f"not a JSON object: {row[0][:200]!r}")
            return TrialState.from_dict(doc)
        except ValueError as exc:
            raise PredictionStoreError(self.path, f"load_state({symbol})", exc) from exc

    def unresolved(self, symbol: str, before_ts: int | None = None) -> list[Prediction]:
        validate_symbol(symbol)
        sql = (
            "SELECT bar_ts, slot, version, value FROM predictions"
            " WHERE symbol = ? AND outcome IS NULL"
        )
        args: tuple[object, ...] = (symbol,)
        if before_ts is not None:
            sql += " AND bar_ts < ?"
            args += (before_ts,)
        with self._connection("unresolved") as conn:
            rows = conn.execute(sql + " ORDER BY bar_ts, slot", args).fetchall()
        return [Prediction(int(ts), _slot(slot), str(v), float(p)) for ts, slot, v, p in rows]

    def recent_outcomes(self, symbol: str, version: str, limit: int) -> list[tuple[float, float]]:
        validate_symbol(symbol)
        with self._connection("recent_outcomes") as conn:
            rows = conn.execute(
                "SELECT value, outcome FROM predictions"
                " WHERE symbol = ? AND version = ? AND outcome IS NOT NULL"
                " ORDER BY bar_ts DESC LIMIT ?",
                (symbol, version, limit),
            ).fetchall()
        return [(float(v), float(outcome)) for v, outcome in reversed(rows)]

    def commit(self, writes: Sequence[LogWrite]) -> None:
        for write in writes:
            validate_symbol(write.symbol)
        now = time.time()
        states = [
            (w.symbol, json.dumps(w.state.to_dict(), separators=(",", ":"), allow_nan=False), now)
            for w in writes
        ]
        with self._connection("commit") as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for w in writes:
                    # Inserts first: a batch resolves predictions it made itself on earlier bars.
                    conn.executemany(
                        _INSERT,
                        [(w.symbol, p.bar_ts, p.slot, p.version, p.value) for p in w.predictions],
                    )
                    conn.executemany(
                        _RESOLVE, [(r.outcome, now, w.symbol, r.bar_ts) for r in w.resolutions]
                    )
                conn.executemany(_SAVE_STATE, states)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise


def _slot(value: object) -> Slot:
    for slot in SLOTS:
        if value == slot:
            return slot
    raise ValueError(f"unknown slot {value!r} in the predictions table")
