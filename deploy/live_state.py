"""Per-symbol state of live scoring: the bar buffer, pending predictions, the trial, and one
batch's pass over its new bars (``Walk``), kept apart from the scorer that drives them.

``LiveUpdate`` and ``LiveStatus`` are what the scorer reports to its caller.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from deploy.errors import RegistryError
from deploy.fdr import FdrLevel, PromotionPolicy
from deploy.sequential import Decision
from deploy.trial import LogWrite, Prediction, Resolution, Slot, TrialDecision, TrialState
from deploy.trial_test import TrialTest, test_from_dict
from monitors.watch import LiveObservation
from trainers.data import Bars
from trainers.features_stream import FeatureStream
from trainers.targets import DIRECTION, Target, hit, realised

Row = tuple[int, float, float, float, float, float]


@dataclass
class Trial:
    champion: str
    shadow: str
    test: TrialTest
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
    pending: dict[int, dict[Slot, Prediction]] = field(default_factory=dict)
    """Predictions waiting for their outcome, by the ts of the bar they were made at."""
    trial: Trial | None = None
    catch_up: list[Row] = field(default_factory=list)
    slots_read_at: float = 0.0
    features: FeatureStream | None = None
    """Incremental features of the buffer's bars (None: to be seeded from the buffer)."""

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
    """One batch's pass over its new bars, on a copy of the trial (committed on success).

    A prediction made at a bar resolves ``horizon`` bars later: ``recent`` holds the
    closes of the newest ``horizon`` bars, ``pending`` the predictions still waiting.
    """

    def __init__(
        self,
        st: SymbolState,
        counting: Counting | None = None,
        *,
        target: Target = DIRECTION,
        horizon: int = 1,
    ) -> None:
        counting = counting or Counting(None if st.trial is None else st.trial.level)
        self.target = target
        self.trial = st.trial
        self.counts = counting.counts
        self.level = counting.level
        # The tests hold scalars and immutable arrays only: a shallow copy is a full one.
        self.test = None if st.trial is None else copy.copy(st.trial.test)
        self.first_bar_ts = None if st.trial is None else st.trial.first_bar_ts
        self.last_bar_ts = None if st.trial is None else st.trial.last_bar_ts
        if self.test is not None and counting.restart:
            self.test = self.test.restarted()
            self.first_bar_ts = self.last_bar_ts = None
        self.pending = {ts: dict(by_slot) for ts, by_slot in st.pending.items()}
        tail = st.buffer.tail(horizon)
        self.recent: deque[tuple[int, float]] = deque(
            zip(tail.ts.tolist(), tail.close.tolist(), strict=True), maxlen=horizon
        )
        self.predictions: list[Prediction] = []
        self.resolutions: list[Resolution] = []
        self.outcomes: list[tuple[str, bool]] = []

    def resolve(self, close: float, champion: str | None) -> bool | None:
        """Resolve the predictions made ``horizon`` bars before the bar closing at ``close``;
        feed the trial.

        Returns whether ``champion``'s prediction called the direction (None if it made
        none, or the move had no direction to call).
        """
        if len(self.recent) < (self.recent.maxlen or 1):
            return None
        start_ts, start_close = self.recent[0]
        pending = self.pending.pop(start_ts, None)
        if not pending:
            return None
        outcome = realised(self.target, start_close, close)
        self.resolutions.append(Resolution(start_ts, outcome))
        hits: dict[Slot, bool | None] = {}
        for slot, p in pending.items():
            hits[slot] = hit(self.target, p.value, outcome)
            if hits[slot] is not None:
                self.outcomes.append((p.version, bool(hits[slot])))
        self._feed_trial(pending, outcome, start_ts)
        champ = pending.get("champion")
        return hits["champion"] if champ is not None and champ.version == champion else None

    def _feed_trial(self, pending: Mapping[Slot, Prediction], outcome: float, ts: int) -> None:
        trial, test = self.trial, self.test
        if (
            trial is None
            or test is None
            or not self.counts
            or test.decision is not Decision.CONTINUE
            or len(pending) < 2
            or (pending["champion"].version, pending["shadow"].version)
            != (trial.champion, trial.shadow)
            or (trial.counts_after is not None and ts <= trial.counts_after)
        ):
            return
        test.observe(
            pending["champion"].value,
            pending["shadow"].value,
            outcome,
            promote_alpha=None if self.level is None else self.level.alpha,
        )
        if self.first_bar_ts is None:
            self.first_bar_ts = ts
        self.last_bar_ts = ts

    def predict(self, ts: int, close: float, scores: Mapping[Slot, tuple[str, float]]) -> None:
        made = {}
        for slot, (version, value) in scores.items():
            if math.isfinite(value):
                made[slot] = Prediction(ts, slot, version, value)
                self.predictions.append(made[slot])
        if made:
            self.pending[ts] = made
        self.recent.append((ts, close))
        # Predictions of bars that left the window (a gap in scoring) can no longer resolve.
        oldest = self.recent[0][0]
        for stale in [t for t in self.pending if t < oldest]:
            del self.pending[stale]


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
    stream: FeatureStream | None = None
    """The features after the batch's bars (None when no model scored them)."""


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
    test = test_from_dict(saved.test)
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
