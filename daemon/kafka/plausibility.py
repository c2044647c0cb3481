"""Plausibility at the edge: valid bars that must still not reach the store.

A decoded bar (daemon.kafka.bars) is well formed; these rules judge it against
the clock and against what the daemon already holds:

- ``future``: its ts is more than ``max_future_skew_seconds`` ahead of the
  wall clock. A bar dated 2100 would otherwise become the symbol's newest bar,
  and live scoring ignores every bar at or before the newest one.
- ``jump`` (off by default): its high or low is more than ``max_jump_ratio``
  times away from the symbol's last close.
- ``symbol_cap``: it belongs to a symbol the store does not hold while the
  store already holds ``max_symbols``.

A rejected bar goes to the DLQ (with its message); the other bars of the
message are stored. Late and out-of-order bars are plausible: they are stored,
but a symbol's ``latest`` ts (and the close the jump rule compares with) only
ever moves forward.

``BarScreen`` caches each symbol's latest ts and close, read from the store on
first sight. ``reset`` forgets the cache (after a failed write, or when another
daemon may have written the symbols' partitions: a rebalance).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, Protocol

from daemon.kafka.bars import format_ts
from daemon.settings import Settings
from trainers.data import BarRecord, Bars

Rule = Literal["future", "jump", "symbol_cap"]

_TS: Final = operator.attrgetter("ts")
_SHOWN: Final = 3
"""Rejected bars a batch's DLQ reason names one by one."""


class BarHistory(Protocol):
    """What the screen reads of the bar store (``BarStore``, ``MemoryBarStore``)."""

    def counts(self) -> Mapping[str, int]: ...

    def load(self, symbol: str, last_n: int | None = None) -> Bars: ...


@dataclass(frozen=True, slots=True)
class EdgeRules:
    """The limits of the rules; None turns a rule off (``EdgeRules()``: every rule off)."""

    max_future_skew_seconds: float | None = None
    max_jump_ratio: float | None = None
    max_symbols: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeRules:
        return cls(settings.max_future_skew_seconds, settings.max_jump_ratio, settings.max_symbols)


@dataclass(frozen=True, slots=True)
class Rejected:
    """One bar a rule turned away; ``index`` is its place in its message."""

    index: int
    bar: BarRecord
    rule: Rule
    reason: str


class Screened(NamedTuple):
    """A message's bars split into those to store and those to dead-letter (a tuple: built
    once per message on the ingest path, where a frozen dataclass costs 4x as much)."""

    accepted: list[BarRecord]
    rejected: list[Rejected]

    def reason(self) -> str:
        """The DLQ reason of the message: each rejected bar (the first few) and the count."""
        n = len(self.rejected)
        if not self.accepted and len({r.reason for r in self.rejected}) == 1:
            return self.rejected[0].reason + (f" (all {n} bars)" if n > 1 else "")
        named = "; ".join(f"bars[{r.index}]: {r.reason}" for r in self.rejected[:_SHOWN])
        more = f"; and {n - _SHOWN} more" if n > _SHOWN else ""
        total = n + len(self.accepted)
        return f"{named}{more} ({n} of {total} bars rejected, {len(self.accepted)} stored)"


@dataclass(slots=True)
class _Edge:
    latest_ts: int
    close: float  # of the bar at latest_ts


class BarScreen:
    """Applies ``EdgeRules`` to decoded messages; one per ingest thread (not thread-safe)."""

    def __init__(self, rules: EdgeRules, history: BarHistory) -> None:
        self.rules = rules
        self._history = history
        self._edges: dict[str, _Edge] = {}
        self._known: set[str] | None = None

    def reset(self) -> None:
        """Forget the cache; the next message of each symbol reads it from the store again."""
        self._edges.clear()
        self._known = None

    def latest(self, symbol: str) -> int | None:
        """The newest accepted (or stored) ts of ``symbol``; None if it has none."""
        edge = self._edge(symbol)
        return None if edge is None else edge.latest_ts

    def screen(self, bars: Sequence[BarRecord], now: float) -> Screened:
        """Judge one message's bars (one symbol, message order) at wall-clock time ``now``.

        Accepted bars update the symbol's latest ts and close as they go, so the jump
        rule judges each bar of a batch against the bars before it.
        """
        if not bars:
            return Screened([], [])
        symbol = bars[0].symbol
        edge = self._edge(symbol)
        rules = self.rules
        if edge is None and not self._admit():
            reason = (
                f"new symbol {symbol!r} refused: the store holds max_symbols "
                f"{rules.max_symbols} symbols already"
            )
            return Screened([], [Rejected(i, b, "symbol_cap", reason) for i, b in enumerate(bars)])
        skew = rules.max_future_skew_seconds
        horizon = math.inf if skew is None else now + skew
        ratio = rules.max_jump_ratio
        newest = max(bars, key=_TS)
        if ratio is None and newest.ts <= horizon:  # the common case, at a fraction of the cost
            self._advance(symbol, edge, newest)
            return Screened(list(bars), [])
        accepted: list[BarRecord] = []
        rejected: list[Rejected] = []
        for i, bar in enumerate(bars):
            if bar.ts > horizon:
                reason = (
                    f"ts {format_ts(bar.ts)} is {bar.ts - now:.3g} s ahead of the daemon's "
                    f"clock (max_future_skew_seconds {skew:g})"
                )
                rejected.append(Rejected(i, bar, "future", reason))
                continue
            if ratio is not None and edge is not None:
                jump = max(bar.high / edge.close, edge.close / bar.low)
                if jump > ratio:
                    reason = (
                        f"high {bar.high!r} / low {bar.low!r} is {jump:.3g}x away from the "
                        f"last close {edge.close!r} (max_jump_ratio {ratio:g})"
                    )
                    rejected.append(Rejected(i, bar, "jump", reason))
                    continue
            accepted.append(bar)
            edge = self._advance(symbol, edge, bar)
        return Screened(accepted, rejected)

    def _advance(self, symbol: str, edge: _Edge | None, bar: BarRecord) -> _Edge:
        """The symbol's edge after accepting ``bar``: a late bar never moves it back."""
        if edge is None:
            edge = self._edges[symbol] = _Edge(bar.ts, bar.close)
            self._known_symbols().add(symbol)
        elif bar.ts >= edge.latest_ts:
            edge.latest_ts, edge.close = bar.ts, bar.close
        return edge

    def _edge(self, symbol: str) -> _Edge | None:
        """The symbol's cached edge, read from the store on first sight; None without bars.
        Unknown symbols are not cached: a producer minting symbols must not grow memory."""
        edge = self._edges.get(symbol)
        if edge is None and symbol in self._known_symbols():
            last = self._history.load(symbol, last_n=1)
            if len(last):
                edge = self._edges[symbol] = _Edge(int(last.ts[-1]), float(last.close[-1]))
        return edge

    def _known_symbols(self) -> set[str]:
        if self._known is None:
            self._known = set(self._history.counts())
        return self._known

    def _admit(self) -> bool:
        """A symbol without bars may start if the store holds fewer than ``max_symbols``."""
        cap = self.rules.max_symbols
        return cap is None or len(self._known_symbols()) < cap
