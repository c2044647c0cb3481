# Over 400 lines: LiveScorer's methods share one lock and the per-symbol state.
"""Live scoring and the shadow trial: every new bar scored by champion and shadow.

For each new bar of a symbol, in ts order, ``LiveScorer.on_batch`` / ``on_bars``:

1. resolves the predictions made ``horizon`` bars earlier with what they resolved to
   (``trainers.targets.realised``: the label, 1 if this close > that close, or the log
   return, exactly as training labels them);
2. when champion and shadow both predicted that bar, feeds the pair to the symbol's
   trial test (``deploy.trial_test``: paired correctness for direction models, paired
   truncated squared errors for return models);
3. computes the bar's feature row incrementally (``trainers.features_stream``: the
   symbol's stream, seeded from a small buffer of recent bars, gives rows equal to
   ``compute_features`` over the history bit for bit), scores both slots with the
   sessions of ``deploy.scoring.ModelCache`` (sequence models get their last
   ``window`` rows) and logs both. The update carries each bar's feature row and the
   champion's resolved outcome, so the live monitors need not recompute them.

Everything a batch changes (predictions, resolutions, trial states of all its
symbols) goes to the ``PredictionLog`` (deploy.trial) in one ``commit``; memory follows only
after it succeeds, and a symbol whose batch failed is reloaded from the log and
the bar store. So a crash never leaves evidence and state apart, a restart
continues every trial exactly, and bars the store kept but the log never saw
are caught up. Bars at or before the last processed ts are ignored (re-delivery
is harmless); a late or corrected one inside the buffer re-warms it from the
store, so later features still match what training sees.

The trial counts only bars after the newest bar either model was trained on
(``ModelMetadata.trained_until``): a shadow judged on its own training data
would look better than it is. Skipping bars (this rule, downtime) is decided
before their outcomes are known, so the test's guarantee (deploy.sequential)
holds.

The level PROMOTE is tested at comes from the ``PromotionPolicy`` (deploy.fdr).
Per symbol it is ``alpha``. Under e-LOND, the trial's first batch claims a
fleet-wide test index (kept in the trial state, so a restart or the next owner
continues with it; one lost before its first commit is claimed again), and its
bars count only once it has one; each batch then tests PROMOTE at alpha_t from
the fleet's discoveries as last read (``refresh``, once a batch at most), and a
PROMOTE applied through ``apply`` is counted as a discovery.

A decided trial is returned once per process as a ``TrialDecision``; the caller
applies it with ``apply_decision`` (or ``LiveScorer.apply``). ``sync`` picks up
slot changes (``on_batch`` also re-reads slots.json, every second by default, for
changes made by another process) and hands back the partial evidence of an
undecided trial the change ended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from deploy.errors import RegistryError
from deploy.events import RegistryEvent
from deploy.fdr import PerSymbol, PromotionPolicy
from deploy.live_state import (
    LiveStatus,
    LiveUpdate,
    Plan,
    Row,
    SymbolState,
    Trial,
    Walk,
    bar_slice,
    concat,
    newest,
    restore_symbol,
    restore_trial,
    trial_counting,
)
from deploy.quarantine import STATE_ERRORS, Quarantine
from deploy.registry import Registry
from deploy.scoring import ACCURACY_WINDOW, LiveModel, ModelCache
from deploy.sequential import Decision, PromotionTestConfig
from deploy.sequential_loss import loss_cap
from deploy.trial import (
    SLOTS,
    LogWrite,
    PredictionLog,
    Slot,
    TrialDecision,
    TrialState,
    apply_decision,
)
from deploy.trial_test import TrialTest, new_test
from monitors.watch import LiveObservation
from trainers.data import BarRecord, Bars, FloatArray, validate_symbol
from trainers.features import FEATURE_SPEC
from trainers.features_stream import FeatureStream
from trainers.targets import DIRECTION, RETURN, Target, hit

# --- per-symbol state ---------------------------------------------------------------------


class LiveScorer:
    """Scores every symbol's champion and shadow on live bars and runs their trials.

    ``load_recent(symbol, n)`` returns the newest ``n`` stored bars (the bar store's
    ``load(symbol, last_n=n)``); feed bars after the store has them. Slots are
    re-read from the registry at most every ``slots_poll_seconds`` during
    ``on_batch`` (changes made by another process), and at once by ``sync``.
    ``policy`` sets each trial's promote level (default ``PerSymbol``: ``config.alpha``).
    Thread-safe: one lock around every public method.
    """

    def __init__(
        self,
        registry: Registry,
        log: PredictionLog,
        load_recent: Callable[[str, int], Bars],
        config: PromotionTestConfig,
        *,
        max_window: int = 128,
        catch_up_bars: int = 1000,
        slots_poll_seconds: float = 1.0,
        quarantine: Quarantine | None = None,
        policy: PromotionPolicy | None = None,
        target: Target = DIRECTION,
        horizon: int = 1,
    ) -> None:
        for name, value in (
            ("max_window", max_window),
            ("catch_up_bars", catch_up_bars),
            ("horizon", horizon),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not slots_poll_seconds >= 0:
            raise ValueError(f"slots_poll_seconds must be >= 0, got {slots_poll_seconds}")
        self.registry, self.log, self.config = registry, log, config
        self._load_recent = load_recent
        self._max_window = max_window
        self._catch_up = catch_up_bars
        self._slots_poll = slots_poll_seconds
        self._target, self._horizon = target, horizon
        # The buffer holds the features' lookback and the closes predictions resolve against.
        self._capacity = max(FEATURE_SPEC.lookback + max_window - 1, horizon)
        self._symbols: dict[str, SymbolState] = {}
        self._cache = ModelCache(registry, max_window, target, horizon)
        self.quarantine = quarantine if quarantine is not None else Quarantine()
        self.policy: PromotionPolicy = policy if policy is not None else PerSymbol()
        self._lock = threading.RLock()

    # -- public API ------------------------------------------------------------------------

    @property
    def target(self) -> Target:
        """What the served models predict (``trainers.targets``)."""
        return self._target

    @property
    def horizon(self) -> int:
        """Bars between a prediction and its outcome."""
        return self._horizon

    def on_batch(self, bars_by_symbol: Mapping[str, Sequence[BarRecord]]) -> list[LiveUpdate]:
        """Process one ingest batch (any order, duplicates: last wins), one update per symbol.

        All symbols' writes go to the log in one commit. A symbol whose batch fails
        (bad symbol, store or registry error) reports it in ``errors`` and is reloaded
        from the log and the store next time; the others go on. If the commit fails,
        the error is raised and every symbol of the batch is reloaded next time, so
        its bars are caught up from the store.
        """
        with self._lock:
            updates: dict[str, LiveUpdate] = {}
            plans: list[Plan] = []
            stale = self._refresh_level()
            for symbol, bars in bars_by_symbol.items():
                if symbol in self.quarantine:
                    updates[symbol] = LiveUpdate(symbol, 0, len(bars), (), 0)
                    continue
                try:
                    plans.append(self._plan(symbol, bars, stale))
                except Exception as exc:  # one symbol's failure must not stall the others
                    self._symbols.pop(symbol, None)
                    if isinstance(exc, STATE_ERRORS):
                        self.quarantine.add(symbol, exc)
                        self._cache.forget_symbol(symbol)
                    failure = f"{symbol}: live scoring failed: {type(exc).__name__}: {exc}"
                    errors = (*self._cache.take_errors(symbol), failure)
                    updates[symbol] = LiveUpdate(symbol, 0, 0, (), 0, errors=errors)
            writes = [plan.write for plan in plans if plan.write is not None]
            if writes:
                try:
                    self.log.commit(writes)
                except BaseException:
                    for plan in plans:
                        self._symbols.pop(plan.symbol, None)
                    raise
            for plan in plans:
                updates[plan.symbol] = self._apply(plan)
            return [updates[symbol] for symbol in bars_by_symbol]

    def on_bars(self, symbol: str, bars: Sequence[BarRecord]) -> LiveUpdate:
        """``on_batch`` for one symbol."""
        return self.on_batch({symbol: bars})[0]

    def sync(self, symbol: str) -> TrialDecision | None:
        """Re-read the symbol's slots; on a change start a fresh trial for the new pair.

        Returns the evidence of an undecided trial the change ended (a superseded
        shadow, an operator's promote/reject, a rollback), else None. Call it after
        every registry change the daemon makes.
        """
        validate_symbol(symbol)
        with self._lock:
            st = self._symbols.get(symbol)
            if st is None:
                st, ended = self._load(symbol, None)
                return ended
            return self._resync(symbol, st)

    def apply(self, decision: TrialDecision, *, actor: str = "daemon") -> RegistryEvent:
        """``apply_decision`` then ``sync``: the registry changes and the next trial starts.
        A PROMOTE at an e-LOND level is counted as a fleet discovery once it is applied."""
        with self._lock:
            event = apply_decision(self.registry, decision, actor=actor)
            if decision.decision is Decision.PROMOTE and decision.level is not None:
                self.policy.discovered(decision.level)
            self.sync(decision.symbol)
            return event

    def trial(self, symbol: str) -> TrialDecision | None:
        """The running trial's evidence so far (for the ledger before replacing a shadow)."""
        validate_symbol(symbol)
        with self._lock:
            st = self._symbols.get(symbol)
            if st is None:
                st, _ = self._load(symbol, None)
            return None if st.trial is None else st.trial.snapshot(symbol)

    def model(self, symbol: str, version: str) -> LiveModel | None:
        """The served model of a version (loaded on first use); None if it cannot be served."""
        with self._lock:
            return self._cache.model(symbol, version)

    def forget(self, symbol: str) -> None:
        """Drop the symbol's memory (handed over to or from another daemon); the next batch
        reloads it from the log and the store."""
        with self._lock:
            st = self._symbols.pop(symbol, None)
            for version in (st.champion, st.shadow) if st is not None else ():
                if version is not None:
                    self._cache.forget(symbol, version)

    def trial_positions(self) -> dict[str, int | None]:
        """The newest processed bar of every symbol with a trial (not quarantined); cheap."""
        with self._lock:
            return {
                symbol: st.last_ts
                for symbol, st in self._symbols.items()
                if st.trial is not None and symbol not in self.quarantine
            }

    def status(self) -> list[LiveStatus]:
        """Gauge values of every symbol seen since start-up, sorted by symbol."""
        with self._lock:
            out = []
            for symbol in sorted(self._symbols):
                if symbol in self.quarantine:
                    continue
                st = self._symbols[symbol]
                out.append(
                    LiveStatus(
                        symbol,
                        st.champion,
                        st.shadow,
                        self._cache.accuracy(symbol, st.champion),
                        self._cache.accuracy(symbol, st.shadow),
                        None if st.trial is None else st.trial.snapshot(symbol),
                    )
                )
            return out

    # -- loading and slot changes ------------------------------------------------------------

    def _load(self, symbol: str, first_new: int | None) -> tuple[SymbolState, TrialDecision | None]:
        """Restore a symbol from the log and the bar store (first touch since start-up)."""
        saved = self.log.load_state(symbol)
        last_ts = None if saved is None else saved.last_ts
        extra = 0 if last_ts is None else self._catch_up
        stored = self._load_recent(symbol, self._capacity + extra)
        st = restore_symbol(stored, last_ts, first_new, self._capacity)
        if saved is not None and saved.last_ts is not None and newest(st.buffer) == saved.last_ts:
            waiting = set(st.buffer.ts[-self._horizon :].tolist())
            for p in self.log.unresolved(symbol):
                if p.bar_ts in waiting:
                    st.pending.setdefault(p.bar_ts, {})[p.slot] = p
        slots = self.registry.slots(symbol)
        st.champion, st.shadow = slots.champion, slots.shadow
        st.slots_read_at = time.monotonic()
        st.trial, ended = restore_trial(symbol, saved, slots.champion, slots.shadow)
        self._activate(symbol, st)
        self._symbols[symbol] = st
        return st, ended

    def _resync(self, symbol: str, st: SymbolState) -> TrialDecision | None:
        slots = self.registry.slots(symbol)
        st.slots_read_at = time.monotonic()
        if (slots.champion, slots.shadow) == (st.champion, st.shadow):
            return None
        ended = None
        if st.trial is not None and st.trial.test.decision is Decision.CONTINUE:
            ended = st.trial.snapshot(symbol)
        fresh = None
        if slots.champion is not None and slots.shadow is not None:
            fresh = self._new_test(symbol, st, slots.champion, slots.shadow).to_dict()
        state = TrialState(st.last_ts, slots.champion, slots.shadow, fresh)
        self.log.commit([LogWrite(symbol, (), (), state)])
        keep = {slots.champion, slots.shadow}
        for version in {st.champion, st.shadow} - keep:
            if version is not None:
                self._cache.forget(symbol, version)
        st.champion, st.shadow, st.trial = slots.champion, slots.shadow, None
        self._activate(symbol, st)
        return ended

    def _activate(self, symbol: str, st: SymbolState) -> None:
        """Load the slots' models and rolling accuracies; start a trial for a new pair."""
        for version in (st.champion, st.shadow):
            if version is None or self._cache.loaded(symbol, version):
                continue
            if self._cache.model(symbol, version) is None:
                failure = self._cache.failure(symbol, version)
                if isinstance(failure, STATE_ERRORS):
                    raise failure  # its state is unreadable: quarantined by ``on_batch``
            rolling = self._cache.rolling(symbol, version)
            for value, outcome in self.log.recent_outcomes(symbol, version, ACCURACY_WINDOW):
                called = hit(self._target, value, outcome)
                if called is not None:
                    rolling.add(called)
        if st.champion is None or st.shadow is None:
            st.trial = None
            return
        if st.trial is None:
            test = self._new_test(symbol, st, st.champion, st.shadow)
            st.trial = Trial(st.champion, st.shadow, test, None)
        if st.trial.counts_after is None:
            ends = [
                m.trained_until
                for m in (
                    self._cache.model(symbol, st.champion),
                    self._cache.model(symbol, st.shadow),
                )
                if m is not None and m.trained_until is not None
            ]
            st.trial.counts_after = max(ends, default=None)

    def _new_test(self, symbol: str, st: SymbolState, champion: str, shadow: str) -> TrialTest:
        """A fresh test for the pair; a return trial's loss cap is fixed now, from the
        models' test RMSE (else the recent realised returns): before any outcome is seen."""
        if self._target != RETURN:
            return new_test(self._target, self.config)
        models = [self._cache.model(symbol, v) for v in (champion, shadow)]
        rmse = [None if m is None else m.test_rmse for m in models]
        close, h = st.buffer.close, self._horizon
        moves = np.log(close[h:] / close[:-h]) if len(close) > h else np.empty(0)
        return new_test(self._target, self.config, loss_cap(rmse[0], rmse[1], moves))

    def _rewarm(self, symbol: str, st: SymbolState) -> None:
        stored = self._load_recent(symbol, self._capacity + self._catch_up)
        cut = (
            len(stored)
            if st.last_ts is None
            else int(np.searchsorted(stored.ts, st.last_ts, side="right"))
        )
        st.buffer = bar_slice(stored, 0, cut).tail(self._capacity)
        st.features = None

    # -- promote levels ----------------------------------------------------------------------

    def _refresh_level(self) -> str | None:
        """Re-read the fleet's discoveries if due; a failure keeps the old (lower) count."""
        try:
            self.policy.refresh()
        except (OSError, RegistryError) as exc:
            return f"fleet discoveries not re-read (promote levels use the last count): {exc}"
        return None

    # -- scoring ---------------------------------------------------------------------------

    def _plan(self, symbol: str, bars: Sequence[BarRecord], stale: str | None = None) -> Plan:
        """Score the new bars and prepare the log write; memory is changed by ``_apply``."""
        validate_symbol(symbol)
        st = self._symbols.get(symbol)
        ended = None
        if st is None:
            st, ended = self._load(symbol, min((int(b.ts) for b in bars), default=None))
        elif time.monotonic() - st.slots_read_at >= self._slots_poll:
            ended = self._resync(symbol, st)
        rows: dict[int, Row] = {r[0]: r for r in st.catch_up}
        old: list[Row] = []
        for b in bars:
            row: Row = (int(b.ts), b.open, b.high, b.low, b.close, b.volume)
            if st.last_ts is not None and row[0] <= st.last_ts:
                old.append(row)
            else:
                rows[row[0]] = row
        if old and st.disagrees(old):
            self._rewarm(symbol, st)
        new = [rows[ts] for ts in sorted(rows)]
        if not new:
            return Plan(symbol, st, len(old), ended)

        arr = np.asarray(new, dtype=np.float64)
        batch = Bars(arr[:, 0].astype(np.int64), *(arr[:, j] for j in range(1, 6)))
        combined = concat(st.buffer, batch)
        models: dict[Slot, tuple[str, LiveModel]] = {}
        for slot in SLOTS:
            version = st.version(slot)
            model = None if version is None else self._cache.model(symbol, version)
            if version is not None and model is not None:
                models[slot] = (version, model)
        probas: dict[Slot, FloatArray] = {}
        rows_of_new: FloatArray | None = None
        stream = None
        if models:
            stream, rows_of_new, probas = self._score(st, new, models)

        counting, problem = trial_counting(self.policy, symbol, st.trial)
        problems = tuple(p for p in (problem, stale if st.trial else None) if p)
        walk = Walk(st, counting, target=self._target, horizon=self._horizon)
        observations = []
        for i, (ts, _o, _h, _l, close, _v) in enumerate(new):
            correct = walk.resolve(close, st.champion)
            walk.predict(ts, close, {s: (v, float(probas[s][i])) for s, (v, _) in models.items()})
            feature_row = None if rows_of_new is None else rows_of_new[i]
            observations.append(LiveObservation(ts, feature_row, correct))
        write = None
        if walk.predictions or walk.resolutions or walk.test is not None:
            state = TrialState(
                new[-1][0],
                st.champion,
                st.shadow,
                None if walk.test is None else walk.test.to_dict(),
                walk.first_bar_ts,
                walk.last_bar_ts,
                walk.level,
            )
            write = LogWrite(symbol, walk.predictions, walk.resolutions, state)
        observed = tuple(observations)
        return Plan(
            symbol, st, len(old), ended, len(new), combined, walk, write, observed, problems, stream
        )

    def _score(
        self, st: SymbolState, new: list[Row], models: Mapping[Slot, tuple[str, LiveModel]]
    ) -> tuple[FeatureStream, FloatArray, dict[Slot, FloatArray]]:
        """The features after the new bars, their rows, and each slot's predictions.

        Features are incremental (O(1) per bar, bit-identical to ``compute_features`` over
        the history), on a copy: memory follows the log only after the commit.
        """
        width = max(m.window for _, m in models.values())
        stream = (
            st.features.copy()
            if st.features is not None
            else FeatureStream.from_bars(st.buffer, keep=self._max_window)
        )
        prior = stream.rows(width - 1)
        rows = np.array([stream.push(*row) for row in new])
        features = np.vstack((prior, rows)) if width > 1 else rows
        return stream, rows, {s: m.score(features, len(new)) for s, (_, m) in models.items()}

    def _apply(self, plan: Plan) -> LiveUpdate:
        """After a successful commit: memory follows the log."""
        symbol, st, walk = plan.symbol, plan.st, plan.walk
        decision = None
        if walk is not None and plan.combined is not None:
            st.buffer = plan.combined.tail(self._capacity)
            # None (no model scored): seeded from the buffer when one does.
            st.features = plan.stream
            st.last_ts = int(plan.combined.ts[-1])
            st.pending = walk.pending
            for version, ok in walk.outcomes:
                self._cache.rolling(symbol, version).add(ok)
            if st.trial is not None and walk.test is not None:
                st.trial.test = walk.test
                st.trial.first_bar_ts, st.trial.last_bar_ts = walk.first_bar_ts, walk.last_bar_ts
                st.trial.level = walk.level
        st.catch_up = []
        trial = st.trial
        if (
            trial is not None
            and not trial.announced
            and trial.test.decision is not Decision.CONTINUE
        ):
            # Announced once per process: a decision reached now, or restored unapplied.
            decision = trial.snapshot(symbol)
            trial.announced = True
        return LiveUpdate(
            symbol,
            scored=plan.scored,
            ignored=plan.ignored,
            predictions=() if walk is None else tuple(walk.predictions),
            resolved=0 if walk is None else len(walk.resolutions),
            decision=decision,
            ended=plan.ended,
            errors=(*self._cache.take_errors(symbol), *plan.problems),
            observations=plan.observations,
            champion=st.champion,
        )
