"""What a shadow trial leaves behind, and how its decision reaches the registry.

The live scorer (deploy.live) writes predictions, their realised labels and
each symbol's trial state through the ``PredictionLog`` port in one commit per
batch; daemon.predictions implements it on SQLite. A decided trial comes back
as a ``TrialDecision`` with its evidence, which ``apply_decision`` turns into a
registry promote or reject, refusing a decision about a pair that no longer
holds the slots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from deploy.events import RegistryEvent
from deploy.fdr import FdrLevel
from deploy.registry import Registry
from deploy.sequential import Decision, Evidence, PromotionTestConfig
from deploy.trial_test import test_from_dict

Slot = Literal["champion", "shadow"]
SLOTS: Final[tuple[Slot, Slot]] = ("champion", "shadow")


class StaleDecisionError(RuntimeError):
    """A decision about a champion/shadow pair that no longer holds the slots."""

    def __init__(self, decision: TrialDecision, champion: str | None, shadow: str | None) -> None:
        self.decision = decision
        super().__init__(
            f"{decision.symbol}: decision {decision.decision.value} was about champion "
            f"{decision.champion_version} / shadow {decision.shadow_version}, but the slots now "
            f"hold {champion} / {shadow}"
        )


@dataclass(frozen=True, slots=True)
class Prediction:
    """One slot's prediction at the bar ``bar_ts`` about the move to ``horizon`` bars later:
    P(up) of a direction model, the log return of a return model (``trainers.targets``)."""

    bar_ts: int
    slot: Slot
    version: str
    value: float


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the predictions of ``bar_ts`` resolved to (``trainers.targets.realised``): the
    label (1.0 if the close ``horizon`` bars later is higher, else 0.0) or the log return."""

    bar_ts: int
    outcome: float


@dataclass(frozen=True, slots=True)
class TrialState:
    """What the log keeps per symbol so that a restart continues exactly.

    ``last_ts``: newest bar processed. ``test``: ``PairedSequentialTest.to_dict()``
    of the running trial (None without a shadow). ``first_bar_ts`` /
    ``last_bar_ts``: the first and last bar fed to the test. ``level``: under
    e-LOND (``deploy.fdr``), the trial's test index and the promote level of its
    last bar (None per symbol, or before its index is claimed); written only when
    set, so a per-symbol state is what earlier releases wrote.
    """

    last_ts: int | None
    champion_version: str | None
    shadow_version: str | None
    test: Mapping[str, Any] | None = None
    first_bar_ts: int | None = None
    last_bar_ts: int | None = None
    level: FdrLevel | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "last_ts": self.last_ts,
            "champion_version": self.champion_version,
            "shadow_version": self.shadow_version,
            "test": None if self.test is None else dict(self.test),
            "first_bar_ts": self.first_bar_ts,
            "last_bar_ts": self.last_bar_ts,
        }
        if self.level is not None:
            doc["level"] = self.level.to_dict()
        return doc

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialState:
        """Raise ValueError naming the field for a malformed state."""
        for key in ("last_ts", "first_bar_ts", "last_bar_ts"):
            value = d.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"trial state {key} must be an integer or null, got {value!r}")
        for key in ("champion_version", "shadow_version"):
            if d.get(key) is not None and not isinstance(d.get(key), str):
                raise ValueError(f"trial state {key} must be a string or null, got {d.get(key)!r}")
        test = d.get("test")
        if test is not None and not isinstance(test, Mapping):
            raise ValueError(f"trial state test must be an object or null, got {test!r}")
        level = d.get("level")
        if level is not None and not isinstance(level, Mapping):
            raise ValueError(f"trial state level must be an object or null, got {level!r}")
        return cls(
            d.get("last_ts"),
            d.get("champion_version"),
            d.get("shadow_version"),
            test,
            d.get("first_bar_ts"),
            d.get("last_bar_ts"),
            None if level is None else FdrLevel.from_dict(level),
        )


@dataclass(frozen=True, slots=True)
class LogWrite:
    """Everything one batch changes for one symbol; written together or not at all."""

    symbol: str
    predictions: Sequence[Prediction]
    resolutions: Sequence[Resolution]
    state: TrialState


class PredictionLog(Protocol):
    """Durable predictions and trial state of every symbol (daemon.predictions implements it).

    Every method raises the implementation's storage error on failure; a failed
    ``commit`` writes nothing.
    """

    def load_state(self, symbol: str) -> TrialState | None:
        """The state of the last successful commit for ``symbol``; None if never committed."""
        ...

    def unresolved(self, symbol: str, before_ts: int | None = None) -> list[Prediction]:
        """Predictions without a label (bar_ts < before_ts if given), oldest first."""
        ...

    def recent_outcomes(self, symbol: str, version: str, limit: int) -> list[tuple[float, float]]:
        """(value, outcome) of the newest ``limit`` resolved predictions of a version, oldest
        first."""
        ...

    def commit(self, writes: Sequence[LogWrite]) -> None:
        """Atomically, for every write: insert its predictions (an existing (symbol, bar_ts,
        slot) is kept), then label the unlabelled predictions of each resolution's bar, then
        store its state."""
        ...


# --- decisions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrialDecision:
    """A trial's outcome (PROMOTE / REJECT), or a snapshot of one (CONTINUE) when it is
    ended early by a slot change or asked for by the caller. ``level``: the e-LOND level
    of its last bar (None: PROMOTE tested at ``config.alpha``, per symbol)."""

    symbol: str
    decision: Decision
    champion_version: str
    shadow_version: str
    evidence: Evidence
    config: PromotionTestConfig
    first_bar_ts: int | None = None
    last_bar_ts: int | None = None
    level: FdrLevel | None = None

    @property
    def promote_alpha(self) -> float:
        """The level PROMOTE was (or is being) tested at: alpha_t under e-LOND, else alpha."""
        return self.config.alpha if self.level is None else self.level.alpha

    @property
    def reason(self) -> str:
        ev, cfg, lv = self.evidence, self.config, self.level
        if ev.loss == SQUARED_ERROR:
            acc = f"live truncated MSE shadow {_fmt(ev.shadow_loss, '.3g')} vs champion "
            acc += f"{_fmt(ev.champion_loss, '.3g')}, hit rate shadow "
            acc += f"{_fmt(ev.shadow_accuracy)} vs {_fmt(ev.champion_accuracy)} over {ev.n} bars"
        else:
            acc = f"live accuracy shadow {_fmt(ev.shadow_accuracy)} vs champion "
            acc += f"{_fmt(ev.champion_accuracy)} over {ev.n} bars"
        if self.decision is Decision.PROMOTE and lv is not None:
            return (
                f"shadow better: e-value {ev.e_value_better:.3g} >= 1/alpha_t = "
                f"{1.0 / lv.alpha:.3g} (e-LOND test {lv.index}, {lv.discoveries} fleet "
                f"discoveries); {acc}"
            )
        if self.decision is Decision.PROMOTE:
            return f"shadow better: e-value {ev.e_value_better:.3g} >= 1/alpha; {acc}"
        if self.decision is Decision.REJECT:
            if ev.e_value_worse >= 1.0 / cfg.alpha:
                return f"shadow worse: e-value {ev.e_value_worse:.3g} >= 1/alpha; {acc}"
            return f"shadow not shown better within max_samples {cfg.max_samples}; {acc}"
        return f"trial ended undecided; {acc}"

    def evidence_dict(self) -> dict[str, Any]:
        """The ledger's evidence: counts, live accuracies, e-values, statistic, settings, and
        the promotion policy with its level (e-LOND: test index, gamma_t, discoveries D,
        alpha_t)."""
        cfg, lv = self.config, self.level
        fdr: dict[str, Any] = {"promotion_policy": "per_symbol", "promote_alpha": cfg.alpha}
        if lv is not None:
            fdr = {
                "promotion_policy": "e_lond",
                "promote_alpha": lv.alpha,
                "fdr_index": lv.index,
                "fdr_gamma": lv.gamma,
                "fdr_discoveries": lv.discoveries,
            }
        return {
            **self.evidence.to_dict(),
            "decision": self.decision.value,
            "test": _TEST_NAMES.get(self.evidence.loss, _TEST_NAMES["log_loss"]),
            # 1/e at a stopping time is a valid p-value (Markov on the stopped e-process).
            "p_value": 1.0 / max(1.0, self.evidence.e_value_better),
            "alpha": cfg.alpha,
            "min_samples": cfg.min_samples,
            "max_samples": cfg.max_samples,
            "min_effect": cfg.min_effect,
            "champion_version": self.champion_version,
            "shadow_version": self.shadow_version,
            "first_bar_ts": self.first_bar_ts,
            "last_bar_ts": self.last_bar_ts,
            **fdr,
        }


SQUARED_ERROR: Final = "squared_error"

_TEST_NAMES: Final = {
    "log_loss": "paired betting e-process on accuracy (deploy.sequential)",
    SQUARED_ERROR: "paired betting e-process on truncated squared-error differentials "
    "(deploy.sequential_loss)",
}
"""The ledger's name of the test, by what the evidence's loss fields measure."""


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def apply_decision(
    registry: Registry, decision: TrialDecision, *, actor: str = "daemon", reason: str = ""
) -> RegistryEvent:
    """Promote or reject the shadow in the registry, with the trial's evidence in the ledger.

    Raises ValueError for a CONTINUE snapshot and StaleDecisionError if the slots
    no longer hold the decision's pair (an operator or another decision got there
    first); registry errors pass through.
    """
    if decision.decision is Decision.CONTINUE:
        raise ValueError(f"{decision.symbol}: a CONTINUE snapshot is not a decision to apply")
    slots = registry.slots(decision.symbol)
    if (slots.champion, slots.shadow) != (decision.champion_version, decision.shadow_version):
        raise StaleDecisionError(decision, slots.champion, slots.shadow)
    action = registry.promote if decision.decision is Decision.PROMOTE else registry.reject
    return action(
        decision.symbol,
        evidence=decision.evidence_dict(),
        actor=actor,
        reason=reason or decision.reason,
    )


def saved_trial(log: PredictionLog, registry: Registry, symbol: str) -> TrialDecision | None:
    """The running trial of ``symbol`` as the prediction log last saved it: a snapshot of
    its evidence, or None when no trial is saved for the pair that holds the slots now.

    For the tools that act without the daemon's memory (an operator's promote,
    ``ctd train`` replacing a shadow, reports): at most the bars since the last
    commit are missing from it.
    """
    state = log.load_state(symbol)
    slots = registry.slots(symbol)
    if state is None or state.test is None or slots.champion is None or slots.shadow is None:
        return None
    if (state.champion_version, state.shadow_version) != (slots.champion, slots.shadow):
        return None
    test = test_from_dict(state.test)
    return TrialDecision(
        symbol,
        test.decision,
        slots.champion,
        slots.shadow,
        test.evidence,
        test.config,
        state.first_bar_ts,
        state.last_bar_ts,
        state.level,
    )
