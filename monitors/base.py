"""The training-time callback protocol and its simplest monitors.

A trainer reports every epoch / boosting round to a ``TrainingMonitor`` and
obeys the returned ``Action``. Monitors are pure logic and import no other ctd
package, so trainers (and the deploy side) depend on this module, never the
reverse. The rules live in ``monitors.rules``; their thresholds
(``MonitorConfig``) and ``default_monitor`` in ``monitors.training``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


class Action(enum.Enum):
    """What a trainer must do after a step. Ordered weakest to strongest."""

    CONTINUE = 0
    STOP = 1  # end training now and keep the best weights seen so far
    ABORT = 2  # the run is invalid: the trainer raises TrainingAborted


Extra = Mapping[str, float]
"""A step's further measures by name (``train_accuracy``, ``val_accuracy``, ``grad_norm``, ...)."""

Response = Literal["warn", "stop", "abort"]
"""What a monitor does when its rule fires: always a warning, then continue, stop or abort."""

_RESPONSES: Final[Mapping[str, Action]] = {
    "warn": Action.CONTINUE,
    "stop": Action.STOP,
    "abort": Action.ABORT,
}


def response_action(response: str) -> Action:
    """The Action for a configured response; ValueError names the bad value and the valid ones."""
    try:
        return _RESPONSES[response]
    except KeyError:
        valid = ", ".join(_RESPONSES)
        raise ValueError(f"response must be one of {valid}, got {response!r}") from None


@dataclass(frozen=True, slots=True)
class MonitorWarning:
    """One early warning raised during training; becomes a metric, a log line, JSON."""

    kind: str
    step: int
    message: str
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        finite = self.value is not None and math.isfinite(self.value)
        return {
            "kind": self.kind,
            "step": self.step,
            "message": self.message,
            # JSON has no NaN/inf: a non-finite value is carried by the message instead.
            "value": self.value if finite else None,
        }


class TrainingMonitor(Protocol):
    """Sees every training step and says whether to go on.

    ``on_step`` is called once per epoch / boosting round, in order, with the
    step's training loss and (when the trainer has one) validation loss. It
    never raises for bad numbers: it returns ``Action.ABORT`` and records a
    warning instead. ``warnings`` lists every warning raised so far, oldest
    first. A monitor instance watches exactly one training run.
    """

    def on_step(
        self,
        step: int,
        train_loss: float,
        val_loss: float | None,
        extra: Mapping[str, float] = ...,
    ) -> Action: ...

    @property
    def warnings(self) -> Sequence[MonitorWarning]: ...


@runtime_checkable
class HasPredictProba(Protocol):
    """What gates and live scoring need of a model: P(up) for a batch of feature rows."""

    def predict_proba(self, x: npt.NDArray[Any], /) -> npt.NDArray[np.float64]: ...


class CompositeMonitor:
    """Several monitors as one: every monitor sees every step; the strongest action wins."""

    def __init__(self, monitors: Sequence[TrainingMonitor]) -> None:
        self._monitors = tuple(monitors)

    def on_step(
        self,
        step: int,
        train_loss: float,
        val_loss: float | None,
        extra: Mapping[str, float] | None = None,
    ) -> Action:
        extra = extra if extra is not None else {}
        # No short-circuit: each monitor keeps its own history complete.
        actions = [m.on_step(step, train_loss, val_loss, extra) for m in self._monitors]
        return max(actions, key=lambda a: a.value, default=Action.CONTINUE)

    @property
    def warnings(self) -> Sequence[MonitorWarning]:
        return tuple(w for m in self._monitors for w in m.warnings)


class NullMonitor(CompositeMonitor):
    """Watches nothing: always continue, never warn."""

    def __init__(self) -> None:
        super().__init__(())
