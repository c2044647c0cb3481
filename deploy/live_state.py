"""Per-symbol state of live scoring: the bar buffer, pending predictions, the trial, and one
batch's pass over its new bars (``Walk``), kept apart from the scorer that drives them.

``LiveUpdate`` and ``LiveStatus`` are what the scorer reports to its caller.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from deploy.errors import RegistryError
from deploy.fdr import FdrLevel, PromotionPolicy
from deploy.sequential import Decision, PairedSequentialTest
from deploy.trial import LogWrite, Prediction, Resolution, Slot, TrialDecision, TrialState
from monitors.watch import LiveObservation
from trainers.data import Bars, FloatArray

PROBA_CLIP: Final = 1e-6
"""Probabilities are clipped to [PROBA_CLIP, 1 - PROBA_CLIP] before taking log losses."""

Row = tuple[int, float, float, float, float, float]


@dataclass
class Trial:
    champion: str
    shadow: str
    test: PairedSequentialTest
    counts_after: int | None
    """Only bars after this ts count: the newest bar either model was trained on."""
    first_bar_ts: int | None = None
    last_bar_ts: int | None = None
    announced: bool = False
    """Whether this process has returned the trial's decision (once per process)."""
    level: FdrLevel | None = None
    """Under e-LOND: the test index and the promote level of the last bar (deploy.fdr)."""

    def snapshot(self, symbol: str) -> TrialDecision:
        """The trial's decision so far (CONTINUE while undecided), with its evidence."""
        test = self.test
        return TrialDecision(
            symbol,
            test.decision,
            self.champion,
            self.shadow,
            test.evidence,
            test.config,
            self.first_bar_ts,
            self.last_bar_ts,
            self.level,
        )


@dataclass
class SymbolState:
    buffer: Bars
    last_ts: int | None
    champion: str | None = None
    shadow: str | None = None
    pending: dict[Slot, Prediction] = field(default_factory=dict)
    trial: Trial | None = None
    catch_up: list[Row] = field(default_factory=list)
    slots_read_at: float = 0.0

    def version(self, slot: Slot) -> str | None:
        return self.champion if slot == "champion" else self.shadow

    def disagrees(self, old: list[Row]) -> bool:
        """True if a re-delivered bar inside the buffer's span is missing from it or differs
        (a late or corrected bar): training will see it, so live features must too."""
        buf = self.buffer
        if not len(buf):
            return False
        for row in old:
            ts = row[0]
            if ts < buf.ts[0]:
                continue
            i = int(np.searchsorted(buf.ts, ts))
            if i == len(buf) or int(buf.ts[i]) != ts or bar_row(buf, i) != row:
                return True
        return False


@dataclass(frozen=True, slots=True)
class LiveUpdate:
    """What one batch did for one symbol. ``errors``: one line each, for the log: models
    that cannot be loaded (their slot goes unscored until the version changes) or a
    failure of the whole symbol's batch (its state is reloaded from the log next time)."""

    symbol: str
    scored: int
    ignored: int
    predictions: tuple[Prediction, ...]
    """Logged for the batch's new bars (committed before this update is returned)."""
    resolved: int
    decision: TrialDecision | None = None
    ended: TrialDecision | None = None
    errors: tuple[str, ...] = ()
    observations: tuple[LiveObservation, ...] = ()
    """One per new bar, in ts order: its feature row and the champion's resolved outcome,
    for the live monitors (None fields when the symbol has no champion)."""
    champion: str | None = None


@dataclass(frozen=True, slots=True)
class LiveStatus:
    """Gauge values of one symbol: rolling live accuracy per slot, the trial's statistic."""

    symbol: str
    champion_version: str | None
    shadow_version: str | None
    champion_accuracy: float | None
    shadow_accuracy: float | None
    trial: TrialDecision | None

    @property
    def statistic(self) -> float | None:
        return None if self.trial is None else self.trial.evidence.statistic

    @property
    def promote_level(self) -> float | None:
        """log10 of the e-value at which the running trial promotes (compare ``statistic``)."""
        return None if self.trial is None else -math.log10(self.trial.promote_alpha)


@dataclass(frozen=True, slots=True)
class Counting:
    """How one batch feeds the trial: at which promote ``level`` (None: ``config.alpha``),
    whether its bars count at all (not before an e-LOND trial has its index), and whether
    the test starts over first (evidence gathered before the trial had an index)."""

    level: FdrLevel | None = None
    counts: bool = True
    restart: bool = False


class Walk:
    """One batch's pass over its new bars, on a copy of the trial (committed on success)."""

    def __init__(self, st: SymbolState, counting: Counting | None = None) -> None:
        counting = counting or Counting(None if st.trial is None else st.trial.level)
        self.trial = st.trial
        self.counts = counting.counts
        self.level = counting.level
        # Its state is scalars only: a shallow copy is a full one.
        self.test = None if st.trial is None else copy.copy(st.trial.test)
        self.first_bar_ts = None if st.trial is None else st.trial.first_bar_ts
        self.last_bar_ts = None if st.trial is None else st.trial.last_bar_ts
        if self.test is not None and counting.restart:
            self.test = PairedSequentialTest(self.test.config)
            self.first_bar_ts = self.last_bar_ts = None
        self.pending = dict(st.pending)
        self.prev_ts, self.prev_close = newest(st.buffer), newest_close(st.buffer)
        self.predictions: list[Prediction] = []
        self.resolutions: list[Resolution] = []
        self.outcomes: list[tuple[str, bool]] = []

    def resolve(self, close: float, champion: str | None) -> bool | None:
        """Label the previous bar's predictions with the move to ``close``; feed the trial.

        Returns whether ``champion``'s prediction was right (None if it made none).
        """
        prev_ts, prev_close = self.prev_ts, self.prev_close
        pending = {s: p for s, p in self.pending.items() if p.bar_ts == prev_ts}
        if not pending or prev_ts is None or prev_close is None:
            return None
        label = int(close > prev_close)
        self.resolutions.append(Resolution(prev_ts, label))
        right: dict[Slot, bool] = {}
        for slot, p in pending.items():
            right[slot] = (p.proba_up >= 0.5) == (label == 1)
            self.outcomes.append((p.version, right[slot]))
        self._feed_trial(pending, right, label, prev_ts)
        champ = pending.get("champion")
        return right["champion"] if champ is not None and champ.version == champion else None

    def _feed_trial(
        self, pending: Mapping[Slot, Prediction], right: Mapping[Slot, bool], label: int, ts: int
    ) -> None:
        trial, test, prev_ts = self.trial, self.test, ts
        if (
            trial is None
            or test is None
            or not self.counts
            or test.decision is not Decision.CONTINUE
            or len(right) < 2
            or (pending["champion"].version, pending["shadow"].version)
            != (trial.champion, trial.shadow)
            or (trial.counts_after is not None and prev_ts <= trial.counts_after)
        ):
            return
        test.update(
            right["champion"],
            right["shadow"],
            log_loss(pending["champion"].proba_up, label),
            log_loss(pending["shadow"].proba_up, label),
            promote_alpha=None if self.level is None else self.level.alpha,
        )
        if self.first_bar_ts is None:
            self.first_bar_ts = prev_ts
        self.last_bar_ts = prev_ts

    def predict(self, ts: int, close: float, scores: Mapping[Slot, tuple[str, float]]) -> None:
        self.pending = {}
        for slot, (version, proba) in scores.items():
            if math.isfinite(proba):
                self.pending[slot] = Prediction(ts, slot, version, proba)
                self.predictions.append(self.pending[slot])
        self.prev_ts, self.prev_close = ts, close


@dataclass(frozen=True, slots=True)
class Plan:
    symbol: str
    st: SymbolState
    ignored: int
    ended: TrialDecision | None
    scored: int = 0
    combined: Bars | None = None
    walk: Walk | None = None
    write: LogWrite | None = None
    observations: tuple[LiveObservation, ...] = ()
    problems: tuple[str, ...] = ()
    """For ``LiveUpdate.errors``: the trial's promote level could not be set or refreshed."""


def clean(p: FloatArray) -> FloatArray:
    """P(up) clipped into [0, 1]; non-finite outputs stay NaN (no prediction is logged)."""
    out: FloatArray = np.where(np.isfinite(p), np.clip(p, 0.0, 1.0), np.nan)
    return out


def log_loss(proba_up: float, label: int) -> float:
    p = min(max(proba_up, PROBA_CLIP), 1.0 - PROBA_CLIP)
    return -math.log(p if label == 1 else 1.0 - p)


def bar_slice(bars: Bars, start: int, stop: int) -> Bars:
    s = slice(start, stop)
    return Bars(bars.ts[s], bars.open[s], bars.high[s], bars.low[s], bars.close[s], bars.volume[s])


def concat(a: Bars, b: Bars) -> Bars:
    return Bars(
        *(
            np.concatenate([getattr(a, name), getattr(b, name)])
            for name in ("ts", "open", "high", "low", "close", "volume")
        )
    )


def bar_row(bars: Bars, i: int) -> Row:
    return (
        int(bars.ts[i]),
        float(bars.open[i]),
        float(bars.high[i]),
        float(bars.low[i]),
        float(bars.close[i]),
        float(bars.volume[i]),
    )


def newest(bars: Bars) -> int | None:
    return int(bars.ts[-1]) if len(bars) else None


def newest_close(bars: Bars) -> float | None:
    return float(bars.close[-1]) if len(bars) else None


def restore_symbol(
    stored: Bars, last_ts: int | None, first_new: int | None, capacity: int
) -> SymbolState:
    """A symbol's state from its newest stored bars, as of the last processed bar ``last_ts``
    (None: never processed; then up to the first new bar ``first_new``, or everything).

    Bars stored after the last processed one (e.g. a crash between the store's and the
    log's commits) are kept as ``catch_up`` and scored with the next batch.
    """
    ts = np.asarray(stored.ts, dtype=np.int64)
    if last_ts is not None:
        cut = int(np.searchsorted(ts, last_ts, side="right"))
    elif first_new is not None:
        cut = int(np.searchsorted(ts, first_new, side="left"))
    else:
        cut = len(ts)
    context = bar_slice(stored, 0, cut).tail(capacity)
    catch_up = [bar_row(stored, i) for i in range(cut, len(ts))] if last_ts is not None else []
    if last_ts is None and len(context):
        last_ts = int(context.ts[-1])
    return SymbolState(context, last_ts, catch_up=catch_up)


def restore_trial(
    symbol: str, saved: TrialState | None, champion: str | None, shadow: str | None
) -> tuple[Trial | None, TrialDecision | None]:
    """The saved trial, if it is about the pair in the slots now; else the evidence of the
    undecided trial the slot change ended (or None)."""
    if saved is None or saved.test is None:
        return None, None
    test = PairedSequentialTest.from_dict(saved.test)
    old_champion, old_shadow = saved.champion_version, saved.shadow_version
    if old_champion is None or old_shadow is None:
        return None, None
    first, last, level = saved.first_bar_ts, saved.last_bar_ts, saved.level
    if (old_champion, old_shadow) == (champion, shadow):
        # Not announced yet: a decision restored unapplied is announced again.
        return Trial(old_champion, old_shadow, test, None, first, last, level=level), None
    if test.decision is not Decision.CONTINUE:
        return None, None
    ended = TrialDecision(
        symbol,
        Decision.CONTINUE,
        old_champion,
        old_shadow,
        test.evidence,
        test.config,
        first,
        last,
        level,
    )
    return None, ended


def trial_counting(
    policy: PromotionPolicy, symbol: str, trial: Trial | None
) -> tuple[Counting, str | None]:
    """How a batch feeds ``trial``, and a problem for the update's errors.

    A decided trial keeps the level it decided at. Under e-LOND an undecided one gets the
    level from the fleet's discoveries as last read, its test index claimed first if it has
    none (an OSError or RegistryError then leaves its bars uncounted this batch: skipping
    them is decided before their outcomes are known). A trial restored with evidence but no
    index (saved per symbol, or by an earlier release) starts over: bars seen before the
    index existed cannot count towards an e-LOND promotion.
    """
    if trial is None or trial.test.decision is not Decision.CONTINUE:
        return Counting(None if trial is None else trial.level), None
    alpha = trial.test.config.alpha
    if not policy.indexed or trial.level is not None:
        return Counting(policy.level(trial.level, alpha)), None
    try:
        level = policy.claim(alpha)
    except (OSError, RegistryError) as exc:
        problem = f"{symbol}: no e-LOND test index yet, its trial bars do not count: {exc}"
        return Counting(None, counts=False), problem
    return Counting(level, restart=trial.test.n > 0), None
