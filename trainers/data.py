"""Bars as column arrays and as row records, and the symbol rule every package shares.

A symbol becomes a path component (registry/<SYMBOL>/...) and a metric label,
so it is validated once, here, by a strict whitelist rather than by escaping.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

SYMBOL_PATTERN: Final = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,31}")
"""Upper-case letters, digits, ``.``, ``_``, ``-``; starts alphanumeric; <= 32 chars.

No ``/``, no ``..`` prefix, no control characters, no lower/upper-case twins
that would collide on case-insensitive file systems.
"""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class InvalidSymbolError(ValueError):
    """A symbol that cannot be used as a file name or metric label."""

    def __init__(self, symbol: object) -> None:
        self.symbol = symbol
        super().__init__(
            f"invalid symbol {symbol!r}: must match {SYMBOL_PATTERN.pattern} "
            "(A-Z, 0-9, '.', '_', '-'; starts with A-Z or 0-9; at most 32 characters)"
        )


def validate_symbol(symbol: object) -> str:
    """Return ``symbol`` unchanged if it is a safe symbol, else raise InvalidSymbolError."""
    if not isinstance(symbol, str) or SYMBOL_PATTERN.fullmatch(symbol) is None:
        raise InvalidSymbolError(symbol)
    return symbol


@dataclass(frozen=True, slots=True)
class Bars:
    """One symbol's OHLCV bars in time order, as parallel column arrays.

    ``ts`` is int64 Unix seconds (UTC), strictly increasing. Prices and volume
    are float64. Columns are never mutated after construction.
    """

    ts: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray

    def __post_init__(self) -> None:
        n = len(self.ts)
        for name in ("open", "high", "low", "close", "volume"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Bars column {name!r} has length {len(getattr(self, name))}, expected {n}"
                )
        if n > 1 and not bool(np.all(np.diff(self.ts) > 0)):
            raise ValueError("Bars.ts must be strictly increasing")

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, float, float, float, float, float]]) -> Bars:
        """Build from ``(ts, open, high, low, close, volume)`` tuples in time order."""
        if not rows:
            return cls.empty()
        arr = np.asarray(rows, dtype=np.float64)
        return cls(
            ts=np.asarray([r[0] for r in rows], dtype=np.int64),
            open=arr[:, 1].copy(),
            high=arr[:, 2].copy(),
            low=arr[:, 3].copy(),
            close=arr[:, 4].copy(),
            volume=arr[:, 5].copy(),
        )

    @classmethod
    def empty(cls) -> Bars:
        z = np.zeros(0, dtype=np.float64)
        return cls(np.zeros(0, dtype=np.int64), z, z, z, z, z)

    def tail(self, n: int) -> Bars:
        """The last ``n`` bars (all of them if there are fewer)."""
        s = slice(max(len(self) - n, 0), None)
        return Bars(
            self.ts[s], self.open[s], self.high[s], self.low[s], self.close[s], self.volume[s]
        )


class BarRecord(NamedTuple):
    """One validated OHLCV bar. ``ts`` is Unix seconds, UTC, at the bar's open.

    A tuple in the store's column order: ingest builds hundreds of thousands a
    second, and the store inserts them as rows without a copy.
    """

    symbol: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float


def bar_records(symbol: str, bars: Bars) -> list[BarRecord]:
    """``bars`` of ``symbol`` as records (the demo feed, benchmarks and tests produce these)."""
    return [
        BarRecord(symbol, int(t), float(o), float(h), float(lo), float(c), float(v))
        for t, o, h, lo, c, v in zip(
            bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume, strict=True
        )
    ]
