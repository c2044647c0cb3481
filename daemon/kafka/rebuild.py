"""Rebuild a partition's bar history from Kafka, the bars' source of truth.

When a daemon takes partitions over (a peer died, a rebalance moved them, it
came back after others served its partitions), its local store lacks the bars
other daemons consumed meanwhile. ``rebuild`` reads each partition with a
group-less consumer from where the local store is complete (or the earliest
offset Kafka still has) up to the group's committed offset, and upserts the
bars with their positions, so the store is complete up to where the group's
consumer resumes. The live path and the retrain trigger never see these bars:
the previous owner already acted on them.

Invalid messages are skipped (the daemon that first consumed them dead-lettered
them), as are undecodable batches and the bars the plausibility rules reject
(daemon.kafka.plausibility, judged against this store and clock: a bar that was
ahead of the clock when first consumed may be stored now that it is not). A
partition whose earliest offset is above the local position lost bars to
retention (``trimmed``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kafka import KafkaConsumer, TopicPartition

from daemon.errors import InvalidMessage, RebuildError
from daemon.kafka.bars import decode_bar_message
from daemon.kafka.clients import client_config
from daemon.kafka.plausibility import BarScreen, EdgeRules
from daemon.kafka.undecodable import UndecodableBatch, guard_consumer
from daemon.logs import get_logger
from daemon.settings import Settings
from daemon.store.bars import BarStore, Partition
from trainers.data import BarRecord

_log = get_logger(component="rebuild")

_POLL_MS: Final = 500
_MAX_RECORDS: Final = 5000


@dataclass(frozen=True, slots=True)
class Span:
    """Offsets ``[start, end)`` of one partition to replay; ``start`` None: the earliest."""

    start: int | None
    end: int


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What a rebuild replayed."""

    partitions: int
    messages: int
    bars: int
    new_bars: int
    """Bars the local store did not have (the hole it filled)."""
    seconds: float
    symbols: dict[Partition, set[str]] = field(default_factory=dict)
    """Symbols seen in each replayed partition."""
    trimmed: list[Partition] = field(default_factory=list)
    """Partitions whose earliest offset Kafka kept is above where the rebuild wanted to start."""


def rebuild(
    settings: Settings,
    bootstrap_servers: str,
    store: BarStore,
    spans: Mapping[TopicPartition, Span],
    *,
    timeout_seconds: float,
) -> RebuildReport:
    """Replay ``spans`` into ``store``; RebuildError if they are not read within the timeout
    (a broker that stops answering: the caller leaves the partitions unserved and retries)."""
    started = time.monotonic()
    todo = {tp: span for tp, span in spans.items() if span.start is None or span.start < span.end}
    if not todo:
        return RebuildReport(0, 0, 0, 0, 0.0)
    consumer = guard_consumer(
        KafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=_MAX_RECORDS,
            **client_config(settings, bootstrap_servers),
        )
    )
    screen = BarScreen(EdgeRules.from_settings(settings), store)
    try:
        return _replay(consumer, store, todo, started, timeout_seconds, screen=screen)
    finally:
        consumer.close(autocommit=False)


def _replay(
    consumer: KafkaConsumer,
    store: BarStore,
    todo: dict[TopicPartition, Span],
    started: float,
    timeout_seconds: float,
    *,
    screen: BarScreen,
) -> RebuildReport:
    consumer.assign(list(todo))
    earliest: dict[TopicPartition, int] = consumer.beginning_offsets(list(todo))
    trimmed = []
    for tp, span in todo.items():
        start = earliest[tp] if span.start is None else max(span.start, earliest[tp])
        if span.start is not None and earliest[tp] > span.start:
            trimmed.append((tp.topic, tp.partition))
        consumer.seek(tp, start)
    remaining = {tp for tp, span in todo.items() if consumer.position(tp) < span.end}
    batch = _Batch(todo, screen)
    while remaining:
        if time.monotonic() - started > timeout_seconds:
            raise RebuildError(sorted(f"{tp.topic}:{tp.partition}" for tp in remaining))
        try:
            batch.add(consumer.poll(timeout_ms=_POLL_MS))
        except UndecodableBatch as exc:
            _log.warning("rebuild_skipped_undecodable", error=str(exc))
            consumer.seek(exc.partition, exc.end)
            continue
        for tp in list(remaining):
            if consumer.position(tp) >= todo[tp].end:
                batch.positions[(tp.topic, tp.partition)] = todo[tp].end
                consumer.pause(tp)
                remaining.discard(tp)
        batch.store(store)
    seconds = time.monotonic() - started
    return RebuildReport(
        len(todo), batch.messages, batch.bars, batch.new, seconds, dict(batch.symbols), trimmed
    )


class _Batch:
    """The bars of one poll (below each partition's end) and the running totals."""

    def __init__(self, todo: dict[TopicPartition, Span], screen: BarScreen) -> None:
        self._todo = todo
        self._screen = screen
        self.records: list[BarRecord] = []
        self.positions: dict[Partition, int] = {}
        self.sources: dict[str, Partition] = {}
        self.symbols: dict[Partition, set[str]] = defaultdict(set)
        self.messages = self.bars = self.new = 0

    def add(self, polled: dict[TopicPartition, list[Any]]) -> None:
        for tp, msgs in polled.items():
            part = (tp.topic, tp.partition)
            for msg in msgs:
                if msg.offset >= self._todo[tp].end:
                    break
                self.messages += 1
                self.positions[part] = msg.offset + 1
                try:
                    decoded = decode_bar_message(msg.value, msg.key)
                except InvalidMessage:
                    continue  # dead-lettered by the daemon that consumed it first
                accepted = self._screen.screen(decoded, time.time()).accepted
                self.records.extend(accepted)
                for bar in accepted[:1]:
                    self.sources[bar.symbol] = part
                    self.symbols[part].add(bar.symbol)

    def store(self, store: BarStore) -> None:
        """Upsert what was added since the last call, with the positions it completes."""
        if self.records or self.positions:
            added = store.upsert(self.records, positions=self.positions, partitions=self.sources)
            self.bars += len(self.records)
            self.new += sum(added.values())
        self.records, self.positions, self.sources = [], {}, {}
