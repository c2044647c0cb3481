"""How good a served signal was: direction accuracy and a simple P&L, with 95% intervals.

Pure functions of arrays over the evaluation bars, for every policy alike:

- ``p_up[t]``: what the policy served at bar t, P(up) or a predicted return (NaN: no
  prediction, the position is flat and the bar does not count for accuracy); ``centre``
  is the value that calls no direction (0.5 for P(up), 0 for a return);
- ``ret[t]``: the next bar's simple return, close[t+1] / close[t] - 1 (the move
  the prediction at t is about), so nothing after bar t+1 enters bar t's score.

Position = signal (+1 above ``long_above``, -1 below ``short_below``, else 0);
P&L per bar = position * ret - cost * |position change|, with cost in basis
points per unit of turnover. Accuracy counts bars with a prediction and a
non-zero move; its interval is Wilson's. The Sharpe interval uses the standard
error of an estimated Sharpe ratio for i.i.d. returns, sqrt((1 + SR^2 / 2) / n)
(Lo 2002), per bar, then annualised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class Scores:
    """One policy's served signal over the evaluation bars."""

    predicted_bars: int
    accuracy: float | None
    accuracy_ci: Interval | None
    cumulative_return: float
    sharpe: float | None
    """Annualised; 0 for a policy never in the market, None if its P&L never varied."""
    sharpe_ci: Interval | None
    max_drawdown: float
    """Largest fall of the equity curve from a previous peak, as a fraction of the peak."""
    turnover: float
    """Mean |position change| per bar."""
    hit_rate: float | None
    """Share of bars in the market whose P&L was positive."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def signals(
    p_up: FloatArray, long_above: float, short_below: float, centre: float = 0.5
) -> FloatArray:
    """+1 / -1 / 0 per bar; 0 where there is no prediction."""
    p = np.nan_to_num(p_up, nan=centre)
    out: FloatArray = np.where(p > long_above, 1.0, np.where(p < short_below, -1.0, 0.0))
    return out


def wilson(successes: int, n: int) -> Interval | None:
    if n == 0:
        return None
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return Interval(centre - half, centre + half)


def pnl(position: FloatArray, ret: FloatArray, cost_bps: float) -> FloatArray:
    """Per-bar P&L of holding ``position[t]`` over the move ``ret[t]``, net of turnover cost."""
    change = np.abs(np.diff(position, prepend=0.0))
    out: FloatArray = position * ret - cost_bps * 1e-4 * change
    return out


def score(
    p_up: FloatArray,
    ret: FloatArray,
    *,
    long_above: float,
    short_below: float,
    cost_bps: float,
    periods_per_year: float,
    centre: float = 0.5,
) -> Scores:
    """Scores of one policy (see the module docstring)."""
    position = signals(p_up, long_above, short_below, centre)
    daily = pnl(position, ret, cost_bps)
    counted = ~np.isnan(p_up) & (ret != 0)
    correct = int(np.sum((p_up[counted] > centre) == (ret[counted] > 0)))
    n = int(counted.sum())
    equity = np.cumprod(1.0 + daily)
    peaks = np.maximum.accumulate(np.concatenate(([1.0], equity)))[1:]
    in_market = position != 0
    sd = float(daily.std(ddof=1)) if len(daily) > 1 else 0.0
    sharpe, sharpe_ci = (0.0, Interval(0.0, 0.0)) if not in_market.any() else (None, None)
    if sd > 0:
        per_bar = float(daily.mean()) / sd
        se = math.sqrt((1 + per_bar**2 / 2) / len(daily))
        scale = math.sqrt(periods_per_year)
        sharpe = per_bar * scale
        sharpe_ci = Interval((per_bar - Z95 * se) * scale, (per_bar + Z95 * se) * scale)
    return Scores(
        predicted_bars=int((~np.isnan(p_up)).sum()),
        accuracy=correct / n if n else None,
        accuracy_ci=wilson(correct, n),
        cumulative_return=float(equity[-1] - 1.0) if len(equity) else 0.0,
        sharpe=sharpe,
        sharpe_ci=sharpe_ci,
        max_drawdown=float(np.max(1.0 - equity / peaks)) if len(equity) else 0.0,
        turnover=float(np.abs(np.diff(position, prepend=0.0)).mean()) if len(position) else 0.0,
        hit_rate=float((daily[in_market] > 0).mean()) if in_market.any() else None,
    )


def rolling_accuracy(
    p_up: FloatArray, ret: FloatArray, window: int, centre: float = 0.5
) -> FloatArray:
    """At each bar, the accuracy over the counted bars among the last ``window`` bars (NaN
    where there are none)."""
    counted = ~np.isnan(p_up) & (ret != 0)
    hits = np.where(counted, ((p_up > centre) == (ret > 0)).astype(np.float64), 0.0)
    c_hits, c_n = np.cumsum(hits), np.cumsum(counted.astype(np.float64))
    lag_hits = np.concatenate((np.zeros(window), c_hits[:-window])) if window < len(hits) else 0
    lag_n = np.concatenate((np.zeros(window), c_n[:-window])) if window < len(hits) else 0
    n = c_n - lag_n
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(n > 0, (c_hits - lag_hits) / n, np.nan)
    return out
