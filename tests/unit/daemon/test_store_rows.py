"""BarStore.write's multi-row statements (daemon/store/bars.py): the chunking into
power-of-two statements and the fall back to per-symbol counting give the same store and
the same counts as one row at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.store.bars import BarStore, Written
from trainers.data import BarRecord

T0 = 1_735_689_600


def bars(symbol: str, n: int, start: int = 0, close: float = 10.0) -> list[BarRecord]:
    return [
        BarRecord(symbol, T0 + 60 * i, close, close + 1, close - 1, close, 1.0 + i)
        for i in range(start, start + n)
    ]


@pytest.fixture
def store(tmp_path: Path) -> BarStore:
    s = BarStore(tmp_path / "bars.sqlite")
    s._chunk_rows = 16  # small chunks: every size below crosses chunk boundaries
    return s


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 31, 33, 100])
def test_every_size_is_stored_whole_and_counted(store: BarStore, n: int) -> None:
    """Sizes around the chunk boundaries store every row once, with its values."""
    rows = bars("AAA", n) + bars("BBB", n // 2 + 1)
    written = store.write(rows, positions={("t", 0): 7}, partitions={"AAA": ("t", 0)})
    assert written == Written({"AAA": n, "BBB": n // 2 + 1}, {"AAA": 0, "BBB": 0})
    assert store.counts() == {"AAA": n, "BBB": n // 2 + 1}
    assert store.load("AAA").ts.tolist() == [r.ts for r in rows if r.symbol == "AAA"]
    assert store.load("BBB").close.tolist() == [r.close for r in rows if r.symbol == "BBB"]
    assert store.positions() == {("t", 0): 7}
    assert store.partitions() == {"AAA": ("t", 0)}


def test_a_partly_stored_batch_counts_new_and_corrected_per_symbol(store: BarStore) -> None:
    """Some keys stored already: the fast statement rolls back and the per-symbol way counts
    new rows and corrections exactly (the counter table stays right)."""
    store.write(bars("AAA", 20))
    again = bars("AAA", 10, start=15) + bars("BBB", 40)
    again[0] = again[0]._replace(close=10.5)  # a correction of a stored bar
    written = store.write(again)
    assert written == Written({"AAA": 5, "BBB": 40}, {"AAA": 1, "BBB": 0})
    assert store.counts() == {"AAA": 25, "BBB": 40}
    assert store.load("AAA").close.tolist()[15] == 10.5


def test_a_key_twice_in_one_write_keeps_the_last(store: BarStore) -> None:
    """A repeated key makes the fast statement insert fewer rows than given: the per-symbol
    way then applies the later bar as a correction."""
    rows = bars("AAA", 20)
    rows.append(rows[3]._replace(close=10.25))
    written = store.write(rows)
    assert written == Written({"AAA": 20}, {"AAA": 1})
    assert store.counts() == {"AAA": 20}
    assert store.load("AAA").close.tolist()[3] == 10.25


def test_positions_never_move_back_across_many_partitions(store: BarStore) -> None:
    """The multi-row position upsert keeps the larger offset per partition."""
    store.write([], positions={("t", p): 100 + p for p in range(40)})
    store.write([], positions={("t", p): 50 + 3 * p for p in range(40)})
    assert store.positions() == {("t", p): max(100 + p, 50 + 3 * p) for p in range(40)}


def test_the_chunk_fits_the_connections_parameter_limit(tmp_path: Path) -> None:
    """The default chunk times seven columns stays under SQLite's parameter limit."""
    import sqlite3

    s = BarStore(tmp_path / "bars.sqlite")
    assert s._conn is not None
    assert s._chunk_rows * 7 <= s._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    assert s._chunk_rows & (s._chunk_rows - 1) == 0
    s.close()
