"""Hyperparameter tuning: real optuna, real trainers, seeded synthetic bars."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import optuna
import pytest

from monitors.base import Action, NullMonitor
from trainers.config import TrainConfig
from trainers.data import Bars
from trainers.errors import InvalidInputError, MissingExtraError, UnknownTrainerError
from trainers.features import training_matrix
from trainers.search_spaces import SEARCH_SPACES, Choice, FloatRange, search_space
from trainers.synthetic import MarketSpec, generate_bars
from trainers.table import make_trainer
from trainers.tuning import TrialMonitor, require_optuna, study_name, tune, tuning_datasets

TINY = TrainConfig(
    trainers=("xgboost",), trainer_params={"xgboost": {"preset": "tiny"}}, walk_forward_folds=2
)


@pytest.fixture(scope="module")
def bars() -> Bars:
    return generate_bars(MarketSpec("AAPL", 7, signal_strength=1.0, bar_seconds=86_400), 1200)


def _with_new_tail(bars: Bars, first: int) -> Bars:
    """``bars`` with every bar from index ``first`` on replaced by another market's path."""
    other = generate_bars(MarketSpec("OTHER", 99, bar_seconds=86_400), len(bars))
    scale = bars.close[first - 1] / other.close[first - 1]
    cols = {}
    for name in ("open", "high", "low", "close", "volume"):
        col = getattr(bars, name).copy()
        col[first:] = getattr(other, name)[first:] * (1.0 if name == "volume" else scale)
        cols[name] = col
    return Bars(ts=bars.ts.copy(), **cols)


def test_search_never_sees_test_rows(bars):
    """Tuning hands trainers no row of the pipeline's test split, and test bars change nothing."""
    matrix = training_matrix(bars)
    data = matrix.dataset(val_fraction=0.15, test_fraction=0.15)
    folds = tuning_datasets(data, folds=3, val_fraction=0.15, test_fraction=0.15)
    assert len(folds) == 3
    assert folds[-1].split.val == data.split.val  # the pipeline's own validation rows
    for fold in folds:
        assert len(fold.features) <= data.split.test.start
        assert fold.split.embargo == data.split.embargo
    # Replace the bars behind the test rows: the search must not notice.
    first_test_bar = int(np.searchsorted(bars.ts, matrix.ts[data.split.test.start]))
    changed = _with_new_tail(bars, first_test_bar + 1)
    other = training_matrix(changed)
    start = data.split.test.start
    assert len(other) == len(matrix)
    assert np.array_equal(other.X[:start], matrix.X[:start])
    assert not np.array_equal(other.X[start + 1 :], matrix.X[start + 1 :])
    a = tune("AAPL", bars, TINY, "xgboost", trials=3, timeout=60)
    b = tune("AAPL", changed, TINY, "xgboost", trials=3, timeout=60)
    assert a.completed + a.pruned == 3
    assert (a.params, a.value) == (b.params, b.value)


def test_a_diverging_trial_is_pruned():
    """The median pruner, fed each step's validation loss, stops a trial whose loss diverges."""
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    for k in range(3):
        trial = study.ask()
        monitor = TrialMonitor(NullMonitor(), trial, warmup=2)
        for step in range(10):
            assert monitor.on_step(step, 0.6, 0.69 - 0.002 * step - 0.001 * k) is Action.CONTINUE
        assert monitor.pruned is None
        study.tell(trial, 0.67)
    trial = study.ask()
    monitor = TrialMonitor(NullMonitor(), trial, offset=0, warmup=2)
    actions = [monitor.on_step(step, 0.6, 0.7 * 2.0**step) for step in range(4)]
    assert actions[:2] == [Action.CONTINUE, Action.CONTINUE]  # warm-up: never pruned
    assert actions[2] is Action.STOP
    assert monitor.pruned is not None and "median pruner" in monitor.pruned
    assert trial.storage.get_trial(trial._trial_id).intermediate_values[2] == pytest.approx(2.8)


def test_trial_monitor_keeps_the_inner_rules_and_the_deadline():
    """An inner ABORT stays ABORT; a passed deadline stops the trial as pruned."""

    class Aborting(NullMonitor):
        def on_step(self, step, train_loss, val_loss, extra=None):
            return Action.ABORT

    trial = optuna.create_study().ask()
    assert TrialMonitor(Aborting(), trial).on_step(0, 1.0, 1.0) is Action.ABORT
    now = [0.0]
    late = TrialMonitor(NullMonitor(), trial, deadline=5.0, clock=lambda: now[0], offset=10)
    assert late.on_step(0, 1.0, 1.0) is Action.CONTINUE
    now[0] = 5.0
    assert late.on_step(1, 1.0, 1.0) is Action.STOP
    assert late.pruned == "time budget used up"


def test_study_resumes_from_sqlite_and_never_searches_pinned_params(bars, tmp_path):
    """A second run continues the SQLite study; keys the operator set are the base, not searched."""
    storage = tmp_path / "tuning" / "studies.sqlite3"
    config = replace(TINY, trainer_params={"xgboost": {"preset": "tiny", "max_depth": 2}})
    first = tune("AAPL", bars, config, "xgboost", trials=2, timeout=60, storage=storage)
    second = tune("AAPL", bars, config, "xgboost", trials=2, timeout=60, storage=storage)
    assert first.study == second.study
    assert (first.study_trials, second.study_trials) == (2, 4)
    persisted = optuna.load_study(study_name=first.study, storage=f"sqlite:///{storage}")
    assert len(persisted.trials) == 4
    assert second.base == {"preset": "tiny", "max_depth": 2}
    assert second.params is not None and "max_depth" not in second.params
    assert "learning_rate" in second.params
    space = search_space("xgboost")
    base = {"preset": "tiny"}
    assert study_name("AAPL", "xgboost", space, base, TINY) != first.study  # another problem


def test_the_time_budget_ends_the_search(bars):
    """A search of many trials stops at its timeout, the running trial pruned."""
    result = tune("AAPL", bars, TINY, "xgboost", trials=10_000, timeout=2.0)
    assert result.seconds < 2.0 + 1.0  # a step or two late at most (a loaded CI machine)
    assert result.completed + result.pruned < 10_000


def test_missing_optuna_names_the_extra(bars, monkeypatch):
    """Without optuna, tuning fails with an error that says how to install the extra."""
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'ctd\[tune\]'"):
        require_optuna()
    with pytest.raises(MissingExtraError, match=r"pip install 'ctd\[tune\]'"):
        tune("AAPL", bars, TINY, "xgboost", trials=1, timeout=10)


def test_nothing_to_tune_and_unknown_trainers_are_clear_errors(bars):
    """The naive baselines have nothing to tune; an unknown name lists the valid ones."""
    for name in ("naive", "persistence"):
        with pytest.raises(InvalidInputError, match="nothing to tune"):
            search_space(name)
        with pytest.raises(InvalidInputError, match="nothing to tune"):
            tune("AAPL", bars, TINY, name, trials=1, timeout=10)
    with pytest.raises(UnknownTrainerError, match="valid names"):
        search_space("gbm")


@pytest.mark.parametrize("trainer", sorted(SEARCH_SPACES))
def test_every_search_space_uses_the_trainers_real_parameters(trainer):
    """Each space's corners are keywords its trainer accepts (constructors reject the rest)."""
    space = search_space(trainer)
    for corner in (0, -1):
        params = {
            name: d.options[corner] if isinstance(d, Choice) else (d.low, d.high)[corner]
            for name, d in space.items()
        }
        make_trainer(trainer, preset="tiny", **params)
    assert all(d.low < d.high for d in space.values() if isinstance(d, FloatRange))
