"""What a daemon does when the consumer group moves partitions (a ``ConsumerRebalanceListener``).

kafka-python runs rebalance callbacks on its network thread, where a blocking
Kafka call raises and a long task would stall heartbeats. So the callbacks only
record and pause; the work runs in the ingest thread before its next poll
(``process``):

Revoked (the group is rebalancing; any partition may go): start a round of trial
checkpoints on the checkpoint thread, so the next owner continues from the latest
evidence (a checkpoint that lands after the next owner's claim is fenced, and the
next owner goes on from the one before it: at most ``trial_checkpoint_seconds`` of
evidence lost). On leaving the group (``leave``, a clean stop), the checkpoints are
written before the consumer closes.

Assigned: record the new ownership with the group generation, forget the live
state of symbols whose partitions went away, and pause every assigned
partition. Then, before the next poll: for every assigned partition whose
committed offset is beyond what the local store holds (another daemon served
it meanwhile), replay the missing offsets from Kafka into the store
(``daemon.kafka.rebuild``); for every symbol of a newly owned partition, claim
it in the registry (fencing the previous owner), restore its trial checkpoint
into the local prediction log, announce what the previous owner recorded but
did not announce, and let the retrain trigger count its rebuilt history
(trained as of the newest version's last bar, when another daemon trained
it); then resume the partitions. A symbol is never served without its
history. A rebuild that fails leaves its partitions paused and is tried again
``RETRY_SECONDS`` later.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

from daemon.fleet.checkpoints import Checkpointer
from daemon.fleet.ownership import Ownership, Partition
from daemon.kafka.clients import resume
from daemon.kafka.rebuild import Span, rebuild
from daemon.kafka.topics import TopicReset
from daemon.live.path import LivePath
from daemon.live.watch import LiveWatch
from daemon.logs import get_logger
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.store.bars import BarStore
from daemon.training.trigger import RetrainTrigger
from deploy.errors import FencedError, RegistryError
from deploy.handoff import TrialCheckpoint, restore_checkpoint
from deploy.registry import Claim, Registry, SlotsState
from deploy.trial import PredictionLog

_log = get_logger(component="handover")

RETRY_SECONDS = 5.0
TAKEOVER_THREADS = 16


class Handover(ConsumerRebalanceListener):  # type: ignore[misc]
    """Rebalance callbacks of the ingest consumer (``attach`` subscribes it), and the
    ``checkpointer`` whose trial checkpoints the next owner restores."""

    def __init__(
        self,
        settings: Settings,
        bootstrap_servers: str,
        *,
        store: BarStore,
        registry: Registry,
        log: PredictionLog,
        live: LivePath,
        watch: LiveWatch,
        trigger: RetrainTrigger,
        ownership: Ownership,
        metrics: Metrics,
    ) -> None:
        self.consumer: KafkaConsumer | None = None
        self._settings, self._bootstrap = settings, bootstrap_servers
        self._store, self._registry, self._log = store, registry, log
        self._live, self._scorer, self._watch, self._trigger = live, live.scorer, watch, trigger
        self._ownership, self._metrics = ownership, metrics
        self.checkpointer = Checkpointer(
            interval=settings.trial_checkpoint_seconds,
            scorer=live.scorer,
            log=log,
            registry=registry,
            ownership=ownership,
            metrics=metrics,
        )
        self._assigned: tuple[list[TopicPartition], set[Partition], int] | None = None
        self._retry_at = 0.0
        self.topic_reset = TopicReset([settings.topic_bars])
        """Catches up with a bars topic that was lost and re-created (``TopicReset``)."""
        self.joined = False
        """True once the first assignment was served: this daemon is a settled group member
        (a /readyz check, so a rolling restart goes on only after the group settled)."""

    def attach(self, consumer: KafkaConsumer) -> KafkaConsumer:
        """Subscribe ``consumer`` to the bars topic with these callbacks."""
        self.consumer = consumer
        consumer.subscribe([self._settings.topic_bars], listener=self)
        return consumer

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        self.topic_reset.on_partitions_revoked(revoked)
        if revoked:  # the first join reports an empty revocation
            self.checkpointer.save_soon()

    def leave(self) -> None:
        """Ingest thread, polling stopped, before the consumer leaves the group: the last
        checkpoints, written while this daemon still owns its symbols."""
        self.checkpointer.save_all()

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Network thread: record, forget what left, pause; ``process`` does the rest."""
        consumer = self._require_consumer()
        assigned = list(assigned)
        self.topic_reset.on_partitions_assigned(assigned)
        epoch = consumer.group_metadata().generation_id
        gained, lost = self._ownership.assign({(tp.topic, tp.partition): epoch for tp in assigned})
        self._metrics.owned_partitions.set(len(assigned))
        for symbol in self._ownership.symbols_of(lost):
            self._scorer.forget(symbol)
            self._watch.forget(symbol)
            self._metrics.forget_symbol(symbol)
        if assigned:
            consumer.pause(*assigned)  # before their first fetch: nothing buffered to strand
        if self._assigned is not None:  # a rebalance before the last one was processed
            gained |= self._assigned[1] & set(self._ownership.partitions())
        self._assigned = (assigned, gained, epoch)
        _log.info(
            "partitions_assigned",
            generation=epoch,
            partitions=sorted(tp.partition for tp in assigned),
            gained=sorted(p for _, p in gained),
            lost=sorted(p for _, p in lost),
        )

    def process(self) -> None:
        """Ingest thread, before each poll: finish an assignment (rebuild, take over, resume),
        or retry a failed rebuild once ``RETRY_SECONDS`` passed."""
        consumer = self.consumer
        if consumer is not None and self.topic_reset.catch_up(consumer, self):
            return
        if consumer is None or self._assigned is None or time.monotonic() < self._retry_at:
            return
        assigned, gained, epoch = self._assigned
        if not self._rebuild(consumer, assigned):
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return
        taken = sorted(self._taken(consumer, assigned, gained))
        states = self._take_over(taken, Claim(self._ownership.member, epoch))
        try:
            self._live.announcer.catch_up(taken, states)
        except (RegistryError, OSError) as exc:  # at least once: the next takeover replays them
            _log.error("takeover_announce_failed", error=str(exc))
        self._trigger.request_due(taken, "takeover")
        self._assigned = None
        self.joined = True
        resume(consumer, assigned)
        _log.info("partitions_served", generation=epoch, symbols_taken_over=len(taken))

    def _taken(
        self, consumer: KafkaConsumer, assigned: list[TopicPartition], gained: set[Partition]
    ) -> set[str]:
        """Symbols of the gained partitions; with every partition of the topic (one daemon, or
        the last one standing) also the registry's symbols no bar has placed yet."""
        taken = self._ownership.symbols_of(gained)
        every = consumer.partitions_for_topic(self._settings.topic_bars) or set()
        if gained and every and len(assigned) == len(every):
            try:
                known = self._store.partitions()
                taken |= {s for s in self._registry.symbols() if s not in known}
            except (RegistryError, OSError) as exc:
                _log.error("takeover_listing_failed", error=str(exc))
        return taken

    def _spans(
        self, consumer: KafkaConsumer, assigned: list[TopicPartition]
    ) -> dict[TopicPartition, Span]:
        """Offsets other daemons consumed that the local store lacks, per partition."""
        positions = self._store.positions()
        spans = {}
        for tp in assigned:
            committed = consumer.committed(tp)
            local = positions.get((tp.topic, tp.partition))
            if committed is not None and (local is None or local < committed):
                spans[tp] = Span(local, committed)
        return spans

    def _rebuild(self, consumer: KafkaConsumer, assigned: list[TopicPartition]) -> bool:
        """Replay what the local store lacks of ``assigned``; False if that failed."""
        try:
            spans = self._spans(consumer, assigned)
            timeout = self._settings.kafka_max_poll_interval_ms / 2000
            report = rebuild(
                self._settings, self._bootstrap, self._store, spans, timeout_seconds=timeout
            )
        except Exception as exc:  # RebuildError, a broker error: paused until a retry works
            _log.error(
                "rebuild_failed", error=f"{type(exc).__name__}: {exc}", retry_in=RETRY_SECONDS
            )
            return False
        if report.partitions:
            self._metrics.rebuild_seconds.observe(report.seconds)
            self._metrics.rebuild_bars.inc(report.bars)
            _log.info(
                "partitions_rebuilt",
                partitions=report.partitions,
                messages=report.messages,
                bars=report.bars,
                new_bars=report.new_bars,
                seconds=round(report.seconds, 3),
            )
        for partition in report.trimmed:
            _log.warning(
                "rebuild_history_trimmed",
                topic=partition[0],
                partition=partition[1],
                hint="retention of the bars topic is shorter than the history the store lacked",
            )
        return True

    def _take_over(self, symbols: list[str], claim: Claim) -> dict[str, SlotsState]:
        """Claim the symbols and restore their trial checkpoints. The registry round trips run
        on ``TAKEOVER_THREADS`` threads (an object store answers in tens of milliseconds, a
        hundred symbols in a row would take seconds); the local state changes in this thread.
        Problems are logged, not raised: the symbol is still served, and a later write of
        this daemon is fenced or claims it. Returns the state of each symbol claimed."""
        trained = self._store.trained_state()
        with ThreadPoolExecutor(TAKEOVER_THREADS, thread_name_prefix="ctd-takeover") as pool:
            claimed = list(pool.map(lambda s: self._claim(s, claim, s in trained), symbols))
        states = {}
        for symbol, got in zip(symbols, claimed, strict=True):
            if got is None:
                continue
            state, last_ts = got
            states[symbol] = state
            restored = False
            if state.trial is not None:
                try:
                    checkpoint = TrialCheckpoint.from_dict(state.trial)
                    restored = restore_checkpoint(self._log, symbol, checkpoint)
                except (ValueError, KeyError, TypeError) as exc:
                    _log.error("trial_checkpoint_unreadable", symbol=symbol, error=str(exc))
            self._scorer.forget(symbol)
            self._watch.forget(symbol)
            mine = trained.get(symbol)
            count = self._store.count(symbol)
            if mine is not None:
                trained_at: int | None = mine[0]
            elif last_ts is not None:  # the bars after the newest version's are new to it
                trained_at = count - self._store.count_after(symbol, last_ts)
            else:
                trained_at = None
            self._trigger.take_over(symbol, count, trained_at)
            self._metrics.takeovers.inc()
            _log.info("symbol_taken_over", symbol=symbol, claim=str(claim), trial_restored=restored)
        return states

    def _claim(
        self, symbol: str, claim: Claim, trained_here: bool
    ) -> tuple[SlotsState, int | None] | None:
        """Registry side of a takeover: the claim, and (unless this daemon trained the symbol
        itself) the last bar of the newest version in its slots; None if fenced or
        unreachable."""
        try:
            if self._settings.on_bundled_broker:  # alone: nothing to fence (Settings)
                state = self._registry.state(symbol)
            else:
                state = self._registry.claim(symbol, claim)
        except FencedError as exc:
            self._metrics.registry_fenced.labels(symbol).inc()
            _log.warning("takeover_fenced", symbol=symbol, error=str(exc))
            return None
        except (RegistryError, OSError) as exc:
            _log.error("takeover_claim_failed", symbol=symbol, error=str(exc))
            return None
        slots = state.slots
        held = [v for v in (slots.champion, slots.shadow, *slots.retired) if v is not None]
        if trained_here or not held:
            return state, None
        try:
            last = self._registry.metadata(symbol, max(held))  # version ids sort by time
        except (RegistryError, OSError) as exc:  # counted as never trained: due by the policy
            _log.warning("takeover_trained_count_unknown", symbol=symbol, error=str(exc))
            return state, None
        return state, last.data.last_ts

    def _require_consumer(self) -> KafkaConsumer:
        if self.consumer is None:
            raise RuntimeError("Handover.consumer must be set before the consumer subscribes")
        return self.consumer
