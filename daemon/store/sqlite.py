"""SQLite files of the daemon: one way to open them (WAL, schema version) and to hold them.

Threads: one connection behind one lock. The daemon has a single writer (the
ingest thread) and a few short readers (HTTP, CLI, scheduler); a connection per
thread would leak one per HTTP request thread for little gain. Other processes
(training workers) open their own read-only connection; WAL lets them read
while the daemon writes, and ``busy_timeout`` absorbs the brief moments when
SQLite must still wait for a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Literal

from daemon.errors import StoreError

BUSY_TIMEOUT_SECONDS: Final = 30.0


def open_sqlite(
    path: Path,
    *,
    schema: str,
    schema_version: int,
    synchronous: Literal["FULL", "NORMAL"],
    read_only: bool = False,
    migrations: Mapping[int, str] | None = None,
) -> sqlite3.Connection:
    """A WAL connection with ``schema`` created on first use and its version checked.

    ``migrations[k]`` is the script that takes a file from version ``k`` to ``k + 1``;
    an older file is brought up to ``schema_version`` in one transaction (a crash leaves
    it at its old version, migrated again next time).

    Autocommit: transactions are explicit (BEGIN IMMEDIATE) so their extent is
    visible. Read-only connections open the file with ``mode=ro`` and create
    nothing. Raises sqlite3.Error / OSError; the caller names the store.
    """
    if read_only:
        if not path.is_file():
            raise OSError(f"no such file {str(path)!r}")
        uri = f"{path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    conn.isolation_level = None
    try:
        if not read_only:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and not read_only:
            # One script: executescript would commit a transaction opened outside it.
            conn.executescript(
                f"BEGIN IMMEDIATE; {schema} PRAGMA user_version = {schema_version}; COMMIT;"
            )
        elif version < schema_version and not read_only and migrations:
            steps = [migrations.get(v) for v in range(version, schema_version)]
            if any(step is None for step in steps):
                raise sqlite3.DatabaseError(
                    f"schema version {version}, this ctd reads version {schema_version} and "
                    f"cannot migrate from {version}"
                )
            conn.executescript(
                f"BEGIN IMMEDIATE; {' '.join(str(step) for step in steps)} "
                f"PRAGMA user_version = {schema_version}; COMMIT;"
            )
        elif version != schema_version:
            raise sqlite3.DatabaseError(
                f"schema version {version}, this ctd reads version {schema_version}"
            )
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteFile:
    """One SQLite connection behind one lock; errors become ``error`` naming the path.

    One connection rather than one per thread: HTTP request threads come and go,
    and a connection per thread would leak. Subclasses open ``_conn`` and name
    the statement ``ping`` runs.
    """

    error: type[StoreError] = StoreError
    _ping_sql: str  # a constant statement of the subclass, e.g. "SELECT 1 FROM t LIMIT 1"

    path: Path
    _lock: threading.Lock
    _conn: sqlite3.Connection | None

    @contextmanager
    def _connection(self, operation: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; SQLite errors become ``error`` naming the path."""
        with self._lock:
            if self._conn is None:
                raise self.error(self.path, operation, "store is closed")
            try:
                yield self._conn
            except (sqlite3.Error, OSError) as exc:
                raise self.error(self.path, operation, exc) from exc

    def ping(self) -> bool:
        """True if the store is open and answers a query (readiness probe)."""
        try:
            with self._connection("ping") as conn:
                conn.execute(self._ping_sql).fetchall()
        except StoreError:
            return False
        return True

    def close(self) -> None:
        """Close the connection; idempotent. Later calls raise ``error``."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
