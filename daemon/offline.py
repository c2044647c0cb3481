"""Offline tools on the daemon's own code path: train from a CSV file, write a deployment manifest.

``train_csv`` does what a worker and the daemon do for one job (same settings,
same ``train_config``, same first-champion significance budget, same registry
decisions and ledger lines) without Kafka or the bar store, so a model trained
from a file is judged and deployed exactly like one trained from live bars.
``manifest`` is the hand-off to whatever serves the models: every champion and
shadow with its file, checksum and input contract.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from daemon.events import MAX_TS, MIN_TS, format_ts
from daemon.jobs import candidate_summary, job_config, train_config
from daemon.settings import Settings
from deploy.events import RegistryEvent, utc_now
from deploy.registry import Registry
from trainers.data import Bars, validate_symbol
from trainers.errors import InvalidInputError, UnknownTrainerError
from trainers.onnx_io import OnnxScorer
from trainers.pipeline import train_symbol
from trainers.table import TRAINERS

TIME_COLUMNS: Final = ("ts", "timestamp", "date")
PRICE_COLUMNS: Final = ("open", "high", "low", "close")
MANIFEST_VERSION: Final = 1
_EPOCH: Final = re.compile(r"[+-]?\d+")

Slot = Literal["champion", "shadow"]


class CsvFormatError(ValueError):
    """A CSV file that is not valid OHLCV; names the file, the line and the problem."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        self.path, self.problem, self.line = path, problem, line
        where = f"{path}: line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


# --- reading OHLCV CSV ----------------------------------------------------------------


def read_ohlcv_csv(path: Path) -> Bars:
    """Bars from a CSV file with a header row; rows may come in any order.

    Columns (headers case-insensitive, extra columns ignored): one time column
    ``ts``, ``timestamp`` or ``date``, then ``open``, ``high``, ``low``,
    ``close``, ``volume``. Times are ISO 8601 with a timezone, a date alone
    (00:00 UTC), or integer epoch seconds (digits only, so ``20250101`` is read
    as seconds, not as a date). Every row obeys the bar-event rules (finite
    positive prices, high >= max(open, close), low <= min(open, close), finite
    volume >= 0); the first bad row, a duplicate time or a malformed header
    raises ``CsvFormatError`` naming the line and column.
    """
    path = Path(path)
    rows: list[tuple[int, int, float, float, float, float, float]] = []  # (ts, line, ohlcv)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise CsvFormatError(path, "empty file: expected a header row")
        columns = _columns(path, header)
        for record in reader:
            line = reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue  # blank lines, e.g. a trailing one
            if len(record) != len(header):
                raise CsvFormatError(
                    path, f"has {len(record)} fields, the header has {len(header)}", line
                )
            rows.append(_parse_row(path, line, record, columns))
    if not rows:
        raise CsvFormatError(path, "no data rows after the header")
    rows.sort(key=lambda r: r[0])
    for prev, cur in itertools.pairwise(rows):
        if cur[0] == prev[0]:
            raise CsvFormatError(
                path, f"duplicate time {format_ts(cur[0])} (same as line {prev[1]})", cur[1]
            )
    arr = np.asarray([r[2:] for r in rows], dtype=np.float64)
    return Bars(
        ts=np.asarray([r[0] for r in rows], dtype=np.int64),
        open=arr[:, 0].copy(),
        high=arr[:, 1].copy(),
        low=arr[:, 2].copy(),
        close=arr[:, 3].copy(),
        volume=arr[:, 4].copy(),
    )


def _columns(path: Path, header: Sequence[str]) -> dict[str, int]:
    """Index of ``time``, the prices and ``volume`` in the header; CsvFormatError if unusable."""
    names = [h.strip().lower() for h in header]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name and name in seen:
            raise CsvFormatError(path, f"column {name!r} appears twice in the header", 1)
        seen[name] = i
    times = [n for n in TIME_COLUMNS if n in seen]
    if len(times) != 1:
        problem = "has no time column" if not times else f"has several time columns {times}"
        raise CsvFormatError(
            path, f"header {problem}: expected exactly one of {', '.join(TIME_COLUMNS)}", 1
        )
    missing = [n for n in (*PRICE_COLUMNS, "volume") if n not in seen]
    if missing:
        raise CsvFormatError(
            path, f"header lacks column(s) {', '.join(missing)} (found: {', '.join(names)})", 1
        )
    return {"time": seen[times[0]], **{n: seen[n] for n in (*PRICE_COLUMNS, "volume")}}


def _parse_row(
    path: Path, line: int, record: Sequence[str], columns: Mapping[str, int]
) -> tuple[int, int, float, float, float, float, float]:
    def number(name: str) -> float:
        text = record[columns[name]].strip()
        try:
            value = float(text)
        except ValueError:
            raise CsvFormatError(path, f"column {name!r} is not a number: {text!r}", line) from None
        if not math.isfinite(value):
            raise CsvFormatError(path, f"column {name!r} must be finite, got {text!r}", line)
        return value

    try:
        ts = _parse_time(record[columns["time"]].strip())
    except ValueError as exc:
        raise CsvFormatError(path, f"time column: {exc}", line) from None
    o, h, lo, c, v = (number(n) for n in (*PRICE_COLUMNS, "volume"))
    for name, value in zip(PRICE_COLUMNS, (o, h, lo, c), strict=True):
        if value <= 0:
            raise CsvFormatError(path, f"column {name!r} must be > 0, got {value!r}", line)
    if v < 0:
        raise CsvFormatError(path, f"column 'volume' must be >= 0, got {v!r}", line)
    if h < max(o, c):
        raise CsvFormatError(path, f"high {h!r} is below max(open, close) {max(o, c)!r}", line)
    if lo > min(o, c):
        raise CsvFormatError(path, f"low {lo!r} is above min(open, close) {min(o, c)!r}", line)
    return ts, line, o, h, lo, c, v


def _parse_time(text: str) -> int:
    """Epoch seconds UTC from the forms ``read_ohlcv_csv`` accepts; ValueError naming the text."""
    if _EPOCH.fullmatch(text):
        ts = int(text)
    else:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            day = None
        if day is not None:
            ts = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    f"{text!r} is not ISO 8601 (date, or date and time with timezone) "
                    "nor integer epoch seconds"
                ) from None
            if moment.utcoffset() is None:
                raise ValueError(f"{text!r} has a time but no timezone (add Z or +00:00)")
            if moment.microsecond:
                raise ValueError(f"{text!r} has sub-second precision")
            ts = int(moment.timestamp())
    if not MIN_TS <= ts <= MAX_TS:
        raise ValueError(f"{text!r} is outside years 1900..9999 (epoch milliseconds?)")
    return ts


# --- training from a file -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainOutcome:
    """What ``train_csv`` did. ``version``/``slot`` are None when no candidate passed.

    ``metrics``: the chosen model's test metrics. ``candidates``: one summary per
    candidate (trainer, passed, test_accuracy, failed_gates, error).
    """

    symbol: str
    n_bars: int
    passed: bool
    version: str | None
    slot: Slot | None
    trainer: str | None
    reason: str
    metrics: dict[str, Any] | None
    candidates: list[dict[str, Any]]
    events: list[str]


def train_csv(
    settings: Settings,
    csv_path: Path,
    symbol: str,
    trainers: Sequence[str] | None = None,
) -> TrainOutcome:
    """Train ``symbol`` on the bars of ``csv_path`` into the registry, as the daemon would.

    Uses the newest ``settings.train_window_bars`` bars and ``train_config(settings)``
    (``trainers`` replaces its candidate list). A passing model is added as a new
    version and placed (first one: champion, else shadow; a running daemon's live
    path picks the change up from slots.json); otherwise a ``candidate_rejected``
    line is recorded, and a run that raises records ``training_failed`` before the
    error propagates. Writes only under ``settings.data_dir``.

    Raises InvalidSymbolError (before touching anything), CsvFormatError,
    UnknownTrainerError, and the pipeline's errors (e.g. InsufficientDataError).
    """
    validate_symbol(symbol)
    names = _trainer_names(trainers)
    bars = read_ohlcv_csv(csv_path).tail(settings.train_window_bars)
    registry = Registry(settings.registry_dir)
    base = train_config(settings)
    config = job_config(base if names is None else replace(base, trainers=names), registry, symbol)
    staging_root = settings.data_dir / "staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    actor, note = "cli", f"ctd train --csv {Path(csv_path).name}"
    with tempfile.TemporaryDirectory(prefix=f"offline-{symbol}-", dir=staging_root) as tmp:
        try:
            result = train_symbol(symbol, bars, config, Path(tmp))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            evidence = {"source": str(csv_path), "error": error, "bar_count": len(bars)}
            registry.record(
                RegistryEvent(
                    "training_failed", symbol, None, None, evidence, utc_now(), actor, error
                )
            )
            raise
        meta = result.metadata
        summary = candidate_summary(meta)
        if not result.passed:
            evidence = {"source": str(csv_path), "reason": result.reason, "candidates": summary}
            registry.record(
                RegistryEvent(
                    "candidate_rejected",
                    symbol,
                    None,
                    None,
                    evidence,
                    utc_now(),
                    actor,
                    result.reason,
                )
            )
            return TrainOutcome(
                symbol=symbol,
                n_bars=len(bars),
                passed=False,
                version=None,
                slot=None,
                trainer=None,
                reason=result.reason,
                metrics=None,
                candidates=summary,
                events=["candidate_rejected"],
            )
        version = registry.add_version(symbol, Path(tmp))
    events = registry.place(symbol, version, actor=actor, reason=note)
    slot: Slot = "champion" if events[-1].event == "champion_bootstrapped" else "shadow"
    test = ((meta.get("metrics") or {}).get("test")) or None
    return TrainOutcome(
        symbol=symbol,
        n_bars=len(bars),
        passed=True,
        version=version,
        slot=slot,
        trainer=result.chosen,
        reason=result.reason,
        metrics=test,
        candidates=summary,
        events=[e.event for e in events],
    )


def _trainer_names(trainers: Sequence[str] | None) -> tuple[str, ...] | None:
    if trainers is None:
        return None
    names = tuple(trainers)
    if not names:
        raise InvalidInputError("at least one trainer is required, got an empty list")
    for name in names:
        if name not in TRAINERS:
            raise UnknownTrainerError(name, TRAINERS)
    return names


# --- deployment manifest --------------------------------------------------------------


def default_manifest_path(settings: Settings) -> Path:
    return settings.data_dir / "manifest.json"


def manifest(settings: Settings, out: Path | None = None) -> dict[str, Any]:
    """Write and return the deployment manifest of every symbol's champion and shadow.

    Per slot: version, trainer, ``model_path`` relative to the registry root, the
    sha256 and size of model.onnx, the ONNX input contract read from the file
    itself (name, shape with ``null`` for the dynamic batch axis, window,
    n_features, output), the feature spec, test metrics, data range and
    created_at. Written atomically to ``out`` (default <data_dir>/manifest.json).
    """
    registry = Registry(settings.registry_dir)
    symbols: dict[str, Any] = {}
    for symbol in registry.symbols():
        slots = registry.slots(symbol)
        symbols[symbol] = {
            "champion": _manifest_entry(registry, symbol, slots.champion),
            "shadow": _manifest_entry(registry, symbol, slots.shadow),
        }
    doc: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "generated_at": utc_now(),
        "registry": str(registry.root),
        "symbols": symbols,
    }
    target = default_manifest_path(settings) if out is None else Path(out)
    write_atomic(target, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())
    return doc


def _manifest_entry(registry: Registry, symbol: str, version: str | None) -> dict[str, Any] | None:
    if version is None:
        return None
    path = registry.model_path(symbol, version)
    meta = registry.metadata(symbol, version)
    scorer = OnnxScorer(path)
    shape: list[int | None] = [None, scorer.n_features]
    if scorer.window > 1:
        shape.insert(1, scorer.window)
    data = meta.get("data") or {}
    return {
        "version": version,
        "trainer": meta.get("trainer"),
        "params": meta.get("params"),
        "model_path": path.relative_to(registry.root).as_posix(),
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "onnx": {
            "input": scorer.input_name,
            "shape": shape,
            "window": scorer.window,
            "n_features": scorer.n_features,
            "output": scorer.output_name,
        },
        "feature_spec": meta.get("feature_spec"),
        "test_metrics": (meta.get("metrics") or {}).get("test"),
        "data": {k: data.get(k) for k in ("n_bars", "first_ts", "last_ts", "sha256")},
        "config_sha256": meta.get("config_sha256"),
        "created_at": meta.get("created_at"),
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
