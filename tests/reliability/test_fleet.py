"""A fleet of three daemons: a symbol's state follows its partition across machines.

Real parts only: the bundled broker (one group, a 6-partition topic), moto's S3
server as the shared registry, three daemon processes with their own data
directories. The daemons are judged from outside (the registry, their SQLite
files, /metrics).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fleet import SYMBOLS, Fleet, wait_all
from tests.support.helpers import wait_for

TAKEOVER_SECONDS = 30.0


@pytest.fixture
def fleet(broker: Any, s3_bucket: str, tmp_path: Path) -> Iterator[Fleet]:
    """Three daemons with a champion and a running shadow trial for every symbol."""
    rig = Fleet(broker.bootstrap_servers, s3_bucket, tmp_path).start()
    try:
        rig.produce(600)
        wait_all(lambda s: rig.registry.slots(s).champion, SYMBOLS, 120, "champions")
        rig.produce(1000)  # one more training each: the shadow
        wait_all(lambda s: rig.registry.slots(s).shadow, SYMBOLS, 120, "shadows")
        yield rig
    finally:
        rig.close()


def test_a_killed_daemons_symbols_are_served_with_full_history_champion_and_trial(
    fleet: Fleet,
) -> None:
    """kill -9 one daemon mid-stream: within 30 s each of its symbols is claimed by a survivor
    whose store holds every bar produced (same rows), which scores it with its champion and
    continues its trial from the checkpoint."""
    with fleet.live_feed(bars_per_second=5):
        wait_all(lambda s: (fleet.checkpointed_n(s) or 0) >= 10, SYMBOLS, 60, "trials running")
        victim, victims = fleet.busiest()
        assert victims
        n_at_kill = {s: fleet.checkpointed_n(s) or 0 for s in victims}
        fleet.daemons[victim].kill()
        killed_at = time.monotonic()
        time.sleep(3)  # bars keep coming while the group notices
    last_ts = {s: fleet.produced[s][-1].ts for s in victims}

    def served(symbol: str) -> bool:
        owner = fleet.owner(symbol)
        i = fleet.index_of(owner) if owner else None
        if i is None or i == victim or not fleet.daemons[i].alive():
            return False
        return (
            fleet.stored(i, symbol) == fleet.expected_rows(symbol)
            and (fleet.trial_n(i, symbol) or 0) > n_at_kill[symbol]
            and fleet.predicted(i, symbol, last_ts[symbol])
        )

    wait_all(served, victims, TAKEOVER_SECONDS, "served by a survivor")
    elapsed = time.monotonic() - killed_at
    assert elapsed < TAKEOVER_SECONDS, elapsed
    for symbol in victims:
        assert fleet.registry.slots(symbol).champion is not None
        assert fleet.registry.slots(symbol).shadow is not None  # the same trial goes on
    survivors = [i for i in range(3) if i != victim]
    taken = sum(fleet.total(i, "ctd_symbol_takeovers_total") for i in survivors)
    assert taken >= len(victims)


def test_a_rolling_restart_loses_and_duplicates_nothing_and_keeps_the_ledger_in_order(
    fleet: Fleet,
) -> None:
    """Restart the three daemons one after the other under a live feed: every symbol keeps a
    champion, is unclaimed only while its partition moves, each store of a symbol's final
    owner holds exactly the bars produced, and every ledger runs 1..n with no gap or fork."""
    longest_unowned = 0.0
    unowned_since: dict[str, float] = {}
    with fleet.live_feed(bars_per_second=5):
        for i in range(3):
            assert fleet.daemons[i].terminate(timeout=60) == 0
            stopped = fleet.member(i)
            restart_at = time.monotonic() + 2
            while time.monotonic() < restart_at or any(fleet.owner(s) == stopped for s in SYMBOLS):
                now = time.monotonic()
                for s in SYMBOLS:
                    assert fleet.registry.slots(s).champion is not None, s
                    if fleet.owner(s) == stopped:
                        unowned_since.setdefault(s, now)
                        longest_unowned = max(longest_unowned, now - unowned_since[s])
                    else:
                        unowned_since.pop(s, None)
                assert time.monotonic() - restart_at < TAKEOVER_SECONDS, "takeover too slow"
                time.sleep(0.25)
            unowned_since.clear()
            fleet.daemons[i].start(ready_timeout=90)
    assert longest_unowned < TAKEOVER_SECONDS

    def complete(symbol: str) -> bool:
        i = fleet.index_of(fleet.owner(symbol) or "")
        return i is not None and fleet.stored(i, symbol) == fleet.expected_rows(symbol)

    wait_all(complete, SYMBOLS, TAKEOVER_SECONDS, "final owners complete")
    for symbol in SYMBOLS:
        seqs = [e.seq for e in fleet.registry.history(symbol)]
        assert seqs == list(range(1, len(seqs) + 1)), (symbol, seqs)


def test_a_paused_daemon_resumed_after_its_partitions_moved_is_fenced(fleet: Fleet) -> None:
    """SIGSTOP one daemon until the others claimed its symbols, then SIGCONT it: its next
    registry write (a trial checkpoint, due every second) is fenced, counted and changes
    nothing; the new owners keep their claims and every ledger stays 1..n."""
    with fleet.live_feed(bars_per_second=5):
        wait_all(lambda s: (fleet.checkpointed_n(s) or 0) >= 5, SYMBOLS, 60, "trials running")
        paused, moved = fleet.busiest()
        member = fleet.member(paused)
        fleet.daemons[paused].proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            wait_all(lambda s: fleet.owner(s) != member, moved, 60, "claimed by the others")
            new_owners = {s: fleet.owner(s) for s in moved}
        finally:
            fleet.daemons[paused].proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

        def fenced() -> bool:
            return fleet.total(paused, "ctd_registry_fenced_total") > 0

        wait_for(fenced, 30, message="the resumed daemon's write was fenced")
    assert {s: fleet.owner(s) for s in moved} == new_owners
    for symbol in SYMBOLS:
        seqs = [e.seq for e in fleet.registry.history(symbol)]
        assert seqs == list(range(1, len(seqs) + 1)), (symbol, seqs)
