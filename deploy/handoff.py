"""A shadow trial that survives its daemon: checkpoints in the registry, restored by the next owner.

The owner of a symbol saves, every few seconds, what its prediction log keeps
for the running trial (the ``TrialState`` and the predictions that still wait for
their outcome) into the symbol's slots.json. A daemon that
takes the symbol over writes the checkpoint into its own prediction log
before it scores the symbol, unless its log already holds a later state. The
live scorer then treats the bars stored after the checkpoint's last bar as not
yet scored and scores them with the next batch (``LiveScorer`` catch-up, at
most ``catch_up_bars``), so the trial loses no evidence as long as the rebuilt
history holds those bars: the models and the bars are the same, so are the
outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deploy.trial import SLOTS, LogWrite, Prediction, PredictionLog, TrialState


@dataclass(frozen=True, slots=True)
class TrialCheckpoint:
    """The saved part of one symbol's prediction log: its trial state and pending predictions."""

    state: TrialState
    pending: tuple[Prediction, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.to_dict(),
            "pending": [
                {"bar_ts": p.bar_ts, "slot": p.slot, "version": p.version, "value": p.value}
                for p in self.pending
            ],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TrialCheckpoint:
        """Raise ValueError naming the field for a malformed checkpoint."""
        state = doc.get("state")
        if not isinstance(state, Mapping):
            raise ValueError(f"trial checkpoint state must be an object, got {state!r}")
        pending = []
        for item in doc.get("pending", []):
            if not isinstance(item, Mapping) or item.get("slot") not in SLOTS:
                raise ValueError(f"trial checkpoint pending prediction is malformed: {item!r}")
            # "proba_up": a checkpoint written before return targets.
            value = item["value"] if "value" in item else item.get("proba_up")
            if value is None:
                raise ValueError(f"trial checkpoint pending prediction has no value: {item!r}")
            pending.append(
                Prediction(int(item["bar_ts"]), item["slot"], str(item["version"]), float(value))
            )
        return cls(TrialState.from_dict(state), tuple(pending))


def take_checkpoint(log: PredictionLog, symbol: str, horizon: int = 1) -> TrialCheckpoint | None:
    """The symbol's running trial as its log holds it now; None without a trial.

    Pending: the unresolved predictions of the newest ``horizon`` bars that have any (a
    prediction resolves ``horizon`` bars after its own; older ones never will).
    """
    state = log.load_state(symbol)
    if state is None or state.test is None or state.last_ts is None:
        return None
    waiting = log.unresolved(symbol)
    newest = sorted({p.bar_ts for p in waiting})[-horizon:]
    return TrialCheckpoint(state, tuple(p for p in waiting if p.bar_ts in newest))


def restore_checkpoint(log: PredictionLog, symbol: str, checkpoint: TrialCheckpoint) -> bool:
    """Write ``checkpoint`` into ``log`` unless the log's own state is as new or newer;
    return whether it was written. The caller drops the symbol's in-memory live state."""
    local = log.load_state(symbol)
    saved_ts = checkpoint.state.last_ts
    if saved_ts is None or (local is not None and (local.last_ts or 0) >= saved_ts):
        return False
    log.commit([LogWrite(symbol, checkpoint.pending, (), checkpoint.state)])
    return True
