"""Hyperparameter search for one symbol and trainer with optuna (optional extra ``tune``).

The objective is the mean validation log loss over the walk-forward folds the
pipeline would build (same fractions, same embargo; ``tuning_datasets``). Log
loss, not accuracy: it is a proper scoring rule, so it rewards calibrated
probabilities, and on a few hundred validation rows it is far less noisy than
accuracy (whose standard error there is ~2.5 points, enough for a search to
chase luck); it is also the loss every trainer early-stops on and reports to
its monitor, so the pruner's intermediate values and the objective are one
quantity. The test split is never touched: each fold's data ends where its
embargo gap after validation ends, which for the last fold is the first test
row, so no trainer is even handed a test row.

TPE samples (seeded); a median pruner stops a trial whose best validation loss
so far is worse than the median of earlier trials at the same step, fed by
``TrialMonitor`` from the training monitor protocol (step = fold x
``FOLD_STEPS`` + epoch or boosting round). The time budget holds at step
granularity: the trial running at the deadline is pruned and the study stops.

Trials run against an in-memory study seeded with the persisted one's trials;
each finished trial is then appended to the SQLite study (``storage``). A
SQLite round trip per reported step would cost more than a small model's fit.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from monitors.base import Action, MonitorWarning, TrainingMonitor
from monitors.training import build_monitor
from trainers.config import TrainConfig, json_safe
from trainers.data import Bars, validate_symbol
from trainers.dataset import MIN_EVAL_ROWS, Dataset
from trainers.errors import InvalidInputError, MissingExtraError
from trainers.features import training_matrix
from trainers.metrics import classification_metrics
from trainers.repro import seed_everything
from trainers.search_spaces import Choice, FloatRange, IntRange, SearchSpace, describe, search_space
from trainers.splits import Split, walk_forward_splits
from trainers.table import make_trainer

if TYPE_CHECKING:
    import optuna

FOLD_STEPS: Final = 1_000_000
"""Step offset between folds in the reports to a trial: more than any trainer's steps."""
PRUNE_WARMUP_STEPS: Final = 5
"""Steps of each fold before pruning is considered: first rounds say little of the last."""
PRUNER_STARTUP_TRIALS: Final = 5
"""Trials that finish unpruned before the median means anything."""
OBJECTIVE: Final = "mean_val_log_loss"


def require_optuna() -> Any:
    """The optuna module; ``MissingExtraError`` naming ``pip install 'ctd[tune]'`` without it."""
    try:
        import optuna  # noqa: PLC0415 - the optional extra, imported on first use
    except ImportError:
        raise MissingExtraError("optuna", "tune", "hyperparameter tuning") from None
    return optuna


class TrialLike(Protocol):
    """What ``TrialMonitor`` needs of an ``optuna.Trial``."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class TrialMonitor:
    """A ``TrainingMonitor`` that also feeds a trial: reports each step's validation loss
    (at ``offset + step``) and, from ``warmup`` steps into the fit on, turns the pruner's
    verdict, or a passed ``deadline``, into STOP. ``pruned`` then says why; the objective
    raises ``optuna.TrialPruned``. The wrapped monitor sees every step and keeps its rules
    (an ABORT stays an ABORT)."""

    def __init__(
        self,
        inner: TrainingMonitor,
        trial: TrialLike,
        *,
        offset: int = 0,
        warmup: int = PRUNE_WARMUP_STEPS,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner, self._trial = inner, trial
        self._offset, self._warmup = offset, warmup
        self._deadline, self._clock = deadline, clock
        self.pruned: str | None = None

    def on_step(
        self,
        step: int,
        train_loss: float,
        val_loss: float | None,
        extra: Mapping[str, float] | None = None,
    ) -> Action:
        action = self._inner.on_step(step, train_loss, val_loss, extra or {})
        if val_loss is not None and math.isfinite(val_loss) and 0 <= step < FOLD_STEPS:
            self._trial.report(float(val_loss), self._offset + step)
            if step >= self._warmup and self._trial.should_prune():
                self.pruned = f"median pruner at step {step}: val loss {val_loss:.4f}"
        if self._deadline is not None and self._clock() >= self._deadline:
            self.pruned = "time budget used up"
        if self.pruned is not None and action is Action.CONTINUE:
            return Action.STOP
        return action

    @property
    def warnings(self) -> Sequence[MonitorWarning]:
        return self._inner.warnings


def tuning_datasets(
    data: Dataset, *, folds: int, val_fraction: float, test_fraction: float
) -> list[Dataset]:
    """The walk-forward folds of ``data`` (the pipeline's split and embargo), cut for tuning.

    Each fold keeps its train and validation rows; its data stops after the embargo
    gap that follows validation, and those gap rows stand in as the never-scored
    ``test`` part a ``Dataset`` must have. The last fold's data thus ends at the
    pipeline's first test row.
    """
    embargo = data.split.embargo
    if embargo < MIN_EVAL_ROWS:
        raise InvalidInputError(
            f"tuning needs an embargo of >= {MIN_EVAL_ROWS} rows, got {embargo}"
        )
    splits = walk_forward_splits(
        len(data.features),
        folds=folds,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        embargo=embargo,
    )
    out = []
    for s in splits:
        stop = s.val.stop + embargo
        split = Split(train=s.train, val=s.val, test=slice(s.val.stop, stop), embargo=embargo)
        out.append(Dataset(data.features[:stop], data.labels[:stop], split))
    return out


@dataclass(frozen=True, slots=True)
class TuningResult:
    """What a ``tune`` call did. ``params``/``value``: the study's best trial (its searched
    keywords only; the operator's ``base`` ones are not repeated), None if no trial of the
    study ever completed. ``completed``/``pruned``/``failed``: this call's trials;
    ``study_trials``: every finished trial of the study, earlier runs' too."""

    symbol: str
    trainer: str
    study: str
    objective: str
    params: Mapping[str, Any] | None
    value: float | None
    best_trial: int | None
    base: Mapping[str, Any]
    completed: int
    pruned: int
    failed: int
    study_trials: int
    folds: int
    n_bars: int
    seconds: float
    errors: tuple[str, ...] = ()


def tune(
    symbol: str,
    bars: Bars,
    config: TrainConfig,
    trainer: str,
    *,
    trials: int,
    timeout: float,
    storage: Path | None = None,
    seed: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TuningResult:
    """Search ``trainer``'s hyperparameters for ``symbol`` within ``trials`` and ``timeout`` s.

    ``config`` gives the fractions, folds (``walk_forward_folds``, at least 1), monitor
    rules, fit seed and the operator's ``trainer_params``, which are the base every trial
    starts from: keys set there are pinned, never searched. ``storage``: the SQLite file
    the study lives in (created, or continued: same symbol, trainer, space and base give
    the same study name); None keeps the study in memory. ``seed`` seeds the sampler
    (default ``config.seed``). Raises ``InvalidSymbolError``, ``UnknownTrainerError``,
    ``InvalidInputError`` (nothing to tune, bad counts), ``InsufficientDataError``, and
    ``MissingExtraError`` without optuna.
    """
    started = clock()
    deadline = started + timeout
    validate_symbol(symbol)
    space = search_space(trainer)
    if trials < 1 or not timeout > 0:
        raise InvalidInputError(f"trials must be >= 1 and timeout > 0, got {trials}, {timeout}")
    lib = require_optuna()
    lib.logging.set_verbosity(lib.logging.WARNING)
    base = tuning_base(config, trainer)
    searched = {k: d for k, d in space.items() if k not in base}
    if not searched:
        raise InvalidInputError(f"{trainer}: trainer_params pins every tunable parameter")
    folds = max(config.walk_forward_folds, 1)
    matrix = training_matrix(bars)
    data = matrix.dataset(val_fraction=config.val_fraction, test_fraction=config.test_fraction)
    datasets = tuning_datasets(
        data, folds=folds, val_fraction=config.val_fraction, test_fraction=config.test_fraction
    )
    name = study_name(symbol, trainer, searched, base, config)
    persisted = _persisted(lib, storage, name)
    study = lib.create_study(
        direction="minimize",
        sampler=lib.samplers.TPESampler(seed=config.seed if seed is None else seed),
        pruner=lib.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS),
    )
    if persisted is not None:
        study.add_trials([t for t in persisted.trials if t.state.is_finished()])
    before = len(study.trials)

    def objective(trial: optuna.Trial) -> float:
        params = {**base, **_suggest(trial, searched)}
        try:
            return _mean_val_loss(
                trainer, params, datasets, config, trial=trial, deadline=deadline, clock=clock
            )
        except lib.TrialPruned:
            raise
        except Exception as exc:  # a bad combination fails its trial, never the search
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise

    def keep(_: optuna.Study, finished: optuna.trial.FrozenTrial) -> None:
        if finished.user_attrs.get("pruned") == "time budget used up":
            study.stop()
        if persisted is not None:
            persisted.add_trial(finished)

    remaining = deadline - clock()
    if remaining > 0:
        study.optimize(
            objective, n_trials=trials, timeout=remaining, catch=(Exception,), callbacks=[keep]
        )
    new = study.trials[before:]
    states = [t.state for t in new]
    state = lib.trial.TrialState
    done = [t for t in study.trials if t.state == state.COMPLETE]
    best = min(done, key=lambda t: t.value, default=None)
    return TuningResult(
        symbol=symbol,
        trainer=trainer,
        study=name,
        objective=OBJECTIVE,
        params=json_safe(dict(best.params)) if best is not None else None,
        value=float(best.value) if best is not None else None,
        best_trial=best.number if best is not None else None,
        base=json_safe(base),
        completed=states.count(state.COMPLETE),
        pruned=states.count(state.PRUNED),
        failed=states.count(state.FAIL),
        study_trials=len(study.trials),
        folds=len(datasets),
        n_bars=len(bars),
        seconds=clock() - started,
        errors=tuple(str(t.user_attrs["error"]) for t in new if "error" in t.user_attrs),
    )


def tuning_base(config: TrainConfig, trainer: str) -> dict[str, Any]:
    """The keywords ``config`` itself gives ``trainer`` (the operator's, and ``augment``):
    what tuning starts from and never searches, and what tuned params are valid on top of."""
    base: dict[str, Any] = json_safe(dict(config.trainer_params.get(trainer, {})))
    if config.augment:
        base["augment"] = True
    return base


def study_name(
    symbol: str,
    trainer: str,
    searched: SearchSpace,
    base: Mapping[str, Any],
    config: TrainConfig,
) -> str:
    """``<symbol>.<trainer>.<hash>``: the hash covers what makes trial values comparable
    (space, base params, fractions, folds, monitor rules), so a changed search problem
    starts a new study instead of mixing incomparable trials into the old one."""
    doc = {
        "objective": OBJECTIVE,
        "space": describe(searched),
        "base": json_safe(dict(base)),
        "val_fraction": config.val_fraction,
        "test_fraction": config.test_fraction,
        "folds": max(config.walk_forward_folds, 1),
        "monitor": config.to_dict()["monitor"],
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:10]
    return f"{symbol}.{trainer}.{digest}"


def _persisted(optuna: Any, storage: Path | None, name: str) -> Any:
    """The SQLite study ``name`` (created when new), or None without storage."""
    if storage is None:
        return None
    storage.parent.mkdir(parents=True, exist_ok=True)
    rdb = optuna.storages.RDBStorage(
        f"sqlite:///{storage}",
        # A daemon's scheduled run and `ctd tune` may append to the same file.
        engine_kwargs={"connect_args": {"timeout": 60}},
    )
    return optuna.create_study(
        storage=rdb, study_name=name, direction="minimize", load_if_exists=True
    )


def _suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, dim in space.items():
        if isinstance(dim, IntRange):
            out[name] = trial.suggest_int(name, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, FloatRange):
            out[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, Choice):
            out[name] = trial.suggest_categorical(name, dim.options)
    return out


def _mean_val_loss(
    trainer: str,
    params: Mapping[str, Any],
    datasets: Sequence[Dataset],
    config: TrainConfig,
    *,
    trial: optuna.Trial,
    deadline: float,
    clock: Callable[[], float],
) -> float:
    """Fit every fold under a ``TrialMonitor``; the mean validation log loss of the folds."""
    import optuna  # noqa: PLC0415 - present: tune() checked

    losses = []
    for index, data in enumerate(datasets):
        if clock() >= deadline:
            trial.set_user_attr("pruned", "time budget used up")
            raise optuna.TrialPruned("time budget used up")
        monitor = TrialMonitor(
            build_monitor(config.monitor),
            trial,
            offset=index * FOLD_STEPS,
            deadline=deadline,
            clock=clock,
        )
        seed_everything(config.seed)
        model = make_trainer(trainer, **params).fit(data, monitor, config.seed)
        if monitor.pruned is not None:
            trial.set_user_attr("pruned", monitor.pruned)
            raise optuna.TrialPruned(monitor.pruned)
        proba = model.predict_proba(data.inputs("val", model.window))
        loss = classification_metrics(data.y("val"), proba)["log_loss"]
        losses.append(math.inf if loss is None else float(loss))
    return float(np.mean(losses))
