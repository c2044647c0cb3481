"""What ``ctd backtest`` writes: backtest.json (everything), backtest.md, backtest.png.

Every policy is scored on the same evaluation bars: from the first bar ctd
served a prediction on (or, if it never had a champion, the first bar any
policy did) to the second-to-last bar (the last one has no next move). The
quarters of that span are scored too, so a policy that decays or recovers
shows it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.backtest.replay import ReplayResult
from daemon.backtest.scores import FloatArray, Scores, rolling_accuracy, score

POLICIES = ("ctd", "frozen", "always_swap", "naive")
ROLLING_BARS = 250
SECONDS_PER_YEAR = 365.25 * 86400


@dataclass(frozen=True, slots=True)
class Costs:
    long_above: float
    short_below: float
    cost_bps: float
    centre: float = 0.5
    """The served value that calls no direction: 0.5 for P(up), 0 for a predicted return."""


@dataclass(frozen=True, slots=True)
class Report:
    symbol: str
    bars: int
    first_ts: int
    last_ts: int
    evaluated_from_ts: int | None
    evaluated_bars: int
    periods_per_year: float
    costs: Costs
    scores: dict[str, Scores]
    quarters: dict[str, list[float | None]]
    """Accuracy of each policy in each quarter of the evaluation span."""
    timeline: list[dict[str, Any]]
    frozen_version: str | None
    seconds: float
    notes: list[str]
    """What a reader of the numbers should know (settings that shape the replay)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scores"] = {k: v.to_dict() for k, v in self.scores.items()}
        return out


def next_returns(close: FloatArray) -> FloatArray:
    """ret[t] = close[t+1] / close[t] - 1; the last bar's is 0 (no next bar)."""
    out: FloatArray = np.append(close[1:] / close[:-1] - 1.0, 0.0)
    return out


def build(result: ReplayResult, costs: Costs, notes: list[str] | None = None) -> Report:
    n = len(result.ts)
    ret = next_returns(result.close)
    start = _evaluation_start(result)
    span = slice(start, n - 1) if start is not None else slice(0, 0)
    spacing = float(np.median(np.diff(result.ts))) if n > 1 else 86400.0
    per_year = SECONDS_PER_YEAR / spacing
    scores = {
        name: score(
            result.served[name][span],
            ret[span],
            long_above=costs.long_above,
            short_below=costs.short_below,
            cost_bps=costs.cost_bps,
            periods_per_year=per_year,
            centre=costs.centre,
        )
        for name in POLICIES
    }
    quarters = {
        name: _quarters(result.served[name][span], ret[span], costs.centre) for name in POLICIES
    }
    notes = list(notes or [])
    return Report(
        symbol=result.symbol,
        bars=n,
        first_ts=int(result.ts[0]),
        last_ts=int(result.ts[-1]),
        evaluated_from_ts=None if start is None else int(result.ts[start]),
        evaluated_bars=max(0, (n - 1) - (start if start is not None else n - 1)),
        periods_per_year=per_year,
        costs=costs,
        scores=scores,
        quarters=quarters,
        timeline=[asdict(e) for e in result.timeline],
        frozen_version=result.frozen_version,
        seconds=result.seconds,
        notes=notes,
    )


def _evaluation_start(result: ReplayResult) -> int | None:
    for name in ("ctd", *POLICIES[1:]):
        predicted = np.flatnonzero(~np.isnan(result.served[name]))
        if len(predicted):
            return int(predicted[0])
    return None


def _quarters(p_up: FloatArray, ret: FloatArray, centre: float) -> list[float | None]:
    out: list[float | None] = []
    for part_p, part_r in zip(np.array_split(p_up, 4), np.array_split(ret, 4), strict=True):
        counted = ~np.isnan(part_p) & (part_r != 0)
        hits = (part_p[counted] > centre) == (part_r[counted] > 0)
        out.append(float(hits.mean()) if counted.any() else None)
    return out


def write(report: Report, result: ReplayResult, out: Path) -> list[Path]:
    """backtest.json, backtest.md and backtest.png in ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "backtest.json", out / "backtest.md", out / "backtest.png"]
    paths[0].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    paths[1].write_text(markdown(report))
    _chart(report, result, paths[2])
    return paths


def markdown(report: Report) -> str:
    c = report.costs
    lines = [
        f"# Backtest of {report.symbol}",
        "",
        f"{report.bars} bars; evaluated on {report.evaluated_bars} bars from ts "
        f"{report.evaluated_from_ts}; signal +1 above {c.long_above}, -1 below {c.short_below}; "
        f"cost {c.cost_bps} bp per unit of turnover; replay took {report.seconds:.1f} s.",
        "",
        "| policy | predicted bars | accuracy (95% CI) | cum. return | Sharpe (95% CI) "
        "| max drawdown | turnover | hit rate | accuracy by quarter |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in POLICIES:
        s = report.scores[name]
        quarters = " / ".join("-" if q is None else f"{q:.3f}" for q in report.quarters[name])
        lines.append(
            f"| {name} | {s.predicted_bars} | {_with_ci(s.accuracy, s.accuracy_ci, 3)} "
            f"| {s.cumulative_return:+.2%} | {_with_ci(s.sharpe, s.sharpe_ci, 2)} "
            f"| {s.max_drawdown:.2%} | {s.turnover:.3f} "
            f"| {'-' if s.hit_rate is None else f'{s.hit_rate:.3f}'} | {quarters} |"
        )
    lines += [
        "",
        "`ctd`: the served signal of the daemon's lifecycle; `frozen`: its first champion "
        f"({report.frozen_version or 'none'}) never replaced; `always_swap`: retrained on the "
        "bar-count schedule with every gate off, always served; `naive`: the majority "
        "direction of the same training windows.",
        "",
        *(f"- {note}" for note in report.notes),
        "",
        "## Timeline",
        "",
        "| bar | ts | event | version | detail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for e in report.timeline:
        lines.append(
            f"| {e['bar']} | {e['ts']} | {e['event']} | {e['version'] or ''} "
            f"| {str(e['detail'])[:80]} |"
        )
    return "\n".join(lines) + "\n"


def _with_ci(value: float | None, ci: Any, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f} ({ci.low:.{digits}f} .. {ci.high:.{digits}f})"


def _chart(report: Report, result: ReplayResult, path: Path) -> None:
    # Lazy: matplotlib costs ~0.5 s to import and only this file needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    from daemon.backtest.scores import pnl, signals  # noqa: PLC0415

    ret = next_returns(result.close)
    x = np.arange(len(ret))
    c = report.costs
    fig = Figure(figsize=(11, 7), tight_layout=True)
    FigureCanvasAgg(fig)
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2, sharex=None)
    for name in POLICIES:
        p = result.served[name]
        equity = np.cumprod(
            1.0 + pnl(signals(p, c.long_above, c.short_below, c.centre), ret, c.cost_bps)
        )
        top.plot(x, equity, label=name, linewidth=1)
        bottom.plot(x, rolling_accuracy(p, ret, ROLLING_BARS, c.centre), label=name, linewidth=1)
    for e in report.timeline:
        if e["event"] in ("promoted", "champion_bootstrapped", "rolled_back"):
            for axis in (top, bottom):
                axis.axvline(e["bar"], color="grey", linestyle=":", linewidth=0.8)
    top.set_title(f"{report.symbol}: equity of each policy (dotted: champion changes)")
    top.set_ylabel("equity")
    bottom.set_title(f"rolling accuracy over the last {ROLLING_BARS} bars")
    bottom.axhline(0.5, color="black", linewidth=0.6)
    bottom.set_xlabel("bar")
    top.legend(loc="upper left")
    fig.savefig(path, dpi=100)
