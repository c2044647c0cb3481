"""The SQLite bar store and the in-memory one answer the same way."""

from __future__ import annotations

from daemon.store.bars import BarStore
from daemon.store.memory import MemoryBarStore
from tests.support.helpers import each_implementation
from trainers.data import BarRecord

Store = BarStore | MemoryBarStore
store = each_implementation(
    sqlite=lambda tmp: BarStore(tmp / "bars.sqlite"), memory=lambda _tmp: MemoryBarStore()
)


def _bar(symbol: str, i: int, close: float = 100.0) -> BarRecord:
    return BarRecord(symbol, 1_735_689_600 + 60 * i, close, close + 1, close - 1, close, 10.0)


def test_upsert_is_idempotent_and_a_correction_replaces_the_row(store: Store) -> None:
    """New bars count; a re-delivered one counts 0; a corrected one replaces it, counting 0."""
    assert store.upsert([_bar("A", i) for i in range(3)] + [_bar("B", 0)]) == {"A": 3, "B": 1}
    assert store.upsert([_bar("A", 2), _bar("A", 1, close=105.0)]) == {"A": 0}
    assert store.counts() == {"A": 3, "B": 1}
    assert store.count("A") == 3
    assert list(store.load("A").close) == [100.0, 105.0, 100.0]


def test_write_counts_corrections_apart_from_new_and_repeated_bars(store: Store) -> None:
    """A correction (same key, other values) is counted; a re-delivery is not; within one
    write, each change of a key's values is one correction and the last value stays."""
    first = store.write([_bar("A", i) for i in range(3)])
    assert (first.new, first.corrected) == ({"A": 3}, {"A": 0})
    again = store.write([_bar("A", 0), _bar("A", 1, close=105.0), _bar("B", 0)])
    assert (again.new, again.corrected) == ({"A": 0, "B": 1}, {"A": 1, "B": 0})
    twice = store.write([_bar("A", 2, close=90.0), _bar("A", 2, close=91.0), _bar("A", 3)])
    assert (twice.new, twice.corrected) == ({"A": 1}, {"A": 2})
    assert list(store.load("A").close) == [100.0, 105.0, 91.0, 100.0]
    assert store.counts() == {"A": 4, "B": 1}


def test_load_returns_the_newest_bars_in_time_order(store: Store) -> None:
    store.upsert([_bar("A", i) for i in (5, 1, 3, 2, 4)])
    assert list(store.load("A", last_n=2).ts) == [_bar("A", 4).ts, _bar("A", 5).ts]
    assert len(store.load("A", last_n=0)) == 0
    assert len(store.load("NONE")) == 0
    # Asking for more than is stored gives everything (the backtest's training window).
    assert list(store.load("A", last_n=8).ts) == [_bar("A", i).ts for i in range(1, 6)]


def test_trained_state_keeps_the_last_mark(store: Store) -> None:
    store.mark_trained("A", 100, 1.0)
    store.mark_trained("A", 250, 2.0)
    assert store.trained_state() == {"A": (250, 2.0)}


def test_forget_trained_drops_one_symbols_mark(store: Store) -> None:
    """A forgotten symbol counts as never trained; the others keep their marks."""
    store.mark_trained("A", 100, 1.0)
    store.mark_trained("B", 50, 1.5)
    store.forget_trained("A")
    store.forget_trained("NEVER")
    assert store.trained_state() == {"B": (50, 1.5)}


def test_positions_only_move_forward_and_partitions_follow_the_last_write(store: Store) -> None:
    """A partition's position is where its stored bars end; it never moves back (a re-delivered
    older batch), and positions alone can be recorded (a skipped batch with no bars)."""
    assert store.positions() == {} and store.partitions() == {}
    store.upsert(
        [_bar("AAA", 0), _bar("BBB", 0)],
        positions={("bars", 0): 10, ("bars", 1): 4},
        partitions={"AAA": ("bars", 0), "BBB": ("bars", 1)},
    )
    store.upsert([_bar("AAA", 1)], positions={("bars", 0): 7})
    store.upsert([], positions={("bars", 1): 9})
    assert store.positions() == {("bars", 0): 10, ("bars", 1): 9}
    store.upsert([], partitions={"AAA": ("bars", 2)})
    assert store.partitions() == {"AAA": ("bars", 2), "BBB": ("bars", 1)}
    assert store.count("AAA") == 2
