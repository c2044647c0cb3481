"""The durable bar store: SQLite in WAL mode under CTD_DATA_DIR.

Kafka offsets are committed only after ``upsert`` returns, so every commit is
``synchronous=FULL``: a bar the broker will not re-deliver is on disk. Training
workers open their own ``BarStore(path, read_only=True)``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Final

from daemon.errors import StoreError
from daemon.store.sqlite import SqliteFile, open_sqlite
from trainers.data import BarRecord, Bars, validate_symbol

SCHEMA_VERSION: Final = 1

# CHECKs repeat the event rules so that no code path can store a bar ingest would reject.
# 1e309 is SQLite's spelling of +Inf; NaN binds as NULL and fails NOT NULL.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS bars (
    symbol TEXT NOT NULL,
    ts INTEGER NOT NULL,
    open REAL NOT NULL CHECK (open > 0 AND open < 1e309),
    high REAL NOT NULL CHECK (high < 1e309 AND high >= open AND high >= close),
    low REAL NOT NULL CHECK (low > 0 AND low <= open AND low <= close),
    close REAL NOT NULL CHECK (close > 0 AND close < 1e309),
    volume REAL NOT NULL CHECK (volume >= 0 AND volume < 1e309),
    PRIMARY KEY (symbol, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS symbol_counts (
    symbol TEXT PRIMARY KEY,
    n INTEGER NOT NULL CHECK (n >= 0)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trained (
    symbol TEXT PRIMARY KEY,
    bar_count INTEGER NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS symbol_partitions (
    symbol TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL
) WITHOUT ROWID;
"""

_INSERT: Final = """
INSERT INTO bars (symbol, ts, open, high, low, close, volume) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (symbol, ts) DO NOTHING
"""
# A correction rewrites the row; an identical re-delivery matches no row and writes nothing.
_CORRECT: Final = """
UPDATE bars SET open = ?3, high = ?4, low = ?5, close = ?6, volume = ?7
WHERE symbol = ?1 AND ts = ?2
  AND (open != ?3 OR high != ?4 OR low != ?5 OR close != ?6 OR volume != ?7)
"""
# Multi-row forms ("{}" is the VALUES list): one statement per chunk of rows, because the
# sqlite3 module releases the GIL around every step and executemany steps once per row.
# With the ingest thread decoding beside the writer, each step then waits for the GIL
# back: 200k rows took 2.0-2.8 s that way, 0.7-0.9 s in 2,048-row statements.
_INSERT_ROWS: Final = (
    "INSERT INTO bars (symbol, ts, open, high, low, close, volume) VALUES {}"
    " ON CONFLICT (symbol, ts) DO NOTHING"
)
_ADVANCE_ROWS: Final = (
    "INSERT INTO positions (topic, partition, next_offset) VALUES {} ON CONFLICT (topic, partition)"
    " DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)"
)
_PLACE_ROWS: Final = (
    "INSERT INTO symbol_partitions (symbol, topic, partition) VALUES {} ON CONFLICT (symbol)"
    " DO UPDATE SET topic = excluded.topic, partition = excluded.partition"
)
_COUNT_ROWS: Final = (
    "INSERT INTO symbol_counts (symbol, n) VALUES {}"
    " ON CONFLICT (symbol) DO UPDATE SET n = n + excluded.n"
)
_MAX_CHUNK_ROWS: Final = 2048
_LOAD_ALL: Final = (
    "SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = ? ORDER BY ts"
)
# Walks the (symbol, ts) key backwards: the cost is last_n rows, not the table size.
_LOAD_LAST: Final = (
    "SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = ? ORDER BY ts DESC LIMIT ?"
)


Partition = tuple[str, int]
"""A Kafka topic partition, as (topic, partition): the store knows no Kafka types."""


@dataclass(frozen=True, slots=True)
class Written:
    """What one ``write`` changed, per symbol of its input."""

    new: dict[str, int]
    """Rows the store did not have (a re-delivery counts 0)."""
    corrected: dict[str, int]
    """Existing rows replaced by different values for the same (symbol, ts): corrections."""


class BarStore(SqliteFile):
    """Bars by (symbol, ts), per-symbol counts, and retrain bookkeeping.

    It also records, in the same transaction as the bars, how far into each Kafka
    partition it is complete (``positions``: every bar before that offset is
    stored) and which partition each symbol's bars come from, so a daemon that
    takes a partition over knows exactly which offsets to rebuild.

    Every method raises StoreError for SQLite and file-system failures, and
    trainers.data.InvalidSymbolError for a symbol outside the whitelist.
    """

    _ping_sql = "SELECT 1 FROM symbol_counts LIMIT 1"

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        self._conn = None
        try:
            self._conn = self._open()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(self.path, "open", exc) from exc
        # Older SQLite builds allow 999 parameters a statement (3.32 on: 32,766).
        limit = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 7
        self._chunk_rows = min(_MAX_CHUNK_ROWS, 1 << (limit.bit_length() - 1))

    def _open(self) -> sqlite3.Connection:
        return open_sqlite(
            self.path,
            schema=_SCHEMA,
            schema_version=SCHEMA_VERSION,
            synchronous="FULL",
            read_only=self.read_only,
        )

    @contextmanager
    def _transaction(self, operation: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (durably) on success, rolled back on any error."""
        with self._connection(operation) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def upsert(
        self,
        bars: Sequence[BarRecord],
        *,
        positions: Mapping[Partition, int] | None = None,
        partitions: Mapping[str, Partition] | None = None,
    ) -> dict[str, int]:
        """``write``, returning only how many bars were new, per symbol in the input."""
        return self.write(bars, positions=positions, partitions=partitions).new

    def write(
        self,
        bars: Sequence[BarRecord],
        *,
        positions: Mapping[Partition, int] | None = None,
        partitions: Mapping[str, Partition] | None = None,
    ) -> Written:
        """Store bars in one transaction; return what was new and what was corrected.

        Idempotent by (symbol, ts): a re-delivered bar counts 0, a corrected one
        (same key, different values) replaces the row, counts 0 new and 1
        corrected. Within one call, the last bar for a key wins (an earlier one
        with other values counts as corrected). ``positions``: the next offset of
        each partition the bars complete (a position never moves back);
        ``partitions``: the partition each symbol's bars came from.
        """
        by_symbol: dict[str, list[BarRecord]] = defaultdict(list)
        for bar in bars:
            by_symbol[bar.symbol].append(bar)  # a BarRecord is a row in column order
        if not by_symbol and not positions and not partitions:
            return Written({}, {})
        for symbol in by_symbol:
            validate_symbol(symbol)
        with self._transaction("upsert") as conn:
            self._rows(conn, _ADVANCE_ROWS, [(t, p, n) for (t, p), n in (positions or {}).items()])
            self._rows(conn, _PLACE_ROWS, [(s, t, p) for s, (t, p) in (partitions or {}).items()])
            written = self._insert_new(conn, by_symbol)
            if written is None:
                written = self._insert_some(conn, by_symbol)
            self._rows(conn, _COUNT_ROWS, list(written.new.items()))
        return written

    def _insert_new(
        self, conn: sqlite3.Connection, by_symbol: Mapping[str, list[BarRecord]]
    ) -> Written | None:
        """The common case, every bar new, in one statement per chunk; None (nothing written)
        if some key was already stored or repeats in the input: the counts per symbol then
        need ``_insert_some``."""
        n = sum(len(rows) for rows in by_symbol.values())
        if not n:
            return Written({}, {})
        conn.execute("SAVEPOINT insert_new")
        inserted = self._rows(conn, _INSERT_ROWS, [r for rows in by_symbol.values() for r in rows])
        if inserted != n:
            conn.execute("ROLLBACK TO insert_new")
        conn.execute("RELEASE insert_new")
        if inserted != n:
            return None
        return Written({s: len(rows) for s, rows in by_symbol.items()}, dict.fromkeys(by_symbol, 0))

    @staticmethod
    def _insert_some(conn: sqlite3.Connection, by_symbol: Mapping[str, list[BarRecord]]) -> Written:
        """Per symbol: insert the new bars and apply corrections, counting both (re-delivery)."""
        new: dict[str, int] = {}
        corrected: dict[str, int] = {}
        for symbol, rows in by_symbol.items():
            new[symbol] = conn.executemany(_INSERT, rows).rowcount
            corrected[symbol] = 0
            if new[symbol] < len(rows):  # some keys existed: apply corrections
                corrected[symbol] = conn.executemany(_CORRECT, rows).rowcount
        return Written(new, corrected)

    def _rows(self, conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[object]]) -> int:
        """Run a multi-row ``sql`` over ``rows``; the rows it changed. Chunks are powers of
        two, so a handful of statement texts serve every size (the module caches them)."""
        if not rows:
            return 0
        width = len(rows[0])
        flat = list(chain.from_iterable(rows))
        changed, at, left = 0, 0, len(rows)
        while left:
            size = min(self._chunk_rows, 1 << (left.bit_length() - 1))
            values = ",".join(["(" + ",".join("?" * width) + ")"] * size)
            changed += conn.execute(
                sql.format(values), flat[at * width : (at + size) * width]
            ).rowcount
            at, left = at + size, left - size
        return changed

    def load(self, symbol: str, last_n: int | None = None) -> Bars:
        """The symbol's bars in ascending ts; only the newest ``last_n`` if given."""
        validate_symbol(symbol)
        if last_n is not None and last_n < 0:
            raise ValueError(f"last_n must be >= 0 or None, got {last_n}")
        with self._connection("load") as conn:
            if last_n is None:
                rows = conn.execute(_LOAD_ALL, (symbol,)).fetchall()
            else:
                rows = conn.execute(_LOAD_LAST, (symbol, last_n)).fetchall()
                rows.reverse()
        return Bars.from_rows(rows)

    def count(self, symbol: str) -> int:
        """Bars stored for ``symbol`` (0 for an unknown symbol)."""
        validate_symbol(symbol)
        with self._connection("count") as conn:
            row = conn.execute("SELECT n FROM symbol_counts WHERE symbol = ?", (symbol,)).fetchone()
        return 0 if row is None else int(row[0])

    def count_after(self, symbol: str, ts: int) -> int:
        """Bars of ``symbol`` newer than ``ts`` (a walk of the key from ``ts`` on)."""
        validate_symbol(symbol)
        with self._connection("count_after") as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM bars WHERE symbol = ? AND ts > ?", (symbol, ts)
            ).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        """Bars per symbol, from the counter table (O(symbols), no scan of bars)."""
        with self._connection("counts") as conn:
            rows = conn.execute("SELECT symbol, n FROM symbol_counts WHERE n > 0").fetchall()
        return {str(s): int(n) for s, n in rows}

    def symbols(self) -> list[str]:
        """Symbols with at least one bar, sorted."""
        return sorted(self.counts())

    def positions(self) -> dict[Partition, int]:
        """Per partition, the offset before which every bar is stored."""
        with self._connection("positions") as conn:
            rows = conn.execute("SELECT topic, partition, next_offset FROM positions").fetchall()
        return {(str(t), int(p)): int(n) for t, p, n in rows}

    def partitions(self) -> dict[str, Partition]:
        """The partition each symbol's bars came from (as last seen)."""
        with self._connection("partitions") as conn:
            rows = conn.execute("SELECT symbol, topic, partition FROM symbol_partitions").fetchall()
        return {str(s): (str(t), int(p)) for s, t, p in rows}

    def mark_trained(self, symbol: str, bar_count: int, at: float) -> None:
        """Record that ``symbol`` was trained on ``bar_count`` bars at unix time ``at``."""
        validate_symbol(symbol)
        with self._transaction("mark_trained") as conn:
            conn.execute(
                "INSERT INTO trained (symbol, bar_count, at) VALUES (?, ?, ?)"
                " ON CONFLICT (symbol) DO UPDATE SET bar_count = excluded.bar_count,"
                " at = excluded.at",
                (symbol, bar_count, at),
            )

    def trained_state(self) -> dict[str, tuple[int, float]]:
        """symbol -> (bar count at the last training, unix time of it)."""
        with self._connection("trained_state") as conn:
            rows = conn.execute("SELECT symbol, bar_count, at FROM trained").fetchall()
        return {str(s): (int(n), float(at)) for s, n, at in rows}

    def forget_trained(self, symbol: str) -> None:
        """Drop ``symbol``'s training record: its bars count as never trained (the record of a
        run whose result a crash lost; see ``daemon.training.recovery``)."""
        validate_symbol(symbol)
        with self._transaction("forget_trained") as conn:
            conn.execute("DELETE FROM trained WHERE symbol = ?", (symbol,))
