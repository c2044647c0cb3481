"""The commands topic: verify operator commands and hand them, in order, to the daemon.

The wire format and its checks are ``daemon.kafka.signing``. A message that does not
decode is counted as invalid; one that fails verification (unsigned, bad signature,
expired, replayed) is counted by reason in ``ctd_commands_rejected_total``; each is
logged once and never executed. Offsets are committed after execution.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from kafka import KafkaConsumer, OffsetAndMetadata
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from prometheus_client import Counter

from daemon.actions import Command
from daemon.errors import InvalidCommand, UnverifiedCommand
from daemon.kafka.clients import make_consumer
from daemon.kafka.replay import ReplayGuard
from daemon.kafka.signing import decode_command
from daemon.kafka.topics import TopicReset
from daemon.kafka.undecodable import UndecodableBatch, UndecodableBatches
from daemon.logs import get_logger
from daemon.loop import Loop
from daemon.settings import Settings

_log = get_logger(component="commands")


class CommandConsumer(Loop):
    """A thread that consumes the commands topic in its own group and calls ``handle``.

    ``stop`` lets the current batch finish (committed after execution) and leave the group.
    """

    thread_name = "ctd-commands"

    def __init__(
        self,
        settings: Settings,
        bootstrap_servers: str,
        *,
        handle: Callable[[Command], object],
        key: bytes,
        counter: Counter,
        rejected: Counter,
    ) -> None:
        """``key``: the HMAC key (``daemon.kafka.commands_secret``); ``counter``:
        ``ctd_commands_total``; ``rejected``: ``ctd_commands_rejected_total``."""
        super().__init__()
        self._settings = settings
        self._bootstrap = bootstrap_servers
        self._handle = handle
        self._key = key
        self._counter = counter
        self._rejected = rejected
        self._replays = ReplayGuard()
        self.topic_reset = TopicReset([settings.topic_commands])
        """Catches up with a commands topic that was lost and re-created (``TopicReset``)."""

    def _run(self) -> None:
        s = self._settings
        consumer = make_consumer(
            s, self._bootstrap, group_id=f"{s.kafka_group_id}.commands", subscribe=False
        )
        consumer.subscribe(self.topic_reset.topics, listener=self.topic_reset)
        undecodable = UndecodableBatches(
            consumer,
            retries=s.ingest_undecodable_retries,
            backoff_seconds=s.ingest_undecodable_backoff_seconds,
        )
        try:
            while not self._stop.is_set():
                undecodable.resume_due()
                try:
                    self.topic_reset.catch_up(consumer, self.topic_reset)
                    batches = consumer.poll(timeout_ms=s.kafka_poll_timeout_ms)
                except UndecodableBatch as exc:
                    self._skip_undecodable(consumer, undecodable, exc)
                    continue
                except Exception as exc:
                    _log.error("commands_poll_failed", error=str(exc))
                    self._stop.wait(1.0)
                    continue
                for records in batches.values():
                    for record in records:
                        self._message(record)
                if batches:
                    consumer.commit()
        finally:
            consumer.close()

    def _message(self, record: ConsumerRecord) -> None:
        where = {"partition": record.partition, "offset": record.offset}
        skew, now = self._settings.commands_max_skew_seconds, time.time()
        try:
            signed = decode_command(record.value, self._key, now=now, max_skew=skew)
            command = signed.command
            position = (record.partition, record.offset)
            expires_at = signed.signed_at + skew
            if self._replays.replayed(command.id, position, expires_at=expires_at, now=now):
                raise UnverifiedCommand("replayed", f"command id {command.id} was seen before")
        except UnverifiedCommand as exc:
            self._rejected.labels(exc.why).inc()
            _log.warning("command_rejected", why=exc.why, reason=exc.reason, **where)
            return
        except InvalidCommand as exc:
            self._counter.labels("invalid", "invalid").inc()
            _log.warning("command_invalid", reason=exc.reason, **where)
            return
        self._handle(command)

    def _skip_undecodable(
        self, consumer: KafkaConsumer, undecodable: UndecodableBatches, exc: UndecodableBatch
    ) -> None:
        """Commands that cannot be decoded are skipped after the retries, counted and logged
        with their offsets (no command is executed from a batch that does not decode)."""
        where = {"partition": exc.partition.partition, "offsets": [exc.first, exc.end]}
        if not undecodable.failed(exc):
            _log.warning("commands_undecodable_retry", reason=exc.reason, **where)
            return
        undecodable.skip(exc)
        with contextlib.suppress(KafkaError):
            consumer.commit({exc.partition: OffsetAndMetadata(exc.end, "", -1)})
        self._counter.labels("invalid", "undecodable").inc()
        _log.error("commands_undecodable_skipped", reason=exc.reason, **where)
