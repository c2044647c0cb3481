"""kill -9 of the daemon (a real ``python -m daemon.cli run`` process) at seeded random
instants while a producer keeps sending bars: every bar is stored exactly once.

The delivery guarantee under test (daemon/ingest.py): offsets are committed
only after the batch's store transaction is durable, so a kill at any instant
re-delivers at most the uncommitted tail, and the idempotent upsert by
(symbol, ts) stores it once.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.kafka.bars import encode_bar, encode_batch
from daemon.settings import Settings
from tests.support import reliability as rel
from tests.support.helpers import wait_for
from trainers.data import BarRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20250101
KILLS = 10
SYMBOLS = ("KA", "KB", "KC", "KD")


class Feed:
    """Sends bars of SYMBOLS in order, as single and batch messages, until stopped.

    Remembers every bar whose message the broker acknowledged: the known set
    the store must hold afterwards.
    """

    def __init__(self, bootstrap: str, topic: str, bars_per_second: float) -> None:
        self._producer = rel.make_producer(bootstrap)
        self._topic = topic
        self._interval = len(SYMBOLS) * 5 / bars_per_second  # one round = 5 bars per symbol
        self._stop = threading.Event()
        self._sent: list[tuple[Any, list[BarRecord]]] = []
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self.acked: list[BarRecord] = []

    def start(self) -> Feed:
        self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            started = time.monotonic()
            for symbol in SYMBOLS:
                # Alternate a batch of 4 and a single bar, so both message forms are killed.
                batch = [rel.bar(symbol, i + k) for k in range(4)]
                single = rel.bar(symbol, i + 4)
                for value, bars in (
                    (encode_batch(symbol, batch), batch),
                    (encode_bar(single), [single]),
                ):
                    future = self._producer.send(self._topic, key=symbol.encode(), value=value)
                    self._sent.append((future, bars))
            i += 5
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))

    def stop(self) -> list[BarRecord]:
        """Stop sending; return the acknowledged bars (all of them, or raise). Idempotent."""
        if self._stop.is_set():
            return self.acked
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self._producer.flush(timeout=30)
            for future, bars in self._sent:
                future.get(timeout=30)  # every send must be acknowledged: the set is then known
                self.acked.extend(bars)
        finally:
            self._producer.close(timeout=5)
        return self.acked


def test_kill_9_at_random_instants_during_ingest_stores_every_bar_exactly_once(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """After >= 10 kill -9 at seeded random instants mid-ingest, the store holds each produced
    bar exactly once, its counters agree, and the registry recovers."""
    settings = settings_factory(
        http_port=rel.free_port(),
        trainers=("naive",),
        # A few trainings happen (kills may land in them), but ingest dominates.
        min_bars=1500,
        retrain_every_bars=1500,
        kafka_max_poll_records=50,  # many small transactions: more instants to die in
        log_level="WARNING",
        log_format="json",
    )
    assert settings.kafka_bootstrap_servers is not None
    rng = random.Random(SEED)
    log = tmp_path / "daemon.log"
    feed = Feed(settings.kafka_bootstrap_servers, settings.topic_bars, bars_per_second=600).start()
    daemons: list[rel.DaemonProcess] = []
    kill_counts: list[int] = []
    try:
        for _ in range(KILLS):
            daemon = rel.DaemonProcess(settings, log)
            daemons.append(daemon)
            daemon.start()
            before = rel.stored_count(settings.paths.bars)
            # Kill only once this incarnation is ingesting: a kill before the group join
            # would test nothing.
            wait_for(
                lambda before=before: rel.stored_count(settings.paths.bars) > before,  # type: ignore[misc]
                timeout=60,
                interval=0.02,
                message="the restarted daemon ingests",
            )
            time.sleep(rng.uniform(0.0, 1.0))
            daemon.kill()
            kill_counts.append(rel.stored_count(settings.paths.bars))
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
        # Let any re-delivery still in flight land before judging "exactly once".
        wait_for(lambda: final.sample("ctd_ingest_messages_total") is not None, timeout=10)
        time.sleep(1.0)
        assert final.terminate() == 0, final.log_tail()
    finally:
        with contextlib.suppress(Exception):  # keep the original failure visible
            feed.stop()
        for d in daemons:
            d.reap_group()

    assert len(kill_counts) >= 10
    assert kill_counts == sorted(kill_counts) and kill_counts[-1] < len(produced)
    assert len({rel.row(b) for b in produced}) == len(produced)  # the feed never sends twice
    rel.assert_stored_exactly(settings.paths.bars, produced)
    rel.assert_registry_consistent(settings.paths.registry)
    print(f"kills after {kill_counts} stored bars; produced {len(produced)}")
