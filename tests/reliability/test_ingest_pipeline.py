"""kill -9 of the daemon while its ingest writer thread has a store write in flight, and
the batch read ahead meanwhile: every produced bar is stored exactly once, and no committed
offset is ever ahead of the store (daemon/kafka/ingest.py).

The runner holds each write transaction open 50 ms (``--store-write-delay``), so at a kill
the writer thread is mid-transaction and the ingest thread has usually polled and
validated the next batch: neither may be committed, and both must come again.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.settings import Settings
from daemon.store.bars import BarStore
from tests.reliability.test_kill import Feed
from tests.support import reliability as rel
from tests.support.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261207
KILLS = 4


def assert_commits_behind_store(settings: Settings) -> None:
    """Per partition, the group's committed offset is at or before the store's position."""
    assert settings.kafka_bootstrap_servers is not None
    offsets = rel.committed_offsets(
        settings.kafka_bootstrap_servers, settings.kafka_group_id, settings.topic_bars
    )
    store = BarStore(settings.paths.bars, read_only=True)
    try:
        positions = store.positions()
    finally:
        store.close()
    for partition, offset in offsets.items():
        if offset is not None:
            stored = positions.get((settings.topic_bars, partition), 0)
            assert offset <= stored, (partition, offset, positions)


def test_kill_9_with_a_write_in_flight_stores_every_bar_once_and_commits_behind_it(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """After kill -9 at seeded instants while writes are in flight, the committed offsets
    never pass the store's positions, and a restart stores every produced bar exactly once."""
    settings = settings_factory(
        http_port=rel.free_port(),
        trainers=("naive",),
        min_bars=10**6,  # ingest only
        kafka_max_poll_records=20,  # many small batches: a write is nearly always in flight
        log_level="WARNING",
        log_format="json",
    )
    assert settings.kafka_bootstrap_servers is not None
    rng = random.Random(SEED)
    log = tmp_path / "daemon.log"
    feed = Feed(settings.kafka_bootstrap_servers, settings.topic_bars, bars_per_second=600).start()
    daemons: list[rel.DaemonProcess] = []
    stored_at_kill: list[int] = []
    try:
        for _ in range(KILLS):
            daemon = rel.DaemonProcess(settings, log, runner_args=["--store-write-delay", "0.05"])
            daemons.append(daemon)
            daemon.start()
            before = rel.stored_count(settings.paths.bars)
            wait_for(
                lambda before=before: rel.stored_count(settings.paths.bars) > before,  # type: ignore[misc]
                timeout=60,
                interval=0.02,
                message="the restarted daemon ingests",
            )
            time.sleep(rng.uniform(0.2, 1.0))
            daemon.kill()
            stored_at_kill.append(rel.stored_count(settings.paths.bars))
            assert_commits_behind_store(settings)
        produced = feed.stop()

        final = rel.DaemonProcess(settings, log)
        daemons.append(final)
        final.start()
        wait_for(
            lambda: rel.stored_count(settings.paths.bars) >= len(produced),
            timeout=90,
            interval=0.2,
            message=f"{len(produced)} bars stored",
        )
        time.sleep(1.0)  # let any re-delivery still in flight land before judging
        assert final.terminate() == 0, final.log_tail()
        assert_commits_behind_store(settings)
    finally:
        with contextlib.suppress(Exception):  # keep the original failure visible
            feed.stop()
        for d in daemons:
            d.reap_group()

    assert stored_at_kill == sorted(stored_at_kill) and stored_at_kill[-1] < len(produced)
    rel.assert_stored_exactly(settings.paths.bars, produced)
