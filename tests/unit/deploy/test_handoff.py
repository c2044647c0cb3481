"""Trial checkpoints (``deploy.handoff``): what the next owner of a symbol restores."""

from __future__ import annotations

import json

import pytest

from deploy.handoff import TrialCheckpoint, restore_checkpoint, take_checkpoint
from deploy.memory_log import MemoryPredictionLog
from deploy.trial import LogWrite, Prediction, TrialState

TEST = {"n": 12, "wins": 7}


def _state(last_ts: int, test: dict[str, int] | None = TEST) -> TrialState:
    return TrialState(last_ts, "v1", "v2", test, 100, last_ts)


def _log_with(last_ts: int, pending_ts: int) -> MemoryPredictionLog:
    log = MemoryPredictionLog()
    pending = [
        Prediction(pending_ts, "champion", "v1", 0.61),
        Prediction(pending_ts, "shadow", "v2", 0.42),
    ]
    log.commit([LogWrite("AAA", pending, (), _state(last_ts))])
    return log


def test_a_checkpoint_survives_json_and_restores_into_an_empty_log() -> None:
    """Taken from one daemon's log, stored as JSON, restored into another's: same state, same
    predictions still waiting for their label."""
    checkpoint = take_checkpoint(_log_with(500, 500), "AAA")
    assert checkpoint is not None
    copy = TrialCheckpoint.from_dict(json.loads(json.dumps(checkpoint.to_dict())))
    assert copy == checkpoint
    other = MemoryPredictionLog()
    assert restore_checkpoint(other, "AAA", copy)
    assert other.load_state("AAA") == _state(500)
    assert sorted(p.slot for p in other.unresolved("AAA")) == ["champion", "shadow"]


def test_only_the_predictions_of_the_last_bar_are_kept() -> None:
    """Older unresolved predictions were resolved by the trial already (their label bar came);
    only the newest bar's wait for theirs."""
    log = _log_with(400, 400)
    log.commit([LogWrite("AAA", [Prediction(500, "champion", "v1", 0.5)], (), _state(500))])
    checkpoint = take_checkpoint(log, "AAA")
    assert checkpoint is not None
    assert [p.bar_ts for p in checkpoint.pending] == [500]


def test_no_trial_no_checkpoint() -> None:
    log = MemoryPredictionLog()
    assert take_checkpoint(log, "AAA") is None
    log.commit([LogWrite("AAA", (), (), _state(500, test=None))])
    assert take_checkpoint(log, "AAA") is None


def test_a_log_that_is_as_new_or_newer_is_not_overwritten() -> None:
    """A daemon that gets a symbol back keeps its own later evidence."""
    saved = take_checkpoint(_log_with(500, 500), "AAA")
    assert saved is not None
    for own_ts in (500, 600):
        log = _log_with(own_ts, own_ts)
        assert not restore_checkpoint(log, "AAA", saved)
        assert log.load_state("AAA") == _state(own_ts)
    older = _log_with(300, 300)
    assert restore_checkpoint(older, "AAA", saved)
    assert older.load_state("AAA") == _state(500)


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"state": []},
        {"state": {"last_ts": "x"}},
        {"state": {"last_ts": 1}, "pending": [{"slot": "canary"}]},
    ],
)
def test_a_malformed_checkpoint_is_a_value_error(doc: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrialCheckpoint.from_dict(doc)


def test_with_a_longer_horizon_the_newest_horizon_bars_predictions_are_kept() -> None:
    """A 3-bar horizon: the predictions of the three newest bars that have any still wait for
    their outcome and go with the checkpoint; older unresolved ones never resolve and stay."""
    log = MemoryPredictionLog()
    made = [Prediction(ts, "champion", "v1", 0.001 * ts) for ts in (100, 200, 300, 400, 500)]
    log.commit([LogWrite("AAA", made, (), _state(500))])
    checkpoint = take_checkpoint(log, "AAA", horizon=3)
    assert checkpoint is not None
    assert [p.bar_ts for p in checkpoint.pending] == [300, 400, 500]
    copy = TrialCheckpoint.from_dict(json.loads(json.dumps(checkpoint.to_dict())))
    assert copy == checkpoint


def test_a_checkpoint_written_before_return_targets_still_restores() -> None:
    """Earlier releases named a pending prediction's value ``proba_up``."""
    doc = {
        "state": _state(500).to_dict(),
        "pending": [{"bar_ts": 500, "slot": "champion", "version": "v1", "proba_up": 0.61}],
    }
    restored = TrialCheckpoint.from_dict(doc)
    assert restored.pending == (Prediction(500, "champion", "v1", 0.61),)
