"""The SQLite bar store: idempotent, durable, atomic, readable while written."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from daemon.errors import StoreError
from daemon.store.bars import BarStore
from trainers.data import BarRecord, InvalidSymbolError

T0 = 1735689600


def rec(symbol: str, i: int, close: float = 100.0, volume: float = 1.0) -> BarRecord:
    return BarRecord(
        symbol, T0 + 60 * i, 100.0, max(close, 100.0) + 1, min(close, 100.0) - 1, close, volume
    )


def series(symbol: str, n: int, start: int = 0) -> list[BarRecord]:
    return [rec(symbol, i, close=100.0 + i % 7) for i in range(start, start + n)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bars.sqlite"


@pytest.fixture
def store(path: Path):
    s = BarStore(path)
    yield s
    s.close()


def raw_count(path: Path, symbol: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(
            conn.execute("SELECT COUNT(*) FROM bars WHERE symbol = ?", (symbol,)).fetchone()[0]
        )


def test_creates_parent_dirs_in_wal_mode(path: Path, store: BarStore) -> None:
    """Opening creates missing parent directories and a WAL-mode database."""
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.ping()


def test_upsert_returns_new_rows_per_symbol(store: BarStore) -> None:
    """upsert reports how many bars were new for each symbol in the input."""
    assert store.upsert([*series("BTCUSDT", 3), *series("AAPL", 2)]) == {"BTCUSDT": 3, "AAPL": 2}
    assert store.upsert(series("BTCUSDT", 4)) == {"BTCUSDT": 1}
    assert store.counts() == {"BTCUSDT": 4, "AAPL": 2}


def test_redelivery_is_idempotent(store: BarStore) -> None:
    """The same batch stored twice adds nothing and reports 0 new rows the second time."""
    batch = [*series("BTCUSDT", 50), *series("ETHUSDT", 20)]
    store.upsert(batch)
    before = store.load("BTCUSDT")
    assert store.upsert(batch) == {"BTCUSDT": 0, "ETHUSDT": 0}
    assert store.counts() == {"BTCUSDT": 50, "ETHUSDT": 20}
    after = store.load("BTCUSDT")
    assert np.array_equal(before.ts, after.ts)
    assert np.array_equal(before.close, after.close)


def test_correction_updates_the_row_without_counting(store: BarStore) -> None:
    """A bar re-sent with the same (symbol, ts) and new values replaces the row and counts 0."""
    store.upsert(series("BTCUSDT", 3))
    corrected = BarRecord("BTCUSDT", T0 + 60, 90.0, 120.0, 80.0, 110.0, 42.0)
    assert store.upsert([corrected]) == {"BTCUSDT": 0}
    bars = store.load("BTCUSDT")
    assert len(bars) == 3
    assert (bars.open[1], bars.high[1], bars.low[1], bars.close[1], bars.volume[1]) == (
        90.0,
        120.0,
        80.0,
        110.0,
        42.0,
    )
    assert bars.close[0] == 100.0
    assert store.count("BTCUSDT") == 3


def test_duplicate_key_within_one_upsert_keeps_the_last(store: BarStore) -> None:
    """Two bars with one key in one call count once and the later values win."""
    first, second = rec("BTCUSDT", 0, close=101.0), rec("BTCUSDT", 0, close=102.0)
    assert store.upsert([first, second]) == {"BTCUSDT": 1}
    assert store.load("BTCUSDT").close.tolist() == [102.0]
    assert store.count("BTCUSDT") == 1


def test_empty_upsert_is_a_no_op(store: BarStore) -> None:
    """Upserting nothing returns an empty dict and writes nothing."""
    assert store.upsert([]) == {}
    assert store.counts() == {}


def test_load_is_ascending_and_last_n_takes_the_newest(store: BarStore) -> None:
    """load returns ascending ts regardless of insert order; last_n keeps the newest N."""
    bars = series("BTCUSDT", 100)
    store.upsert(bars[50:])
    store.upsert(list(reversed(bars[:50])))
    all_bars = store.load("BTCUSDT")
    assert all_bars.ts.tolist() == [b.ts for b in bars]
    assert all_bars.close.tolist() == [b.close for b in bars]
    tail = store.load("BTCUSDT", last_n=10)
    assert tail.ts.tolist() == [b.ts for b in bars[-10:]]
    assert tail.volume.tolist() == [b.volume for b in bars[-10:]]
    assert len(store.load("BTCUSDT", last_n=1000)) == 100
    assert len(store.load("BTCUSDT", last_n=0)) == 0
    assert len(store.load("UNKNOWN")) == 0


def test_load_rejects_negative_last_n_and_bad_symbols(store: BarStore) -> None:
    """Negative last_n and non-whitelisted symbols are errors, not silent empties."""
    with pytest.raises(ValueError, match="last_n must be >= 0 or None, got -1"):
        store.load("BTCUSDT", last_n=-1)
    with pytest.raises(InvalidSymbolError):
        store.load("../etc")
    with pytest.raises(InvalidSymbolError):
        store.count("a/b")


def test_counts_symbols_and_count_agree_with_the_table(path: Path, store: BarStore) -> None:
    """The counter table matches a real COUNT(*) after mixed new, repeated and corrected bars."""
    store.upsert([*series("BTCUSDT", 30), *series("AAPL", 5)])
    store.upsert([*series("BTCUSDT", 40, start=20), rec("AAPL", 2, close=99.0)])
    assert store.counts() == {"BTCUSDT": 60, "AAPL": 5}
    assert store.symbols() == ["AAPL", "BTCUSDT"]
    assert store.count("BTCUSDT") == raw_count(path, "BTCUSDT") == 60
    assert store.count("AAPL") == raw_count(path, "AAPL") == 5
    assert store.count("NEVERSEEN") == 0


def test_upsert_revalidates_symbols_and_writes_nothing(store: BarStore) -> None:
    """A record with a non-whitelisted symbol fails the whole call before any write."""
    bad = BarRecord("../x", T0, 1.0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(InvalidSymbolError):
        store.upsert([*series("BTCUSDT", 5), bad])
    assert store.counts() == {}


@pytest.mark.parametrize(
    "bad",
    [
        BarRecord("BTCUSDT", T0 + 10_000, -1.0, 1.0, -2.0, 1.0, 1.0),
        BarRecord("BTCUSDT", T0 + 10_000, 1.0, 0.5, 0.5, 1.0, 1.0),
        BarRecord("BTCUSDT", T0 + 10_000, 1.0, 2.0, 1.5, 1.0, 1.0),
        BarRecord("BTCUSDT", T0 + 10_000, 1.0, 2.0, 1.0, 1.0, -1.0),
        BarRecord("BTCUSDT", T0 + 10_000, math.nan, 2.0, 1.0, 1.0, 1.0),
        BarRecord("BTCUSDT", T0 + 10_000, 1.0, math.inf, 1.0, 1.0, 1.0),
        BarRecord("BTCUSDT", T0 + 10_000, 1.0, 2.0, 1.0, 1.0, math.inf),
    ],
)
def test_failing_transaction_leaves_nothing(path: Path, store: BarStore, bad: BarRecord) -> None:
    """A schema CHECK failing on the last bar rolls back every bar of the call, counters too."""
    store.upsert(series("AAPL", 3))
    with pytest.raises(StoreError, match=r"bar store .*bars\.sqlite.*: upsert failed") as info:
        store.upsert([*series("BTCUSDT", 100), rec("AAPL", 3), bad])
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert not info.value.disk_full
    assert store.counts() == {"AAPL": 3}
    assert raw_count(path, "BTCUSDT") == 0
    assert store.upsert(series("BTCUSDT", 2)) == {"BTCUSDT": 2}  # still usable afterwards


def test_disk_full_is_flagged_and_rolled_back(store: BarStore) -> None:
    """SQLITE_FULL sets StoreError.disk_full, rolls the batch back, and the store recovers."""
    store.upsert(series("BTCUSDT", 10))
    conn = store._conn  # the page cap is how SQLite itself simulates a full disk
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError) as info:
        store.upsert(series("BTCUSDT", 20_000, start=10))
    assert info.value.disk_full
    assert store.count("BTCUSDT") == 10
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.upsert(series("BTCUSDT", 5, start=10)) == {"BTCUSDT": 5}


def test_data_survives_reopen(path: Path) -> None:
    """Bars, counts and trained state written before close are all there after reopening."""
    first = BarStore(path)
    first.upsert([*series("BTCUSDT", 25), *series("AAPL", 4)])
    first.mark_trained("BTCUSDT", 25, 1700000000.5)
    first.close()
    second = BarStore(path)
    try:
        assert second.counts() == {"BTCUSDT": 25, "AAPL": 4}
        assert second.load("BTCUSDT", last_n=3).ts.tolist() == [T0 + 60 * i for i in (22, 23, 24)]
        assert second.trained_state() == {"BTCUSDT": (25, 1700000000.5)}
    finally:
        second.close()


def test_mark_trained_overwrites_per_symbol(store: BarStore) -> None:
    """mark_trained keeps only the latest (bar count, time) for each symbol."""
    assert store.trained_state() == {}
    store.mark_trained("BTCUSDT", 500, 10.0)
    store.mark_trained("AAPL", 600, 11.0)
    store.mark_trained("BTCUSDT", 750, 12.0)
    assert store.trained_state() == {"BTCUSDT": (750, 12.0), "AAPL": (600, 11.0)}
    with pytest.raises(InvalidSymbolError):
        store.mark_trained("a/b", 1, 1.0)


def test_read_only_store_reads_but_cannot_write(path: Path, store: BarStore) -> None:
    """A read_only store sees the writer's data and refuses writes with StoreError."""
    store.upsert(series("BTCUSDT", 8))
    reader = BarStore(path, read_only=True)
    try:
        assert reader.load("BTCUSDT", last_n=2).ts.tolist() == [T0 + 60 * 6, T0 + 60 * 7]
        assert reader.ping()
        with pytest.raises(StoreError, match="readonly"):
            reader.upsert(series("BTCUSDT", 9))
        with pytest.raises(StoreError, match="readonly"):
            reader.mark_trained("BTCUSDT", 8, 1.0)
        store.upsert(series("BTCUSDT", 10))
        assert reader.count("BTCUSDT") == 10  # sees commits made after it opened
    finally:
        reader.close()
    assert store.count("BTCUSDT") == 10


def test_read_only_open_of_missing_file_fails_without_creating_it(tmp_path: Path) -> None:
    """Opening a missing database read-only raises StoreError naming the path, creating nothing."""
    missing = tmp_path / "nope" / "bars.sqlite"
    with pytest.raises(StoreError, match="nope"):
        BarStore(missing, read_only=True)
    assert not missing.parent.exists()


def test_newer_schema_version_is_refused(path: Path) -> None:
    """A database stamped with an unknown schema version is not silently used."""
    BarStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        BarStore(path)


def test_closed_store_fails_ping_and_raises(store: BarStore) -> None:
    """After close, ping is False, every call raises StoreError, and close is idempotent."""
    store.close()
    store.close()
    assert not store.ping()
    with pytest.raises(StoreError, match="closed"):
        store.counts()
    with pytest.raises(StoreError, match="closed"):
        store.upsert(series("BTCUSDT", 1))


def test_writer_and_readers_run_concurrently_without_lock_errors(
    path: Path, store: BarStore
) -> None:
    """A writer and two readers (same store, read-only store) coexist; reads see whole batches."""
    batches, per_batch = 40, 250
    errors: list[BaseException] = []
    done = threading.Event()
    seen_counts: list[int] = []

    def write() -> None:
        try:
            for b in range(batches):
                store.upsert(series("BTCUSDT", per_batch, start=b * per_batch))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def read(reader: BarStore) -> None:
        try:
            while not done.is_set():
                n = reader.count("BTCUSDT")
                assert n % per_batch == 0, f"saw a partial batch: count {n}"
                bars = reader.load("BTCUSDT", last_n=100)
                if len(bars):
                    newest = (int(bars.ts[-1]) - T0) // 60
                    assert (newest + 1) % per_batch == 0, f"saw a partial batch ending at {newest}"
                seen_counts.append(n)
        except BaseException as exc:
            errors.append(exc)

    other = BarStore(path, read_only=True)
    threads = [
        threading.Thread(target=write),
        threading.Thread(target=read, args=(store,)),
        threading.Thread(target=read, args=(other,)),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    finally:
        other.close()
    assert errors == []
    assert store.count("BTCUSDT") == raw_count(path, "BTCUSDT") == batches * per_batch
    assert seen_counts  # the readers did run while writing


def test_a_100k_bar_batch_goes_in_whole_and_the_newest_load_back_in_order(
    store: BarStore,
) -> None:
    """A large batch is stored whole (its speed is bench/ingest.py's business, not a test's)."""
    bars = [*series("BTCUSDT", 50_000), *series("ETHUSDT", 50_000)]
    assert store.upsert(bars) == {"BTCUSDT": 50_000, "ETHUSDT": 50_000}
    newest = store.load("BTCUSDT", last_n=5000)
    assert len(newest) == 5000
    assert list(newest.ts) == [b.ts for b in bars[45_000:50_000]]
