"""Every trainer on the same bars: fit time, native vs ONNX latency and throughput, size, accuracy.

    python -m bench.zoo [--bars 5000] [--preset lightweight] [--repeats 300]

One run, one process, 5,000 synthetic bars with a planted signal (strength
1.0). Each trainer except the naive baseline is fitted with the same preset,
exported to ONNX and timed both ways through the code paths that run in
production: ``model.predict_proba`` (torch eager / xgboost / scikit-learn) and
``OnnxScorer.predict_proba`` (onnxruntime). Both run on one thread, as the
daemon's training and scoring do. Single-row latency is the median of
``--repeats`` calls after a warm-up; batch throughput is rows/s over batches
of 256 rows. The TCN / LSTM fit-time ratio compares the two presets of the
same name (about the same parameter count).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 256
WARMUP = 20


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def throughput(call: Callable[[np.ndarray], object], batches: list[np.ndarray]) -> float:
    """Rows per second over the batches (after one warm-up batch)."""
    call(batches[0])
    started = time.perf_counter()
    for batch in batches:
        call(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def bench_one(name: str, data: Any, preset: str, repeats: int, tmp: Path) -> dict[str, float]:
    from monitors.base import NullMonitor
    from trainers.metrics import classification_metrics
    from trainers.onnx_io import OnnxScorer
    from trainers.table import make_trainer

    params = {"preset": preset}
    started = time.perf_counter()
    model = make_trainer(name, **params).fit(data, NullMonitor(), seed=0)
    fit = time.perf_counter() - started
    path = tmp / f"{name}.onnx"
    model.export_onnx(path)
    scorer = OnnxScorer(path)

    x = data.inputs("test", model.window)
    accuracy = classification_metrics(data.y_test, scorer.predict_proba(x))["accuracy"]
    row = x[-1:]
    native_row = median_seconds(lambda: model.predict_proba(row), repeats)
    onnx_row = median_seconds(lambda: scorer.predict_proba(row), repeats)
    all_rows = data.inputs("train", model.window)
    batches = [all_rows[i : i + BATCH] for i in range(0, len(all_rows) - BATCH + 1, BATCH)]
    fitted = model.params
    return {
        "fit_s": fit,
        # Monitor steps: epochs (torch), boosting rounds (xgboost), growth steps (random forest).
        "epochs": float(fitted.get("epochs_run", fitted.get("n_rounds", fitted.get("n_steps", 0)))),
        "window": float(model.window),
        "params": float(model.n_params),
        "accuracy": float(accuracy or 0.0),
        "native_row_us": native_row * 1e6,
        "onnx_row_us": onnx_row * 1e6,
        "row_speedup": native_row / onnx_row,
        "native_batch_rows_s": throughput(model.predict_proba, batches),
        "onnx_batch_rows_s": throughput(scorer.predict_proba, batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--preset", default="lightweight")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()

    from monitors.base import NullMonitor
    from trainers.features import training_matrix
    from trainers.metrics import classification_metrics
    from trainers.synthetic import MarketSpec, generate_bars
    from trainers.table import TRAINERS, make_trainer, trainer_class
    from trainers.torch_base import TorchTrainer

    bars = generate_bars(MarketSpec("BENCH", 7, signal_strength=1.0), args.bars)
    m = training_matrix(bars)
    data = m.dataset(val_fraction=0.15, test_fraction=0.15)
    naive = make_trainer("naive").fit(data, NullMonitor(), seed=0)
    base = classification_metrics(data.y_test, naive.predict_proba(data.X_test))["accuracy"]
    print(
        f"{args.bars} bars, {len(data.y_train)} train / {len(data.y_test)} test rows, "
        f"preset {args.preset!r}, naive test accuracy {base:.3f}, one thread each side"
    )

    results: dict[str, dict[str, float]] = {}
    names = [n for n in TRAINERS if n != "naive"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results[name] = bench_one(name, data, args.preset, args.repeats, Path(tmp))

    header = (
        f"{'trainer':<15}{'fit s':>7}{'epochs':>7}{'win':>5}{'params':>8}{'test acc':>9}"
        f"{'native 1-row us':>16}{'onnx 1-row us':>14}{'speedup':>8}"
        f"{'native 256 rows/s':>18}{'onnx 256 rows/s':>16}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<15}{r['fit_s']:>7.2f}{r['epochs']:>7.0f}{r['window']:>5.0f}"
            f"{r['params']:>8.0f}{r['accuracy']:>9.3f}{r['native_row_us']:>16.1f}"
            f"{r['onnx_row_us']:>14.1f}{r['row_speedup']:>7.1f}x"
            f"{r['native_batch_rows_s']:>18,.0f}{r['onnx_batch_rows_s']:>16,.0f}"
        )
    # By class, not by name: tree models and rule baselines have no torch eager side.
    torch_names = [n for n in names if issubclass(trainer_class(n), TorchTrainer)]
    worst = min(torch_names, key=lambda n: results[n]["row_speedup"])
    print(
        f"\nONNX single-row speedup over torch eager: min {results[worst]['row_speedup']:.1f}x "
        f"({worst}); target >= 5x"
    )
    tcn, lstm = results["tcn"], results["lstm"]
    print(
        f"TCN / LSTM fit time: {tcn['fit_s'] / lstm['fit_s']:.2f} "
        f"({tcn['fit_s']:.2f} s / {lstm['fit_s']:.2f} s; per epoch "
        f"{(tcn['fit_s'] / tcn['epochs']) / (lstm['fit_s'] / lstm['epochs']):.2f}; "
        f"params {tcn['params']:.0f} vs {lstm['params']:.0f})"
    )


if __name__ == "__main__":
    main()
