"""Live scoring and the shadow trial: every new bar scored by champion and shadow.

For each new bar of a symbol, in ts order, ``LiveScorer.on_batch`` / ``on_bars``:

1. resolves the predictions made on the previous bar with its realised label
   (1 if this close > that close, as ``trainers.features.compute_labels``);
2. when champion and shadow both predicted that bar, feeds the pair to the
   symbol's ``PairedSequentialTest`` (correct = P(up) >= 0.5 matches the label;
   log losses from probabilities clipped to [1e-6, 1 - 1e-6]);
3. computes the bar's feature row with ``compute_features`` on the tail of a
   small buffer of recent bars (the function is offset-invariant, so the row
   equals training's bit for bit), scores both slots with cached onnxruntime
   sessions (sequence models get their last ``window`` rows) and logs both.

Everything a batch changes (predictions, resolutions, trial states of all its
symbols) goes to the ``PredictionLog`` (deploy.trial) in one ``commit``; memory follows only
after it succeeds, and a symbol whose batch failed is reloaded from the log and
the bar store. So a crash never leaves evidence and state apart, a restart
continues every trial exactly, and bars the store kept but the log never saw
are caught up. Bars at or before the last processed ts are ignored (re-delivery
is harmless); a late or corrected one inside the buffer re-warms it from the
store, so later features still match what training sees.

The trial counts only bars after the newest bar either model was trained on
(``metadata["data"]["last_ts"]``): a shadow judged on its own training data
would look better than it is. Skipping bars (this rule, downtime) is decided
before their outcomes are known, so the test's guarantee (deploy.sequential)
holds.

A decided trial is returned once per process as a ``TrialDecision``; the caller
applies it with ``apply_decision`` (or ``LiveScorer.apply``). ``sync`` picks up
slot changes (``on_batch`` also re-reads slots.json, every second by default, for
changes made by another process) and hands back the partial evidence of an
undecided trial the change ended.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from deploy.events import RegistryEvent
from deploy.registry import Registry
from deploy.sequential import Decision, PairedSequentialTest, PromotionTestConfig
from deploy.trial import (
    SLOTS,
    LogWrite,
    Prediction,
    PredictionLog,
    Resolution,
    Slot,
    TrialDecision,
    TrialState,
    apply_decision,
)
from trainers.data import Bars, FloatArray, validate_symbol
from trainers.features import FEATURE_SPEC, compute_features
from trainers.onnx_io import OnnxScorer

PROBA_CLIP: Final = 1e-6
"""Probabilities are clipped to [PROBA_CLIP, 1 - PROBA_CLIP] before taking log losses."""


class LiveModelError(ValueError):
    """A registry version that live scoring cannot serve (feature spec, window, shape)."""

    def __init__(self, symbol: str, version: str, problem: str) -> None:
        self.symbol, self.version, self.problem = symbol, version, problem
        super().__init__(f"{symbol} {version}: {problem}")


# --- the bars it reads --------------------------------------------------------------------


class BarLike(Protocol):
    """What ``on_bars`` reads from a bar (``daemon.events.BarRecord`` fits)."""

    @property
    def ts(self) -> int: ...
    @property
    def open(self) -> float: ...
    @property
    def high(self) -> float: ...
    @property
    def low(self) -> float: ...
    @property
    def close(self) -> float: ...
    @property
    def volume(self) -> float: ...


# --- models -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    """A cached session and when the version's training data ends."""

    scorer: OnnxScorer
    trained_until: int | None

    @property
    def window(self) -> int:
        return self.scorer.window

    def score(self, rows: FloatArray, k: int) -> FloatArray:
        """P(up) of the last ``k`` bars, given their ``k + window - 1`` newest feature rows;
        NaN where a needed row is not finite (too little history)."""
        w = self.window
        rows = rows[len(rows) - (k + w - 1) :]
        # Sequence models take, per bar, the window of feature rows ending at it.
        inputs = rows if w == 1 else sliding_window_view(rows, w, axis=0).transpose(0, 2, 1)
        finite = np.isfinite(inputs.reshape(k, -1)).all(axis=1)
        out = np.full(k, np.nan)
        if finite.any():
            out[finite] = self.scorer.predict_proba(inputs[finite])
        return out


def _load_model(registry: Registry, symbol: str, version: str, max_window: int) -> _Model:
    meta = registry.metadata(symbol, version)
    spec = meta.get("feature_spec") or {}
    if spec.get("version") != FEATURE_SPEC.version or list(spec.get("names", [])) != list(
        FEATURE_SPEC.names
    ):
        raise LiveModelError(
            symbol,
            version,
            f"trained on feature spec {spec.get('version')!r}, live features are version "
            f"{FEATURE_SPEC.version} with {len(FEATURE_SPEC.names)} named columns",
        )
    scorer = OnnxScorer(registry.model_path(symbol, version))
    onnx = meta.get("onnx") or {}
    expected = (onnx.get("window", 1), onnx.get("n_features", len(FEATURE_SPEC.names)))
    actual = (scorer.window, scorer.n_features)
    if expected != actual or actual[1] != len(FEATURE_SPEC.names):
        raise LiveModelError(
            symbol,
            version,
            f"model input is (window, n_features) {actual}, metadata says {expected}, live "
            f"features have {len(FEATURE_SPEC.names)} columns",
        )
    if scorer.window > max_window:
        raise LiveModelError(
            symbol, version, f"window {scorer.window} exceeds live max_window {max_window}"
        )
    last_ts = (meta.get("data") or {}).get("last_ts")
    return _Model(scorer, last_ts if isinstance(last_ts, int) else None)


# --- per-symbol state ---------------------------------------------------------------------

Row = tuple[int, float, float, float, float, float]


@dataclass
class _Trial:
    champion: str
    shadow: str
    test: PairedSequentialTest
    counts_after: int | None
    """Only bars after this ts count: the newest bar either model was trained on."""
    first_bar_ts: int | None = None
    last_bar_ts: int | None = None
    announced: bool = False
    """Whether this process has returned the trial's decision (once per process)."""


@dataclass
class _Symbol:
    buffer: Bars
    last_ts: int | None
    champion: str | None = None
    shadow: str | None = None
    pending: dict[Slot, Prediction] = field(default_factory=dict)
    trial: _Trial | None = None
    catch_up: list[Row] = field(default_factory=list)
    slots_read_at: float = 0.0

    def version(self, slot: Slot) -> str | None:
        return self.champion if slot == "champion" else self.shadow


@dataclass
class _Rolling:
    window: deque[bool]
    correct: int = 0

    def add(self, ok: bool) -> None:
        if len(self.window) == self.window.maxlen:
            self.correct -= self.window[0]
        self.window.append(ok)
        self.correct += ok

    @property
    def accuracy(self) -> float | None:
        return self.correct / len(self.window) if self.window else None


@dataclass(frozen=True, slots=True)
class LiveUpdate:
    """What one batch did for one symbol. ``errors``: one line each, for the log: models
    that cannot be loaded (their slot goes unscored until the version changes) or a
    failure of the whole symbol's batch (its state is reloaded from the log next time)."""

    symbol: str
    scored: int
    ignored: int
    predictions: int
    resolved: int
    decision: TrialDecision | None = None
    ended: TrialDecision | None = None
    errors: tuple[str, ...] = ()


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


class LiveScorer:
    """Scores every symbol's champion and shadow on live bars and runs their trials.

    ``load_recent(symbol, n)`` returns the newest ``n`` stored bars (the bar store's
    ``load(symbol, last_n=n)``); feed bars after the store has them. Slots are
    re-read from the registry at most every ``slots_poll_seconds`` during
    ``on_batch`` (changes made by another process), and at once by ``sync``.
    Thread-safe: one lock around every public method.
    """

    def __init__(
        self,
        registry: Registry,
        log: PredictionLog,
        load_recent: Callable[[str, int], Bars],
        config: PromotionTestConfig,
        *,
        accuracy_window: int = 500,
        max_window: int = 128,
        catch_up_bars: int = 1000,
        slots_poll_seconds: float = 1.0,
    ) -> None:
        for name, value in (
            ("accuracy_window", accuracy_window),
            ("max_window", max_window),
            ("catch_up_bars", catch_up_bars),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not slots_poll_seconds >= 0:
            raise ValueError(f"slots_poll_seconds must be >= 0, got {slots_poll_seconds}")
        self.registry, self.log, self.config = registry, log, config
        self._load_recent = load_recent
        self._accuracy_window = accuracy_window
        self._max_window = max_window
        self._catch_up = catch_up_bars
        self._slots_poll = slots_poll_seconds
        self._capacity = FEATURE_SPEC.lookback + max_window - 1
        self._symbols: dict[str, _Symbol] = {}
        self._models: dict[tuple[str, str], _Model] = {}
        self._broken: dict[tuple[str, str], str] = {}
        self._rolling: dict[tuple[str, str], _Rolling] = {}
        self._errors: dict[str, list[str]] = {}
        self._lock = threading.RLock()

    # -- public API ------------------------------------------------------------------------

    def on_batch(self, bars_by_symbol: Mapping[str, Sequence[BarLike]]) -> list[LiveUpdate]:
        """Process one ingest batch (any order, duplicates: last wins), one update per symbol.

        All symbols' writes go to the log in one commit. A symbol whose batch fails
        (bad symbol, store or registry error) reports it in ``errors`` and is reloaded
        from the log and the store next time; the others go on. If the commit fails,
        the error is raised and every symbol of the batch is reloaded next time, so
        its bars are caught up from the store.
        """
        with self._lock:
            updates: dict[str, LiveUpdate] = {}
            plans: list[_Plan] = []
            for symbol, bars in bars_by_symbol.items():
                try:
                    plans.append(self._plan(symbol, bars))
                except Exception as exc:  # one symbol's failure must not stall the others
                    self._symbols.pop(symbol, None)
                    failure = f"{symbol}: live scoring failed: {type(exc).__name__}: {exc}"
                    errors = (*self._errors.pop(symbol, ()), failure)
                    updates[symbol] = LiveUpdate(symbol, 0, 0, 0, 0, errors=errors)
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

    def on_bars(self, symbol: str, bars: Sequence[BarLike]) -> LiveUpdate:
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
        """``apply_decision`` then ``sync``: the registry changes and the next trial starts."""
        with self._lock:
            event = apply_decision(self.registry, decision, actor=actor)
            self.sync(decision.symbol)
            return event

    def trial(self, symbol: str) -> TrialDecision | None:
        """The running trial's evidence so far (for the ledger before replacing a shadow)."""
        validate_symbol(symbol)
        with self._lock:
            st = self._symbols.get(symbol)
            if st is None:
                st, _ = self._load(symbol, None)
            return None if st.trial is None else self._snapshot(symbol, st.trial)

    def status(self) -> list[LiveStatus]:
        """Gauge values of every symbol seen since start-up, sorted by symbol."""
        with self._lock:
            out = []
            for symbol in sorted(self._symbols):
                st = self._symbols[symbol]
                out.append(
                    LiveStatus(
                        symbol,
                        st.champion,
                        st.shadow,
                        self._accuracy(symbol, st.champion),
                        self._accuracy(symbol, st.shadow),
                        None if st.trial is None else self._snapshot(symbol, st.trial),
                    )
                )
            return out

    # -- loading and slot changes ------------------------------------------------------------

    def _load(self, symbol: str, first_new: int | None) -> tuple[_Symbol, TrialDecision | None]:
        """Restore a symbol from the log and the bar store (first touch since start-up)."""
        saved = self.log.load_state(symbol)
        last_ts = None if saved is None else saved.last_ts
        extra = 0 if last_ts is None else self._catch_up
        stored = self._load_recent(symbol, self._capacity + extra)
        ts = np.asarray(stored.ts, dtype=np.int64)
        if last_ts is not None:
            cut = int(np.searchsorted(ts, last_ts, side="right"))
        elif first_new is not None:
            cut = int(np.searchsorted(ts, first_new, side="left"))
        else:
            cut = len(ts)
        context = _slice(stored, 0, cut).tail(self._capacity)
        # Bars stored after the last processed one (e.g. a crash between the store's and
        # the log's commits) are scored with the next batch.
        catch_up = [_row(stored, i) for i in range(cut, len(ts))] if last_ts is not None else []
        if last_ts is None and len(context):
            last_ts = int(context.ts[-1])
        st = _Symbol(context, last_ts, catch_up=catch_up)
        if saved is not None and saved.last_ts is not None and _newest(context) == saved.last_ts:
            for p in self.log.unresolved(symbol):
                if p.bar_ts == saved.last_ts:
                    st.pending[p.slot] = p
        slots = self.registry.slots(symbol)
        st.champion, st.shadow = slots.champion, slots.shadow
        st.slots_read_at = time.monotonic()
        ended = None
        if saved is not None and saved.test is not None:
            test = PairedSequentialTest.from_dict(saved.test)
            same = (saved.champion_version, saved.shadow_version) == (slots.champion, slots.shadow)
            if same and saved.champion_version is not None and saved.shadow_version is not None:
                st.trial = _Trial(
                    saved.champion_version,
                    saved.shadow_version,
                    test,
                    None,
                    saved.first_bar_ts,
                    saved.last_bar_ts,
                )  # not announced yet: a decision restored unapplied is announced again
            elif (
                test.decision is Decision.CONTINUE
                and saved.champion_version is not None
                and saved.shadow_version is not None
            ):
                ended = TrialDecision(
                    symbol,
                    Decision.CONTINUE,
                    saved.champion_version,
                    saved.shadow_version,
                    test.evidence,
                    test.config,
                    saved.first_bar_ts,
                    saved.last_bar_ts,
                )
        self._activate(symbol, st)
        self._symbols[symbol] = st
        return st, ended

    def _resync(self, symbol: str, st: _Symbol) -> TrialDecision | None:
        slots = self.registry.slots(symbol)
        st.slots_read_at = time.monotonic()
        if (slots.champion, slots.shadow) == (st.champion, st.shadow):
            return None
        ended = None
        if st.trial is not None and st.trial.test.decision is Decision.CONTINUE:
            ended = self._snapshot(symbol, st.trial)
        both = slots.champion is not None and slots.shadow is not None
        fresh = PairedSequentialTest(self.config).to_dict() if both else None
        state = TrialState(st.last_ts, slots.champion, slots.shadow, fresh)
        self.log.commit([LogWrite(symbol, (), (), state)])
        keep = {slots.champion, slots.shadow}
        for version in {st.champion, st.shadow} - keep:
            if version is not None:
                self._models.pop((symbol, version), None)
                self._broken.pop((symbol, version), None)
                self._rolling.pop((symbol, version), None)
        st.champion, st.shadow, st.trial = slots.champion, slots.shadow, None
        self._activate(symbol, st)
        return ended

    def _activate(self, symbol: str, st: _Symbol) -> None:
        """Load the slots' models and rolling accuracies; start a trial for a new pair."""
        for version in (st.champion, st.shadow):
            if version is None:
                continue
            self._model(symbol, version)
            if (symbol, version) not in self._rolling:
                rolling = _Rolling(deque(maxlen=self._accuracy_window))
                for proba, label in self.log.recent_outcomes(
                    symbol, version, self._accuracy_window
                ):
                    rolling.add((proba >= 0.5) == (label == 1))
                self._rolling[(symbol, version)] = rolling
        if st.champion is None or st.shadow is None:
            st.trial = None
            return
        if st.trial is None:
            st.trial = _Trial(st.champion, st.shadow, PairedSequentialTest(self.config), None)
        if st.trial.counts_after is None:
            ends = [
                m.trained_until
                for m in (self._model(symbol, st.champion), self._model(symbol, st.shadow))
                if m is not None and m.trained_until is not None
            ]
            st.trial.counts_after = max(ends, default=None)

    def _model(self, symbol: str, version: str) -> _Model | None:
        key = (symbol, version)
        if key in self._models:
            return self._models[key]
        if key in self._broken:
            return None
        try:
            model = _load_model(self.registry, symbol, version, self._max_window)
        except Exception as exc:  # a broken model must not stop the other slot or symbol
            self._broken[key] = f"{symbol} {version}: cannot load for live scoring: {exc}"
            self._errors.setdefault(symbol, []).append(self._broken[key])
            return None
        self._models[key] = model
        return model

    def _buffer_disagrees(self, st: _Symbol, old: list[Row]) -> bool:
        """True if a re-delivered bar inside the buffer's span is missing from it or differs
        (a late or corrected bar): training will see it, so live features must too."""
        buf = st.buffer
        if not len(buf):
            return False
        for row in old:
            ts = row[0]
            if ts < buf.ts[0]:
                continue
            i = int(np.searchsorted(buf.ts, ts))
            if i == len(buf) or int(buf.ts[i]) != ts or _row(buf, i) != row:
                return True
        return False

    def _rewarm(self, symbol: str, st: _Symbol) -> None:
        stored = self._load_recent(symbol, self._capacity + self._catch_up)
        cut = (
            len(stored)
            if st.last_ts is None
            else int(np.searchsorted(stored.ts, st.last_ts, side="right"))
        )
        st.buffer = _slice(stored, 0, cut).tail(self._capacity)

    # -- scoring ---------------------------------------------------------------------------

    def _plan(self, symbol: str, bars: Sequence[BarLike]) -> _Plan:
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
        if old and self._buffer_disagrees(st, old):
            self._rewarm(symbol, st)
        new = [rows[ts] for ts in sorted(rows)]
        if not new:
            return _Plan(symbol, st, len(old), ended)

        k = len(new)
        arr = np.asarray(new, dtype=np.float64)
        batch = Bars(arr[:, 0].astype(np.int64), *(arr[:, j] for j in range(1, 6)))
        combined = _concat(st.buffer, batch)
        models: dict[Slot, tuple[str, _Model]] = {}
        for slot in SLOTS:
            version = st.version(slot)
            model = None if version is None else self._model(symbol, version)
            if version is not None and model is not None:
                models[slot] = (version, model)
        probas: dict[Slot, FloatArray] = {}
        if models:
            width = max(m.window for _, m in models.values())
            features = feature_tail(combined, k + width - 1)
            probas = {s: _clean(m.score(features, k)) for s, (_, m) in models.items()}

        walk = _Walk(st)
        for i, (ts, _o, _h, _l, close, _v) in enumerate(new):
            walk.resolve(close)
            walk.predict(ts, close, {s: (v, float(probas[s][i])) for s, (v, _) in models.items()})
        write = None
        if walk.predictions or walk.resolutions or walk.test is not None:
            state = TrialState(
                new[-1][0],
                st.champion,
                st.shadow,
                None if walk.test is None else walk.test.to_dict(),
                walk.first_bar_ts,
                walk.last_bar_ts,
            )
            write = LogWrite(symbol, walk.predictions, walk.resolutions, state)
        return _Plan(symbol, st, len(old), ended, len(new), combined, walk, write)

    def _apply(self, plan: _Plan) -> LiveUpdate:
        """After a successful commit: memory follows the log."""
        symbol, st, walk = plan.symbol, plan.st, plan.walk
        decision = None
        if walk is not None and plan.combined is not None:
            st.buffer = plan.combined.tail(self._capacity)
            st.last_ts = int(plan.combined.ts[-1])
            st.pending = walk.pending
            for version, ok in walk.outcomes:
                rolling = self._rolling.get((symbol, version))
                if rolling is not None:
                    rolling.add(ok)
            if st.trial is not None and walk.test is not None:
                st.trial.test = walk.test
                st.trial.first_bar_ts, st.trial.last_bar_ts = walk.first_bar_ts, walk.last_bar_ts
        st.catch_up = []
        trial = st.trial
        if (
            trial is not None
            and not trial.announced
            and trial.test.decision is not Decision.CONTINUE
        ):
            # Announced once per process: a decision reached now, or restored unapplied.
            decision = self._snapshot(symbol, trial)
            trial.announced = True
        return LiveUpdate(
            symbol,
            scored=plan.scored,
            ignored=plan.ignored,
            predictions=0 if walk is None else len(walk.predictions),
            resolved=0 if walk is None else len(walk.resolutions),
            decision=decision,
            ended=plan.ended,
            errors=tuple(self._errors.pop(symbol, ())),
        )

    # -- helpers ---------------------------------------------------------------------------

    def _snapshot(self, symbol: str, trial: _Trial) -> TrialDecision:
        return TrialDecision(
            symbol,
            trial.test.decision,
            trial.champion,
            trial.shadow,
            trial.test.evidence,
            trial.test.config,
            trial.first_bar_ts,
            trial.last_bar_ts,
        )

    def _accuracy(self, symbol: str, version: str | None) -> float | None:
        if version is None:
            return None
        rolling = self._rolling.get((symbol, version))
        return None if rolling is None else rolling.accuracy


class _Walk:
    """One batch's pass over its new bars, on a copy of the trial (committed on success)."""

    def __init__(self, st: _Symbol) -> None:
        self.trial = st.trial
        # Its state is scalars only: a shallow copy is a full one.
        self.test = None if st.trial is None else copy.copy(st.trial.test)
        self.first_bar_ts = None if st.trial is None else st.trial.first_bar_ts
        self.last_bar_ts = None if st.trial is None else st.trial.last_bar_ts
        self.pending = dict(st.pending)
        self.prev_ts, self.prev_close = _newest(st.buffer), _newest_close(st.buffer)
        self.predictions: list[Prediction] = []
        self.resolutions: list[Resolution] = []
        self.outcomes: list[tuple[str, bool]] = []

    def resolve(self, close: float) -> None:
        """Label the previous bar's predictions with the move to ``close``; feed the trial."""
        prev_ts, prev_close = self.prev_ts, self.prev_close
        pending = {s: p for s, p in self.pending.items() if p.bar_ts == prev_ts}
        if not pending or prev_ts is None or prev_close is None:
            return
        label = int(close > prev_close)
        self.resolutions.append(Resolution(prev_ts, label))
        right: dict[Slot, bool] = {}
        for slot, p in pending.items():
            right[slot] = (p.proba_up >= 0.5) == (label == 1)
            self.outcomes.append((p.version, right[slot]))
        trial, test = self.trial, self.test
        if (
            trial is None
            or test is None
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
            _log_loss(pending["champion"].proba_up, label),
            _log_loss(pending["shadow"].proba_up, label),
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
class _Plan:
    symbol: str
    st: _Symbol
    ignored: int
    ended: TrialDecision | None
    scored: int = 0
    combined: Bars | None = None
    walk: _Walk | None = None
    write: LogWrite | None = None


def feature_tail(bars: Bars, m: int) -> FloatArray:
    """Feature rows of the last ``m`` bars, computed on only the bars they depend on.

    Row i equals ``compute_features(all bars)`` for the same bar (the feature
    function is offset-invariant); rows without enough history are NaN.
    """
    feats = compute_features(bars.tail(FEATURE_SPEC.lookback + m - 1))
    if len(feats) >= m:
        out: FloatArray = feats[len(feats) - m :]
        return out
    pad = np.full((m - len(feats), len(FEATURE_SPEC.names)), np.nan)
    return np.vstack([pad, feats])


def _clean(p: FloatArray) -> FloatArray:
    """P(up) clipped into [0, 1]; non-finite outputs stay NaN (no prediction is logged)."""
    out: FloatArray = np.where(np.isfinite(p), np.clip(p, 0.0, 1.0), np.nan)
    return out


def _log_loss(proba_up: float, label: int) -> float:
    p = min(max(proba_up, PROBA_CLIP), 1.0 - PROBA_CLIP)
    return -math.log(p if label == 1 else 1.0 - p)


def _slice(bars: Bars, start: int, stop: int) -> Bars:
    s = slice(start, stop)
    return Bars(bars.ts[s], bars.open[s], bars.high[s], bars.low[s], bars.close[s], bars.volume[s])


def _concat(a: Bars, b: Bars) -> Bars:
    return Bars(
        *(
            np.concatenate([getattr(a, name), getattr(b, name)])
            for name in ("ts", "open", "high", "low", "close", "volume")
        )
    )


def _row(bars: Bars, i: int) -> Row:
    return (
        int(bars.ts[i]),
        float(bars.open[i]),
        float(bars.high[i]),
        float(bars.low[i]),
        float(bars.close[i]),
        float(bars.volume[i]),
    )


def _newest(bars: Bars) -> int | None:
    return int(bars.ts[-1]) if len(bars) else None


def _newest_close(bars: Bars) -> float | None:
    return float(bars.close[-1]) if len(bars) else None
