"""The commands topic: decode operator commands and hand them, in order, to the daemon.

Command event: ``{"action": "retrain" | "promote" | "reject" | "rollback",
"symbol": ..., "reason": ..., "actor": ...}``. A message that does not decode
is counted and logged, never executed. Offsets are committed after execution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from kafka import KafkaConsumer, OffsetAndMetadata
from kafka.errors import KafkaError
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daemon.actions import Action, Command
from daemon.errors import InvalidCommand
from daemon.kafka.clients import make_consumer
from daemon.kafka.undecodable import UndecodableBatch, UndecodableBatches
from daemon.logs import get_logger
from daemon.loop import Loop
from daemon.settings import Settings
from trainers.data import validate_symbol

_log = get_logger(component="commands")


class _CommandModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    action: Action
    symbol: str
    reason: str = Field("", max_length=1000)
    actor: str = Field("operator", min_length=1, max_length=200)

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        return validate_symbol(value)


def decode_command(value: bytes | None) -> Command:
    """Bytes from the commands topic -> Command, or InvalidCommand naming the problem."""
    if not value:
        raise InvalidCommand("empty command message")
    try:
        model = _CommandModel.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise InvalidCommand(f"{where}: {first['msg']}") from None
    return Command(model.action, model.symbol, model.reason, model.actor)


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
        counter: Counter,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._bootstrap = bootstrap_servers
        self._handle = handle
        self._counter = counter

    def _run(self) -> None:
        s = self._settings
        consumer = make_consumer(
            s, self._bootstrap, topic=s.topic_commands, group_id=f"{s.kafka_group_id}.commands"
        )
        undecodable = UndecodableBatches(
            consumer,
            retries=s.ingest_undecodable_retries,
            backoff_seconds=s.ingest_undecodable_backoff_seconds,
        )
        try:
            while not self._stop.is_set():
                undecodable.resume_due()
                try:
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
                        self._message(record.value)
                if batches:
                    consumer.commit()
        finally:
            consumer.close()

    def _message(self, value: bytes | None) -> None:
        try:
            command = decode_command(value)
        except InvalidCommand as exc:
            self._counter.labels("invalid", "invalid").inc()
            _log.warning("command_invalid", reason=exc.reason)
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
