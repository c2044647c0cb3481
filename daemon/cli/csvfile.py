"""OHLCV CSV files: the offline tools' input, held to the same rules as bar events."""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Final

import numpy as np

from daemon.errors import CsvFormatError
from daemon.kafka.bars import MAX_TS, MIN_TS, format_ts
from trainers.data import Bars
from trainers.features import MAX_PRICE, MAX_VOLUME, MIN_PRICE

TIME_COLUMNS: Final = ("ts", "timestamp", "date")
PRICE_COLUMNS: Final = ("open", "high", "low", "close")
_EPOCH: Final = re.compile(r"[+-]?\d+")


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
        if not MIN_PRICE <= value <= MAX_PRICE:
            raise CsvFormatError(
                path,
                f"column {name!r} is {value!r}, outside {MIN_PRICE:g}..{MAX_PRICE:g} "
                "(the prices the features can represent)",
                line,
            )
    if v < 0:
        raise CsvFormatError(path, f"column 'volume' must be >= 0, got {v!r}", line)
    if v > MAX_VOLUME:
        raise CsvFormatError(path, f"column 'volume' must be <= {MAX_VOLUME:g}, got {v!r}", line)
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
