"""Every PredictionLog (SQLite, memory) keeps the same promises the live scorer relies on."""

from __future__ import annotations

from daemon.store.predictions import PredictionStore
from deploy.memory_log import MemoryPredictionLog
from deploy.trial import LogWrite, Prediction, PredictionLog, Resolution, TrialState
from tests.support.helpers import each_implementation

V1, V2 = "20250101T000000000001Z-aaaa", "20250101T000000000002Z-bbbb"
log = each_implementation(
    sqlite=lambda tmp: PredictionStore(tmp / "predictions.sqlite"),
    memory=lambda _tmp: MemoryPredictionLog(),
)


def _write(log: PredictionLog, ts: int, label_of: int | None = None) -> None:
    predictions = [Prediction(ts, "champion", V1, 0.7), Prediction(ts, "shadow", V2, 0.2)]
    resolutions = [] if label_of is None else [Resolution(label_of, 1)]
    log.commit([LogWrite("AAA", predictions, resolutions, TrialState(ts, V1, V2))])


def test_a_commit_stores_predictions_labels_earlier_ones_and_the_state(log: PredictionLog) -> None:
    """Each bar's predictions wait for a label; the next commit labels them; state is the last."""
    _write(log, 100)
    assert [(p.bar_ts, p.slot) for p in log.unresolved("AAA")] == [
        (100, "champion"),
        (100, "shadow"),
    ]
    _write(log, 160, label_of=100)
    assert [p.bar_ts for p in log.unresolved("AAA")] == [160, 160]
    assert log.recent_outcomes("AAA", V1, 10) == [(0.7, 1)]
    assert log.recent_outcomes("AAA", V2, 10) == [(0.2, 1)]
    state = log.load_state("AAA")
    assert state is not None and state.last_ts == 160
    assert log.load_state("BBB") is None


def test_a_repeated_prediction_keeps_the_first_and_outcomes_are_oldest_first(
    log: PredictionLog,
) -> None:
    """Re-delivery keeps the stored prediction; recent_outcomes returns the newest n, in order."""
    for i in range(5):
        _write(log, 100 + 60 * i, label_of=None if i == 0 else 100 + 60 * (i - 1))
    log.commit(
        [LogWrite("AAA", [Prediction(100, "champion", V1, 0.1)], [], TrialState(400, V1, V2))]
    )
    assert log.recent_outcomes("AAA", V1, 2) == [(0.7, 1), (0.7, 1)]
    assert len(log.recent_outcomes("AAA", V1, 10)) == 4
    assert log.unresolved("AAA", before_ts=340) == []
