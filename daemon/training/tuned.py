"""Each symbol's best tuned hyperparameters: stored once per tuning run, used by every retrain.

``<data_dir>/tuning/<SYMBOL>.json`` holds one ``TunedParams`` per trainer,
replaced atomically (under a lock: `ctd tune` and the daemon's scheduled
tuning may finish at the same moment). ``TunedStore.apply`` merges them into
the symbol's ``TrainConfig`` (``daemon.training.jobs.job_config``) and records
where they came from in ``TrainConfig.tuned``, hence in every run's
``metadata.json`` (``config.tuned``).

Precedence: the operator's ``CTD_TRAINER_PARAMS`` are the base a study tunes
on top of, and their keys are never searched (``trainers.tuning``), so the two
never disagree on a key. Tuned params apply only while that base is unchanged:
after an operator changes a trainer's params (another preset, a pinned value)
they were tuned for a different model, so they are ignored, with a log line,
until the trainer is tuned again.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from daemon.logs import get_logger
from daemon.paths import DataPaths
from deploy.durable import write_atomic
from trainers.config import TrainConfig
from trainers.tuning import TuningResult, tuning_base

_log = get_logger(component="tuning")


class TunedParams(BaseModel):
    """One trainer's tuned keywords for a symbol and where they came from.

    ``params``: the searched keywords of the study's best trial; ``base``: the
    operator's keywords they were tuned on; ``value``: that trial's objective
    (mean walk-forward validation log loss); ``trials_completed`` /
    ``trials_pruned``: of the run that stored them; ``study_trials``: every
    finished trial of the study so far.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    trainer: str
    params: dict[str, Any]
    base: dict[str, Any] = {}
    value: float
    objective: str
    trials_completed: int
    trials_pruned: int
    study_trials: int
    study: str
    finished_at: str

    @classmethod
    def from_result(cls, result: TuningResult) -> TunedParams | None:
        """The record of a finished run; None when no trial of its study ever completed."""
        if result.params is None or result.value is None:
            return None
        return cls(
            trainer=result.trainer,
            params=dict(result.params),
            base=dict(result.base),
            value=result.value,
            objective=result.objective,
            trials_completed=result.completed,
            trials_pruned=result.pruned,
            study_trials=result.study_trials,
            study=result.study,
            finished_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )

    def provenance(self) -> dict[str, Any]:
        """What a training run records of them (``TrainConfig.tuned``)."""
        return {
            "study": self.study,
            "objective": self.objective,
            "value": self.value,
            "finished_at": self.finished_at,
            "params": self.params,
        }


class TunedStore:
    """The tuned params of every symbol under ``paths.tuning``."""

    def __init__(self, paths: DataPaths) -> None:
        self._paths = paths

    def load(self, symbol: str) -> dict[str, TunedParams]:
        """Trainer -> record; empty when the symbol was never tuned. An unreadable file is
        logged and read as empty: a damaged cache of search results must not stop retrains."""
        path = self._paths.tuned(symbol)
        try:
            doc = json.loads(path.read_bytes())
            return {t: TunedParams.model_validate(r) for t, r in doc["trainers"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            _log.error("tuned_params_unreadable", symbol=symbol, path=str(path), error=str(exc))
            return {}

    def save(self, symbol: str, record: TunedParams) -> Path:
        """Replace ``record.trainer``'s entry of ``symbol`` atomically; the file's path."""
        path = self._paths.tuned(symbol)
        with self._locked():
            records = self.load(symbol)
            records[record.trainer] = record
            doc = {
                "symbol": symbol,
                "trainers": {t: r.model_dump(mode="json") for t, r in sorted(records.items())},
            }
            write_atomic(path, json.dumps(doc, indent=2, allow_nan=False).encode() + b"\n")
        return path

    def apply(self, config: TrainConfig, symbol: str) -> TrainConfig:
        """``config`` with ``symbol``'s tuned params merged into the trainers it trains whose
        operator params are the ones they were tuned on, recorded in ``tuned``."""
        params = {t: dict(p) for t, p in config.trainer_params.items()}
        tuned: dict[str, Any] = {}
        for trainer, record in sorted(self.load(symbol).items()):
            if trainer not in config.trainers:
                continue
            base = tuning_base(config, trainer)
            if base != record.base:
                _log.warning(
                    "tuned_params_stale",
                    symbol=symbol,
                    trainer=trainer,
                    tuned_on=record.base,
                    now=base,
                )
                continue
            params[trainer] = {**record.params, **params.get(trainer, {})}
            tuned[trainer] = record.provenance()
        if not tuned:
            return config
        return replace(config, trainer_params=params, tuned=tuned)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self._paths.tuning / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
