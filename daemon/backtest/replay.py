"""The daemon's retrain-and-promote lifecycle replayed over one symbol's bar history.

Bars are fed one at a time, in simulated time, through the components the
daemon runs: the retrain trigger (bar counts), the training pipeline with its
gates (``trainers.pipeline.train_symbol`` with the symbol's ``job_config``, as
a worker would), the run recorder and the live path's hand-over of trials
(``RunRecorder``, ``LivePath``), the scheduler's back-off after a failed run,
live scoring of champion and shadow with the sequential promotion test
(``LiveScorer``), and the bar-driven live monitors (drift, decay;
``LiveWatch``), every clock being the simulated one. Only Kafka and the
worker processes are left out: a retrain requested at bar t runs at once, on
the bars up to t, and its model serves from bar t + 1. The registry is a real
one in the output directory, so every version can be inspected afterwards.

Beside it, three comparison policies get the same bars and the same rules of
honesty (a prediction at bar t uses only bars up to t):

- ``frozen``: the first champion, never replaced;
- ``always_swap``: retrained on the trigger's bar-count schedule with every
  gate off, each model served from the next bar on (trained in a process pool
  while the replay runs: the schedule is known in advance);
- ``naive``: the majority direction of the same training windows (P(up) = the
  share of up moves), or for return models their mean ``horizon_bars`` log return,
  what every model is gated against.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from daemon.backtest.scores import FloatArray
from daemon.live.announce import Announcer
from daemon.live.path import LivePath
from daemon.live.publish import served_slot
from daemon.live.watch import LiveWatch
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.store.memory import MemoryBarStore
from daemon.training.jobs import job_config
from daemon.training.outcomes import RunRecorder
from daemon.training.scheduler import Backoff, JobOutcome, TrainJob
from daemon.training.trigger import RetrainTrigger, TriggerPolicy
from deploy.live import LiveScorer
from deploy.live_state import LiveUpdate
from deploy.memory_log import MemoryPredictionLog
from deploy.registry import Registry
from deploy.scoring import LiveModel
from monitors.gates import GateConfig
from trainers.config import TrainConfig
from trainers.data import Bars, IntArray, bar_records
from trainers.features import compute_features
from trainers.onnx_io import OnnxScorer
from trainers.pipeline import train_symbol
from trainers.targets import RETURN

Progress = Callable[[int, int], None]
"""(bars replayed, bars in all)."""

UNGATED = GateConfig(
    max_train_val_gap=1.0,
    max_val_test_diff=1.0,
    require_beat_baseline=False,
    max_parity_diff=1.0,
    min_test_rows=1,
    blocking_warnings=(),
)


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """Something the lifecycle did, at the bar it happened (index into the history)."""

    bar: int
    ts: int
    event: str
    version: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Per bar of the history: the P(up) each policy served (NaN: none) and the version
    ctd served; the lifecycle's timeline; how long the replay took."""

    symbol: str
    ts: IntArray
    close: FloatArray
    served: dict[str, FloatArray]
    ctd_version: list[str | None]
    timeline: list[TimelineEvent]
    frozen_version: str | None
    seconds: float


class _Queue:
    """The retrain queue of the replay: coalesced requests, run at the end of the bar."""

    def __init__(self) -> None:
        self.pending: tuple[int, str] | None = None

    def request(self, symbol: str, bar_count: int, reason: str) -> bool:
        self.pending = (bar_count, reason)
        return True


class Replay:
    """One symbol's lifecycle over ``bars``; writes its registry under ``workdir``."""

    def __init__(
        self,
        settings: Settings,
        symbol: str,
        bars: Bars,
        workdir: Path,
        *,
        progress: Progress | None = None,
    ) -> None:
        self.settings, self.symbol, self.bars = settings, symbol, bars
        self.workdir = workdir
        self._progress = progress
        for stale in ("registry", "always_swap"):
            shutil.rmtree(workdir / stale, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(workdir / "registry")
        self.store = MemoryBarStore()
        self._now = 0.0
        metrics = Metrics(CollectorRegistry(), version="backtest")
        scorer = LiveScorer(
            self.registry,
            MemoryPredictionLog(),
            lambda s, n: self.store.load(s, last_n=n),
            settings.promotion_config,
            target=settings.target,
            horizon=settings.horizon_bars,
        )
        self.live = LivePath(scorer, self.registry, Announcer(self.registry, [], metrics), metrics)
        self.queue = _Queue()
        self.trigger = RetrainTrigger(
            TriggerPolicy(settings.min_bars, settings.retrain_every_bars),
            self.queue,
            counts={},
            trained={},
        )
        self.watch = LiveWatch(
            settings,
            registry=self.registry,
            metrics=metrics,
            trigger=self._monitor_retrain,
            clock=lambda: self._now,
        )
        self.runs = RunRecorder(
            registry=self.registry,
            placer=self.live,
            metrics=metrics,
            on_trained=self._trained,
        )
        self.timeline: list[TimelineEvent] = []
        self._ledger_seen = 0
        self._backoff = Backoff(
            settings.retrain_backoff_base_seconds, settings.retrain_backoff_cap_seconds
        )
        self._failures, self._retry_at = 0, 0.0

    def run(self) -> ReplayResult:
        started = time.monotonic()
        n = len(self.bars)
        records = bar_records(self.symbol, self.bars)
        served = np.full(n, np.nan)
        versions: list[str | None] = [None] * n
        schedule = _schedule(n, self.settings.min_bars, self.settings.retrain_every_bars)
        with ProcessPoolExecutor(max_workers=self.settings.train_workers) as pool:
            swaps = self._submit_always_swap(pool, schedule)
            for i, bar in enumerate(records):
                self._now = float(bar.ts)
                self.trigger.add_bars(self.store.upsert([bar]))
                updates = self.live.on_batch({self.symbol: [bar]})
                served[i], versions[i] = self._served(bar.ts, updates)
                self.watch.on_updates(updates)
                self.trigger.request_due([self.symbol], "new_bars")
                self._train_pending(i)
                if any(u.decision is not None or u.ended is not None for u in updates):
                    self._sync_timeline(i)
                if self._progress is not None and (i % 50 == 0 or i == n - 1):
                    self._progress(i + 1, n)
            models = {i: f.result() for i, f in swaps.items()}
        frozen = self._first_champion()
        features = compute_features(self.bars)
        return ReplayResult(
            symbol=self.symbol,
            ts=self.bars.ts,
            close=self.bars.close,
            served={
                "ctd": served,
                "frozen": self._frozen(features, frozen),
                "always_swap": self._piecewise(features, models),
                "naive": self._naive(schedule),
            },
            ctd_version=versions,
            timeline=self.timeline,
            frozen_version=None if frozen is None else frozen[1],
            seconds=time.monotonic() - started,
        )

    # -- the lifecycle ---------------------------------------------------------------
    def _served(self, ts: int, updates: list[LiveUpdate]) -> tuple[float, str | None]:
        """The value (P(up) or return) and version of the record the daemon would serve."""
        by_slot = {p.slot: p for u in updates for p in u.predictions if p.bar_ts == ts}
        if not by_slot:
            return float("nan"), None
        pick = by_slot[served_slot(self.symbol, ts, by_slot, self.settings.canary_share)]
        return pick.value, pick.version

    def _trained(self, symbol: str, bar_count: int) -> None:
        self.trigger.trained(symbol, bar_count)

    def _monitor_retrain(self, symbol: str, reason: str) -> bool:
        return self.trigger.request(symbol, reason)

    def _train_pending(self, i: int) -> None:
        if self.queue.pending is None or self._now < self._retry_at:
            return
        bar_count, reason = self.queue.pending
        self.queue.pending = None
        ts = int(self.bars.ts[i])
        self.timeline.append(TimelineEvent(i, ts, "training", detail=reason))
        job = TrainJob(self.symbol, uuid.uuid4().hex[:12], bar_count, reason, self._now)
        window = self.store.load(self.symbol, last_n=self.settings.train_window_bars)
        config = job_config(self.settings.train_config, self.registry, self.symbol)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ctd-backtest-", dir=self.workdir) as tmp:
            staging = Path(tmp)
            try:
                result = train_symbol(self.symbol, window, config, staging)
                outcome = JobOutcome(
                    job, True, staging, time.monotonic() - started, metadata=result.metadata
                )
            except Exception as exc:  # recorded as training_failed, as the daemon would
                error = f"{type(exc).__name__}: {exc}"
                outcome = JobOutcome(job, False, staging, time.monotonic() - started, error=error)
            self.runs.record(outcome)
        # As the scheduler does: a failed run backs the symbol off (on the simulated clock).
        self._failures = 0 if outcome.ok else self._failures + 1
        self._retry_at = self._now + self._backoff.delay(self._failures)
        self._sync_timeline(i)

    def _sync_timeline(self, i: int) -> None:
        history = self.registry.history(self.symbol)
        ts = int(self.bars.ts[i])
        for line in history[self._ledger_seen :]:
            detail = line.reason or ""
            self.timeline.append(TimelineEvent(i, ts, line.event, line.to_version, detail))
        self._ledger_seen = len(history)

    def _first_champion(self) -> tuple[int, str] | None:
        for event in self.timeline:
            if event.event == "champion_bootstrapped" and event.version is not None:
                return event.bar, event.version
        return None

    # -- comparison policies -----------------------------------------------------------
    def _config(self) -> TrainConfig:
        base = self.settings.train_config
        return replace(base, gates=UNGATED)

    def _submit_always_swap(
        self, pool: ProcessPoolExecutor, schedule: list[int]
    ) -> dict[int, Future[str | None]]:
        out = {}
        for i in schedule:
            start = max(0, i + 1 - self.settings.train_window_bars)
            window = _slice(self.bars, start, i + 1)
            directory = self.workdir / "always_swap" / f"{i:06d}"
            out[i] = pool.submit(_train_ungated, self.symbol, window, self._config(), directory)
        return out

    def _frozen(self, features: FloatArray, first: tuple[int, str] | None) -> FloatArray:
        out = np.full(len(self.bars), np.nan)
        if first is None:
            return out
        bar, version = first
        model = _load(self.registry.model_path(self.symbol, version))
        out[bar + 1 :] = _score(model, features, bar + 1, len(self.bars))
        return out

    def _piecewise(self, features: FloatArray, models: dict[int, str | None]) -> FloatArray:
        """Each model from the bar after its training to the next model's."""
        out = np.full(len(self.bars), np.nan)
        points = sorted(models)
        for k, i in enumerate(points):
            path = models[i]
            stop = points[k + 1] + 1 if k + 1 < len(points) else len(self.bars)
            if path is not None and i + 1 < stop:
                out[i + 1 : stop] = _score(_load(Path(path)), features, i + 1, stop)
        return out

    def _naive(self, schedule: list[int]) -> FloatArray:
        out = np.full(len(self.bars), np.nan)
        close = self.bars.close
        for k, i in enumerate(schedule):
            start = max(0, i + 1 - self.settings.train_window_bars)
            h = self.settings.horizon_bars
            window = close[start : i + 1]
            stop = schedule[k + 1] + 1 if k + 1 < len(schedule) else len(self.bars)
            if len(window) > h:
                moves = np.log(window[h:] / window[:-h])
                naive = moves if self.settings.target == RETURN else moves > 0
                out[i + 1 : stop] = float(np.mean(naive))
        return out


def _schedule(n: int, min_bars: int, every: int) -> list[int]:
    """Bar indices where the bar-count policy trains (after bar i, on bars 0..i)."""
    policy, out, trained = TriggerPolicy(min_bars, every), [], None
    for i in range(n):
        if policy.due(i + 1, trained):
            out.append(i)
            trained = i + 1
    return out


def _slice(bars: Bars, start: int, stop: int) -> Bars:
    s = slice(start, stop)
    return Bars(bars.ts[s], bars.open[s], bars.high[s], bars.low[s], bars.close[s], bars.volume[s])


def _train_ungated(symbol: str, bars: Bars, config: TrainConfig, directory: Path) -> str | None:
    """A worker process: the best candidate with every gate off; the model's path, or None."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        result = train_symbol(symbol, bars, config, directory)
    except Exception:  # too little data for a split, say: this policy serves nothing then
        return None
    return None if result.model_path is None else str(result.model_path)


def _load(path: Path) -> LiveModel:
    return LiveModel(OnnxScorer(path), None)


def _score(model: LiveModel, features: FloatArray, start: int, stop: int) -> FloatArray:
    """Predictions of bars start..stop-1 from their feature rows (and the window before them)."""
    first_row = max(0, start - model.window + 1)
    rows = features[first_row:stop]
    k = stop - start
    if len(rows) < k + model.window - 1:  # the first bars lack a full window: NaN there
        pad = np.full((k + model.window - 1 - len(rows), features.shape[1]), np.nan)
        rows = np.vstack((pad, rows))
    out: FloatArray = model.score(rows.astype(np.float32), k)
    return out
