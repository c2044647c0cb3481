"""What a training run is told: candidates, seed, splits, gates and training-monitor thresholds.

The whole config is recorded with every model (``metadata.json`` ``config``) and
hashed (``config_sha256``), so two runs with the same data and config are
comparable, and a changed threshold shows up as a changed hash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from monitors.gates import GateConfig
from monitors.training import MonitorConfig
from trainers.errors import InvalidInputError
from trainers.targets import DIRECTION, TARGETS, Target

ENSEMBLE: Final = "ensemble"
"""The candidate combining a run's passing candidates (``trainers.ensemble``). Named in
``trainers`` like a trainer, but not in ``trainers.table.TRAINERS``: it fits on the other
candidates' predictions, not on a ``Dataset``."""


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """What to train and how to judge it.

    ``trainers``: candidate names (``trainers.table.TRAINERS``), each trained
    beside the naive baseline, and optionally ``ensemble`` (``ENSEMBLE``).
    ``trainer_params`` maps a trainer name to its keywords, e.g.
    ``{"tcn": {"preset": "deep"}}``. ``walk_forward_folds``: 0
    disables walk-forward evaluation, else at least 2 folds. ``augment``
    passes ``augment=True`` to every candidate (small-data augmentation of
    the training split). ``monitor``: the training-time rules every candidate
    runs under. ``tuned``: where tuned ``trainer_params`` came from, per trainer
    (study, objective value, finish time, the tuned keywords); set by the daemon
    (``daemon.training.tuned``), empty when nothing was tuned. ``target`` and
    ``horizon_bars``: what a model predicts, the direction or the log return of the
    next ``horizon_bars`` bars (``trainers.targets``); the splits' embargo grows with
    the horizon.
    """

    trainers: tuple[str, ...] = ("xgboost", "tcn", "lstm")
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    gates: GateConfig = field(default_factory=GateConfig)
    trainer_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    walk_forward_folds: int = 3
    augment: bool = False
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    tuned: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    target: Target = DIRECTION
    horizon_bars: int = 1

    def __post_init__(self) -> None:
        folds = self.walk_forward_folds
        if not (folds == 0 or folds >= 2):
            raise InvalidInputError(f"walk_forward_folds must be 0 (off) or >= 2, got {folds}")
        if self.target not in TARGETS:
            raise InvalidInputError(
                f"target must be one of {', '.join(TARGETS)}, got {self.target!r}"
            )
        h = self.horizon_bars
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise InvalidInputError(f"horizon_bars must be an integer >= 1, got {h!r}")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready; the input of the config hash in metadata. ``tuned``, ``target`` and
        ``horizon_bars`` only when not the defaults, so a config that leaves them keeps the
        hash it always had."""
        out: dict[str, object] = {
            "trainers": list(self.trainers),
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "gates": json_safe(asdict(self.gates)),
            "trainer_params": json_safe({k: dict(v) for k, v in self.trainer_params.items()}),
            "walk_forward_folds": self.walk_forward_folds,
            "augment": self.augment,
            "monitor": json_safe(asdict(self.monitor)),
        }
        if self.tuned:
            out["tuned"] = json_safe({k: dict(v) for k, v in self.tuned.items()})
        if self.target != DIRECTION:
            out["target"] = self.target
        if self.horizon_bars != 1:
            out["horizon_bars"] = self.horizon_bars
        return out


def json_safe(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, bool | int | float):
        value = value.item()  # numpy scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
