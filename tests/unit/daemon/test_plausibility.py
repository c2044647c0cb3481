"""The plausibility rules at the edge: clock skew, jumps, the symbol cap, and "latest" only
moving forward, judged on an in-memory bar store."""

from __future__ import annotations

from typing import get_args

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.kafka.plausibility import BarScreen, EdgeRules, Rule
from daemon.metrics import IMPLAUSIBLE_RULES
from daemon.store.memory import MemoryBarStore
from trainers.data import BarRecord

NOW = 1_765_000_000.0  # 2025-12-06
CENTURY = 100 * 365 * 86_400


def bar(ts: float, close: float = 100.0, symbol: str = "AAA", *, spread: float = 1.0) -> BarRecord:
    return BarRecord(symbol, int(ts), close, close * spread, close / spread, close, 1.0)


def screen(
    store: MemoryBarStore | None = None,
    *,
    skew: float | None = None,
    jump: float | None = None,
    cap: int | None = None,
) -> BarScreen:
    return BarScreen(EdgeRules(skew, jump, cap), store or MemoryBarStore())


def test_the_metric_labels_are_the_rules() -> None:
    assert get_args(Rule) == IMPLAUSIBLE_RULES


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 86_400), st.integers(-CENTURY, CENTURY))
def test_a_bar_is_refused_exactly_when_it_is_further_ahead_than_the_skew(
    skew: float, ahead: int
) -> None:
    result = screen(skew=skew).screen([bar(NOW + ahead)], NOW)
    assert len(result.accepted) == (ahead <= skew)
    if ahead > skew:
        [rejected] = result.rejected
        assert rejected.rule == "future"
        assert f"max_future_skew_seconds {skew:g}" in rejected.reason


def test_a_bar_a_century_ahead_is_refused_and_the_symbol_keeps_its_latest() -> None:
    """The observed failure: a bar dated 2100 must not become the symbol's newest bar."""
    s = screen(skew=300)
    s.screen([bar(NOW - 60)], NOW)
    result = s.screen([bar(NOW + CENTURY)], NOW)
    assert result.accepted == []
    assert "2125-" in result.reason() and "s ahead of the daemon's clock" in result.reason()
    assert s.latest("AAA") == int(NOW - 60)
    assert s.screen([bar(NOW)], NOW).accepted == [bar(NOW)]


def test_without_a_skew_limit_any_ts_passes() -> None:
    assert screen().screen([bar(NOW + CENTURY)], NOW).rejected == []


@settings(max_examples=200, deadline=None)
@given(st.floats(1.01, 100), st.floats(1e-3, 1e3), st.floats(0.01, 200), st.floats(1.0, 3.0))
def test_a_bar_is_refused_exactly_when_it_jumps_beyond_the_ratio(
    ratio: float, last: float, factor: float, spread: float
) -> None:
    """Judged by the bar's high and low against the last close: max(high/last, last/low)."""
    s = screen(jump=ratio)
    s.screen([bar(NOW - 60, last)], NOW)
    candidate = bar(NOW, last * factor, spread=spread)
    jump = max(candidate.high / last, last / candidate.low)
    result = s.screen([candidate], NOW)
    assert len(result.accepted) == (jump <= ratio)
    assert [r.rule for r in result.rejected] == ([] if jump <= ratio else ["jump"])


def test_a_rejected_jump_is_not_the_next_bars_reference() -> None:
    """After a bad tick the next bar is judged against the last accepted close; within one
    batch each bar is judged against the accepted bars before it."""
    s = screen(jump=2.0)
    result = s.screen([bar(NOW, 100), bar(NOW + 60, 1000), bar(NOW + 120, 150)], NOW + 120)
    assert [b.close for b in result.accepted] == [100, 150]
    assert [(r.index, r.rule) for r in result.rejected] == [(1, "jump")]
    assert result.reason().startswith("bars[1]: high 1000.0 / low 1000.0 is 10x away from")
    assert result.reason().endswith("(1 of 3 bars rejected, 2 stored)")


def test_the_first_bar_of_a_symbol_is_never_a_jump() -> None:
    assert screen(jump=1.5).screen([bar(NOW, 1e12)], NOW).rejected == []


def test_the_jump_reference_comes_from_the_store_on_first_sight() -> None:
    store = MemoryBarStore()
    store.upsert([bar(NOW - 120, 50), bar(NOW - 60, 100), bar(NOW - 600, 10)])
    result = screen(store, jump=1.5).screen([bar(NOW, 160), bar(NOW + 1, 140)], NOW)
    assert [b.close for b in result.accepted] == [140]


def test_new_symbols_beyond_the_cap_are_refused_known_ones_still_pass() -> None:
    store = MemoryBarStore()
    store.upsert([bar(NOW, symbol="AAA"), bar(NOW, symbol="BBB")])
    s = screen(store, cap=3)
    assert s.screen([bar(NOW, symbol="CCC")], NOW).rejected == []
    refused = s.screen([bar(NOW, symbol="DDD"), bar(NOW + 60, symbol="DDD")], NOW + 60)
    assert refused.accepted == []
    assert {r.rule for r in refused.rejected} == {"symbol_cap"}
    assert refused.reason() == (
        "new symbol 'DDD' refused: the store holds max_symbols 3 symbols already (all 2 bars)"
    )
    for symbol in ("AAA", "BBB", "CCC"):
        assert s.screen([bar(NOW + 60, symbol=symbol)], NOW + 60).rejected == []


def test_refused_symbols_leave_no_state_behind() -> None:
    """A producer that mints symbols must not grow the screen's memory."""
    s = screen(cap=1)
    s.screen([bar(NOW, symbol="AAA")], NOW)
    for i in range(100):
        assert s.screen([bar(NOW, symbol=f"X{i}")], NOW).rejected
    assert s.latest("X7") is None
    assert len(s._edges) == 1


@settings(max_examples=100, deadline=None)
@given(st.permutations(range(30)), st.integers(1, 7))
def test_late_and_out_of_order_bars_are_accepted_but_latest_only_moves_forward(
    order: list[int], chunk: int
) -> None:
    """Any arrival order, any message size: every bar is stored and ``latest`` after each
    message is the newest ts seen so far, never an older one."""
    store = MemoryBarStore()
    s = screen(store, skew=0, jump=1e6, cap=1)
    seen: list[int] = []
    for i in range(0, len(order), chunk):
        message = [bar(NOW - 60 * (30 - k), 100 + k) for k in order[i : i + chunk]]
        result = s.screen(message, NOW)
        assert result.rejected == []
        store.upsert(result.accepted)
        seen += [b.ts for b in message]
        assert s.latest("AAA") == max(seen)
    assert store.count("AAA") == 30


def test_reset_reads_the_store_again() -> None:
    """Bars another daemon stored (a rebuild after a rebalance) count once the cache is reset."""
    store = MemoryBarStore()
    s = screen(store, jump=1.5)
    s.screen([bar(NOW - 120, 100)], NOW)
    store.upsert([bar(NOW - 120, 100), bar(NOW - 60, 200)])
    assert s.latest("AAA") == int(NOW - 120)
    s.reset()
    assert s.latest("AAA") == int(NOW - 60)
    assert s.screen([bar(NOW, 250)], NOW).rejected == []
