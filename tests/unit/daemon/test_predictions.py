"""The SQLite prediction log: atomic commits, resolution, trial state that survives reopening."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import PredictionStoreError, StoreError
from daemon.store.predictions import PredictionStore
from deploy.sequential import PairedSequentialTest, PromotionTestConfig
from deploy.trial import LogWrite, Prediction, Resolution, TrialState
from trainers.data import InvalidSymbolError

SYMBOL = "BTCUSDT"
V1, V2 = "20250101T000000000001Z-aaaa", "20250101T000000000002Z-bbbb"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "predictions.sqlite"


@pytest.fixture
def store(path: Path) -> Iterator[PredictionStore]:
    s = PredictionStore(path)
    yield s
    s.close()


def state(last_ts: int, n: int = 0) -> TrialState:
    test = PairedSequentialTest(PromotionTestConfig(min_samples=5))
    for i in range(n):
        test.update(i % 2 == 0, i % 3 == 0, 0.7, 0.6)
    return TrialState(last_ts, V1, V2, test.to_dict(), 10 if n else None, last_ts if n else None)


def pair(ts: int, champion: float = 0.4, shadow: float = 0.7) -> list[Prediction]:
    return [Prediction(ts, "champion", V1, champion), Prediction(ts, "shadow", V2, shadow)]


def commit(
    store: PredictionStore,
    predictions: list[Prediction],
    resolutions: list[Resolution],
    st: TrialState,
    symbol: str = SYMBOL,
) -> None:
    store.commit([LogWrite(symbol, predictions, resolutions, st)])


def labels(path: Path) -> list[tuple[int, str, float | None, bool]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT bar_ts, slot, outcome, resolved_at IS NOT NULL FROM predictions"
            " ORDER BY bar_ts, slot"
        ).fetchall()
    return [(int(a), str(b), c, bool(d)) for a, b, c, d in rows]


def test_opens_in_wal_mode_and_starts_empty(path: Path, store: PredictionStore) -> None:
    """A new store creates its file in WAL mode and knows no symbol yet."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.load_state(SYMBOL) is None
    assert store.unresolved(SYMBOL) == []
    assert store.ping()


def test_commit_round_trips_predictions_and_state(store: PredictionStore) -> None:
    """Committed predictions come back unresolved, oldest first; the state comes back equal."""
    saved = state(120, n=7)
    commit(store, [*pair(60), *pair(120)], [], saved)
    assert store.unresolved(SYMBOL) == [*pair(60), *pair(120)]
    assert store.unresolved(SYMBOL, before_ts=120) == pair(60)
    loaded = store.load_state(SYMBOL)
    assert loaded == saved
    assert loaded is not None and loaded.test is not None
    assert PairedSequentialTest.from_dict(loaded.test).evidence.n == 7


def test_resolution_labels_every_slot_of_that_bar_only(path: Path, store: PredictionStore) -> None:
    """A resolution labels both slots of its bar, stamps resolved_at, and touches no other bar;
    one commit can resolve predictions it inserts itself."""
    commit(store, pair(60), [], state(60))
    commit(store, [*pair(120), *pair(180)], [Resolution(60, 1), Resolution(120, 0)], state(180))
    assert labels(path) == [
        (60, "champion", 1, True),
        (60, "shadow", 1, True),
        (120, "champion", 0, True),
        (120, "shadow", 0, True),
        (180, "champion", None, False),
        (180, "shadow", None, False),
    ]
    assert store.unresolved(SYMBOL) == pair(180)


def test_a_label_once_set_is_never_rewritten(path: Path, store: PredictionStore) -> None:
    """Resolving an already labelled bar again changes nothing (re-delivery safety)."""
    commit(store, pair(60), [Resolution(60, 1)], state(60))
    commit(store, [], [Resolution(60, 0)], state(60))
    assert [row[2] for row in labels(path)] == [1, 1]


def test_an_existing_prediction_is_kept(store: PredictionStore) -> None:
    """Inserting a prediction for a (bar, slot) already logged keeps the first one."""
    commit(store, pair(60, champion=0.1), [], state(60))
    commit(store, pair(60, champion=0.9), [], state(60))
    assert store.unresolved(SYMBOL)[0].value == 0.1


def test_recent_outcomes_are_the_newest_resolved_of_a_version(store: PredictionStore) -> None:
    """recent_outcomes returns the newest resolved (value, outcome) of one version, oldest first."""
    for i, ts in enumerate(range(60, 660, 60)):
        commit(
            store,
            pair(ts, champion=i / 20),
            [Resolution(ts - 60, i % 2)] if ts > 60 else [],
            state(ts),
        )
    outcomes = store.recent_outcomes(SYMBOL, V1, 3)
    # Bars 60..540 are resolved (labels 1, 0, 1, ...); the newest three are bars 420..540.
    assert outcomes == [(6 / 20, 1), (7 / 20, 0), (8 / 20, 1)]
    assert store.recent_outcomes(SYMBOL, "20250101T000000000003Z-cccc", 3) == []


def test_failed_commit_writes_nothing(path: Path, store: PredictionStore) -> None:
    """A commit that fails part-way leaves every symbol's predictions, labels and state as
    before it."""
    commit(store, pair(60), [], state(60, n=3))
    bad = [*pair(120), Prediction(180, "champion", V1, float("nan"))]  # NaN is NULL: refused
    with pytest.raises(PredictionStoreError, match="commit"):
        store.commit(
            [
                LogWrite("ETHUSDT", pair(60), [], state(60)),
                LogWrite(SYMBOL, bad, [Resolution(60, 1)], state(180, n=9)),
            ]
        )
    assert store.unresolved(SYMBOL) == pair(60)
    assert store.load_state(SYMBOL) == state(60, n=3)
    assert [row[2] for row in labels(path)] == [None, None]
    assert store.load_state("ETHUSDT") is None
    assert store.unresolved("ETHUSDT") == []


def test_one_commit_writes_many_symbols(store: PredictionStore) -> None:
    """A batch's writes for several symbols land together, each under its own symbol."""
    store.commit(
        [
            LogWrite("ETHUSDT", pair(60, champion=0.2), [], state(60)),
            LogWrite(SYMBOL, pair(120), [], state(120, n=2)),
        ]
    )
    assert store.unresolved("ETHUSDT") == pair(60, champion=0.2)
    assert store.unresolved(SYMBOL) == pair(120)
    assert store.load_state(SYMBOL) == state(120, n=2)


def test_state_survives_reopening(path: Path) -> None:
    """A new store on the same file sees everything committed before it was closed."""
    first = PredictionStore(path)
    commit(first, pair(60), [], state(60, n=4))
    first.close()
    second = PredictionStore(path)
    try:
        assert second.load_state(SYMBOL) == state(60, n=4)
        assert second.unresolved(SYMBOL) == pair(60)
    finally:
        second.close()


def test_corrupt_state_is_reported_with_the_symbol(path: Path, store: PredictionStore) -> None:
    """A trial state that does not parse raises a store error naming the symbol."""
    commit(store, [], [], state(60))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE trials SET state = ? WHERE symbol = ?", ('{"last_ts": "x"}', SYMBOL))
    with pytest.raises(PredictionStoreError, match=f"load_state\\({SYMBOL}\\).*last_ts"):
        store.load_state(SYMBOL)


def test_errors_are_store_errors_naming_the_file(path: Path, store: PredictionStore) -> None:
    """After close every call raises a StoreError that says prediction store and the path."""
    store.close()
    with pytest.raises(StoreError, match="prediction store") as info:
        store.load_state(SYMBOL)
    assert str(path) in str(info.value)
    assert not store.ping()


def test_bad_symbol_is_rejected(store: PredictionStore) -> None:
    """A symbol outside the whitelist never reaches SQL."""
    with pytest.raises(InvalidSymbolError):
        commit(store, [], [], state(60), symbol="../x")


_V1_SCHEMA = """
CREATE TABLE predictions (
    symbol TEXT NOT NULL, bar_ts INTEGER NOT NULL,
    slot TEXT NOT NULL CHECK (slot IN ('champion', 'shadow')), version TEXT NOT NULL,
    proba REAL NOT NULL CHECK (proba >= 0 AND proba <= 1), label INTEGER CHECK (label IN (0, 1)),
    resolved_at REAL, PRIMARY KEY (symbol, bar_ts, slot)
) WITHOUT ROWID;
CREATE INDEX predictions_by_version ON predictions (symbol, version, bar_ts);
CREATE INDEX predictions_unresolved ON predictions (symbol, bar_ts) WHERE label IS NULL;
CREATE TABLE trials (symbol TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL)
    WITHOUT ROWID;
PRAGMA user_version = 1;
"""


def test_a_version_1_log_is_migrated_with_its_predictions_labels_and_trials(path: Path) -> None:
    """A log written before return targets (P(up) in ``proba``, a 0/1 ``label``) opens as
    version 2 with every row kept; it then takes return predictions and outcomes."""
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_SCHEMA)
        conn.executemany(
            "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (SYMBOL, 60, "champion", V1, 0.4, 1, 5.0),
                (SYMBOL, 60, "shadow", V2, 0.7, 1, 5.0),
                (SYMBOL, 120, "champion", V1, 0.6, None, None),
            ],
        )
        conn.execute("INSERT INTO trials VALUES (?, ?, ?)", (SYMBOL, '{"last_ts": 120}', 5.0))
    store = PredictionStore(path)
    try:
        assert store.recent_outcomes(SYMBOL, V1, 10) == [(0.4, 1.0)]
        assert store.unresolved(SYMBOL) == [Prediction(120, "champion", V1, 0.6)]
        assert store.load_state(SYMBOL) == TrialState(120, None, None)
        store.commit(
            [LogWrite(SYMBOL, [Prediction(180, "champion", V1, -0.004)], [Resolution(120, -0.01)],
                      state(180))]
        )  # fmt: skip
        assert store.recent_outcomes(SYMBOL, V1, 10) == [(0.4, 1.0), (0.6, -0.01)]
        assert store.unresolved(SYMBOL) == [Prediction(180, "champion", V1, -0.004)]
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"predictions_by_version", "predictions_unresolved"} <= indexes
