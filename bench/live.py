"""Live scoring cost per bar: features + champion + shadow + trial + prediction log.

    python -m bench.live [--bars 10000] [--train-bars 3000] [--pairs xgboost,tcn,lstm]
                         [--preset tiny] [--batches 1,10,100]

For each model family, two versions are trained by ``trainers.pipeline.train_symbol``
on synthetic bars (planted signal; lenient gates and no walk-forward, since only
latency matters here), added to a real Registry and placed as champion and shadow.
A ``deploy.live.LiveScorer`` with a real PredictionStore (SQLite WAL, synchronous=NORMAL)
and a real BarStore, all in a temp dir ($CTD_BENCH_DIR or the system's), then
scores --bars live bars fed with ``on_bars`` (each call's bars stored first,
untimed, as the daemon does): one bar per call, then batches of 10 and 100 on
fresh bars. The trial never decides, so every bar pays for it. Each call is timed
whole (features, both onnxruntime sessions, trial update, the log's commit); the
log's commit is also timed on its own ("rest" = the call minus its commit:
features, sessions, trial), since its fsync is the part a faster CPU does not
shrink. The first 20 calls of each run are warm-up and not counted.

Before the live runs, each pair's fast path is timed piecewise, bar by bar, side by side
with the path as wired today (--fast-bars bars, interleaved, so CPU contention hits both
alike): features by ``feature_tail`` vs ``trainers.features_stream.FeatureStream.push``
(rows checked bit-identical), and champion + shadow by ``LiveModel.score`` vs
``OnnxScorer.predict_latest`` (its bound-buffer one-row path).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import timeit
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.store.bars import BarStore
from daemon.store.predictions import PredictionStore
from deploy.live import LiveScorer
from deploy.registry import Registry
from deploy.scoring import LiveModel, feature_tail
from deploy.sequential import PromotionTestConfig
from deploy.trial import LogWrite, Prediction, TrialState
from monitors.gates import GateConfig
from trainers.config import TrainConfig
from trainers.data import Bars, bar_records
from trainers.features import FEATURE_SPEC, compute_features
from trainers.features_stream import FeatureStream
from trainers.onnx_io import OnnxScorer
from trainers.pipeline import train_symbol
from trainers.synthetic import MarketSpec, generate_bars

WARMUP_CALLS = 20
LENIENT = GateConfig(
    max_train_val_gap=1.0, max_val_test_diff=1.0, require_beat_baseline=False, min_test_rows=1
)
# A trial that never decides: every bar pays for the test's update.
NEVER_DECIDES = PromotionTestConfig(alpha=1e-9, min_samples=10**6, max_samples=10**7)


@dataclass
class TimedLog:
    """The real PredictionStore, with each commit's duration recorded."""

    store: PredictionStore
    commits: list[float] = field(default_factory=list)

    def load_state(self, symbol: str) -> TrialState | None:
        return self.store.load_state(symbol)

    def unresolved(self, symbol: str, before_ts: int | None = None) -> list[Prediction]:
        return self.store.unresolved(symbol, before_ts)

    def recent_outcomes(self, symbol: str, version: str, limit: int) -> list[tuple[float, float]]:
        return self.store.recent_outcomes(symbol, version, limit)

    def commit(self, writes: Sequence[LogWrite]) -> None:
        t = time.perf_counter()
        self.store.commit(writes)
        self.commits.append(time.perf_counter() - t)


def slice_bars(bars: Bars, start: int, stop: int) -> Bars:
    s = slice(start, stop)
    return Bars(bars.ts[s], bars.open[s], bars.high[s], bars.low[s], bars.close[s], bars.volume[s])


def train_version(
    symbol: str, trainer: str, preset: str, bars: Bars, *, registry: Registry, out: Path
) -> tuple[str, float]:
    params = {} if trainer == "xgboost" else {trainer: {"preset": preset}}
    config = TrainConfig(
        trainers=(trainer,), trainer_params=params, walk_forward_folds=0, gates=LENIENT
    )
    t = time.perf_counter()
    result = train_symbol(symbol, bars, config, out)
    seconds = time.perf_counter() - t
    if not result.passed:
        raise RuntimeError(f"{symbol} {trainer}: no model ({result.reason})")
    return registry.add_version(symbol, out), seconds


def percentiles(seconds: list[float]) -> tuple[float, float]:
    us = np.asarray(seconds) * 1e6
    return float(np.percentile(us, 50)), float(np.percentile(us, 99))


def feature_costs() -> str:
    """compute_features on one bar's dependency window and on a training-sized history."""
    bars = generate_bars(MarketSpec("FEAT", seed=3), 5000)
    tail = bars.tail(FEATURE_SPEC.lookback)
    out = []
    for name, b, n in (("one bar (its lookback tail)", tail, 2000), ("5,000 bars", bars, 20)):
        best = min(timeit.repeat(lambda b=b: compute_features(b), number=n, repeat=5)) / n
        out.append(f"{name} {best * 1e6:,.0f} us")
    return "features (best of 5): " + ", ".join(out)


def fast_path_costs(scorers: Sequence[OnnxScorer], bars: Bars, n: int) -> list[str]:
    """Per bar, interleaved: features and both sessions as live scoring runs them today
    (feature_tail, LiveModel.score) beside the fast path (FeatureStream, predict_latest)."""
    w = max(s.window for s in scorers)
    models = [LiveModel(s, None) for s in scorers]
    need = FEATURE_SPEC.lookback + w - 1
    stream = FeatureStream.from_bars(slice_bars(bars, 0, need), keep=w)
    cols = [getattr(bars, c).tolist() for c in ("ts", "open", "high", "low", "close", "volume")]
    times: dict[str, list[float]] = {k: [] for k in ("tail", "stream", "score", "latest")}
    clock = time.perf_counter
    for i in range(need, need + n):
        history = slice_bars(bars, i + 1 - need, i + 1)
        t0 = clock()
        rows = feature_tail(history, w)
        t1 = clock()
        row = stream.push(*(c[i] for c in cols))
        t2 = clock()
        fast_rows = stream.rows(w)
        t3 = clock()
        slow = [float(m.score(rows, 1)[0]) for m in models]
        t4 = clock()
        fast = [s.predict_latest(fast_rows) for s in scorers]
        t5 = clock()
        if not np.array_equal(row.view(np.uint64), rows[-1].view(np.uint64)) or fast != slow:
            raise RuntimeError(f"fast path differs at bar {i}: {row} {rows[-1]} {fast} {slow}")
        for key, dt in zip(times, (t1 - t0, t2 - t1 + t3 - t2, t4 - t3, t5 - t4), strict=True):
            times[key].append(dt)
    (tail50, tail99), (st50, st99), (sc50, sc99), (la50, la99) = (
        percentiles(v[WARMUP_CALLS:]) for v in times.values()
    )
    return [
        f"  fast path, {n} bars interleaved: features feature_tail p50 {tail50:.1f} p99 "
        f"{tail99:.1f} us vs FeatureStream.push+rows p50 {st50:.1f} p99 {st99:.1f} us "
        f"(x{tail50 / st50:.1f} p50, x{tail99 / st99:.1f} p99, rows bit-identical)",
        f"  fast path: champion+shadow LiveModel.score p50 {sc50:.1f} p99 {sc99:.1f} us vs "
        f"predict_latest p50 {la50:.1f} p99 {la99:.1f} us (x{sc50 / la50:.1f} p50, "
        f"x{sc99 / la99:.1f} p99, same P(up))",
    ]


def bench_pair(trainer: str, args: argparse.Namespace, tmp: Path) -> list[str]:
    symbol = f"LIVE{trainer.upper()}"
    total = args.train_bars + args.bars * len(args.batches) + WARMUP_CALLS * sum(args.batches)
    bars = generate_bars(MarketSpec(symbol, seed=11, signal_strength=1.0), total)
    store = BarStore(tmp / f"{trainer}-bars.sqlite")
    registry = Registry(tmp / f"{trainer}-registry")
    records = bar_records(symbol, bars)
    store.upsert(records[: args.train_bars])

    train = slice_bars(bars, 0, args.train_bars)
    older = slice_bars(bars, 0, args.train_bars - args.train_bars // 10)
    champion, fit_c = train_version(
        symbol, trainer, args.preset, older, registry=registry, out=tmp / f"{trainer}-c"
    )
    shadow, fit_s = train_version(
        symbol, trainer, args.preset, train, registry=registry, out=tmp / f"{trainer}-s"
    )
    registry.place(symbol, champion)
    registry.place(symbol, shadow)
    window = registry.metadata(symbol, champion).onnx.window
    preset = "" if trainer == "xgboost" else f" preset {args.preset}"
    lines = [
        f"{trainer}{preset}: window {window}, trained in {fit_c:.1f} s / {fit_s:.1f} s "
        "(champion / shadow)"
    ]
    if args.fast_bars:
        scorers = [OnnxScorer(registry.model_path(symbol, v)) for v in (champion, shadow)]
        lines += fast_path_costs(scorers, bars, args.fast_bars)

    log = TimedLog(PredictionStore(tmp / f"{trainer}-predictions.sqlite"))
    scorer = LiveScorer(registry, log, lambda s, n: store.load(s, last_n=n), NEVER_DECIDES)
    start = args.train_bars
    for size in args.batches:
        calls, seconds = args.bars // size + WARMUP_CALLS, []
        log.commits.clear()
        predictions = 0
        for i in range(calls):
            batch = records[start + i * size : start + (i + 1) * size]
            store.upsert(batch)  # as in the daemon: stored first, then scored (not timed)
            t = time.perf_counter()
            update = scorer.on_bars(symbol, batch)
            seconds.append(time.perf_counter() - t)
            if update.errors:
                raise RuntimeError(f"live scoring failed: {update.errors}")
            if i >= WARMUP_CALLS:
                predictions += len(update.predictions)
        start += calls * size
        if predictions != 2 * (calls - WARMUP_CALLS) * size:
            raise RuntimeError(f"{trainer}: {predictions} predictions, expected 2 per bar")
        if len(log.commits) != calls:
            raise RuntimeError(
                f"{len(log.commits)} log commits for {calls} calls, expected one each"
            )
        call_p50, call_p99 = percentiles(seconds[WARMUP_CALLS:])
        commit_p50, commit_p99 = percentiles(log.commits[WARMUP_CALLS:])
        rest = [a - b for a, b in zip(seconds, log.commits, strict=True)][WARMUP_CALLS:]
        rest_p50, rest_p99 = percentiles(rest)
        per_bar = sum(seconds[WARMUP_CALLS:]) / (calls - WARMUP_CALLS) / size * 1e6
        lines.append(
            f"  {size:>4} bar/call  call p50 {call_p50:7.0f} p99 {call_p99:7.0f} us | per bar "
            f"mean {per_bar:6.0f} us | log commit p50 {commit_p50:6.0f} p99 {commit_p99:6.0f} us"
            f" | rest p50 {rest_p50:6.0f} p99 {rest_p99:6.0f} us"
        )
    log.store.close()
    store.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=10_000, help="live bars per batch size")
    parser.add_argument("--train-bars", type=int, default=3000)
    parser.add_argument("--pairs", default="xgboost,tcn,lstm")
    parser.add_argument("--preset", default="tiny", help="preset of the sequence models")
    parser.add_argument("--batches", default="1,10,100", help="bars per on_bars call")
    parser.add_argument(
        "--fast-bars", type=int, default=3000, help="bars for the fast-path comparison (0: skip)"
    )
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    for size in args.batches:
        if args.bars % size:
            parser.error(f"--bars must be a multiple of every batch size ({size})")

    print(
        f"{args.bars} live bars per batch size, one symbol, champion + shadow of the same family; "
        f"{os.cpu_count()} CPUs; onnxruntime 1 thread per session"
    )
    print(feature_costs())
    with tempfile.TemporaryDirectory(dir=os.environ.get("CTD_BENCH_DIR")) as tmp:
        for trainer in args.pairs.split(","):
            for line in bench_pair(trainer, args, Path(tmp)):
                print(line, flush=True)
    print("target: p99 < 1000 us per bar for XGBoost pairs (bar-at-a-time call)")


if __name__ == "__main__":
    main()
