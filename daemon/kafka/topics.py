"""Topics that vanish under a running daemon: a broker that came back empty.

The bundled broker keeps its topics in memory, so a restart loses them; a
cluster can lose them to an operator. ``TopicWatch`` asks the broker for the
daemon's topics every ``CHECK_SECONDS`` (one Metadata request on a kept
connection, which never auto-creates a topic; while the broker is down it fails
at once) and re-creates the missing ones as start-up does (``ensure_topics``:
``topic_partitions`` partitions, the bars retention). Each re-creation is
logged (``topics_recreated``) and counted (``ctd_topics_recreated_total``),
and told to ``on_recreated``: the group consumers then catch up with the new
logs (``TopicReset``). The daemon runs it only when it creates its topics
(``create_topics``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, UnknownTopicOrPartitionError
from prometheus_client import Counter

from daemon.errors import TopicSetupError
from daemon.kafka.clients import client_config, default_topics, ensure_topics
from daemon.logs import get_logger
from daemon.loop import Loop
from daemon.settings import Settings

_log = get_logger(component="topics")

CHECK_SECONDS: Final = 1.0
"""Short: the sooner a lost topic is back, the fewer records are written to nowhere."""


class TopicWatch(Loop):
    """A thread that re-creates the daemon's topics when the broker no longer has them.

    ``counter`` is ``ctd_topics_recreated_total`` (its series start at 0);
    ``on_recreated(topics)`` is called on this thread after a re-creation.
    """

    thread_name = "ctd-topics"

    def __init__(
        self,
        settings: Settings,
        bootstrap_servers: str,
        counter: Counter,
        *,
        on_recreated: Callable[[list[str]], None] = lambda _topics: None,
        interval: float = CHECK_SECONDS,
    ) -> None:
        super().__init__()
        self._settings, self._bootstrap = settings, bootstrap_servers
        self._counter, self._on_recreated, self._interval = counter, on_recreated, interval
        self._failing = False
        self.topics = default_topics(settings)
        self._admin: KafkaAdminClient | None = None
        for topic in self.topics:
            counter.labels(topic)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                self.check()
        finally:
            self._close()

    def check(self) -> list[str]:
        """Re-create the topics the broker does not know; return those created. A failure (the
        broker is down) drops the admin connection, and is logged once until a check works."""
        try:
            missing = self.missing()
            if not missing:
                return []
            timeout = self._settings.kafka_request_timeout_ms / 1000
            created = ensure_topics(self._settings, self._bootstrap, missing, timeout=timeout)
        except (KafkaError, TopicSetupError, OSError) as exc:
            self._close()
            if not self._failing:
                _log.warning("topic_check_failed", error=f"{type(exc).__name__}: {exc}")
            self._failing = True
            return []
        self._failing = False
        for topic in created:
            self._counter.labels(topic).inc()
        if created:
            _log.warning(
                "topics_recreated",
                topics=created,
                hint="the broker had lost them (restarted with empty storage?)",
            )
            self._on_recreated(created)
        return created

    def missing(self) -> list[str]:
        """The daemon's topics the broker's metadata does not list. Raises KafkaError."""
        if self._admin is None:
            config = client_config(self._settings, self._bootstrap)
            config["bootstrap_timeout_ms"] = int(self._interval * 1000)  # stop() stays prompt
            self._admin = KafkaAdminClient(**config)
        described = self._admin.describe_topics(self.topics)
        unknown = UnknownTopicOrPartitionError.errno
        return [t["name"] for t in described if t["error_code"] == unknown]

    def _close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()


class TopicReset(ConsumerRebalanceListener):  # type: ignore[misc]
    """What a group consumer does once topics it reads were lost and re-created.

    The log of a re-created topic starts again at offset 0, and the group's
    committed offsets are gone with the old one. Two things then go wrong
    without help (measured with tansu 0.6 and kafka-python 3.0.12):

    - a consumer that kept its partitions keeps its fetch positions too, so the
      first records of the new log (every offset below the old position) are
      skipped: bars lost. ``catch_up`` seeks those partitions to the beginning
      (the bar store ignores a bar it already has);
    - tansu drops from a SyncGroup assignment the partitions of a topic it does
      not have, so a consumer that rejoined before the re-creation settles on no
      partitions, and kafka-python (its metadata still lists them) never rejoins.
      ``catch_up`` leaves the group and joins it again (no committed offset:
      reading starts at the beginning).

    ``recreated`` may be called from any thread; ``catch_up`` from the polling
    thread, before a poll. It waits until a rebalance under way has settled (an
    earlier rejoin would disturb a join in flight). A rebalance listener of its
    own, or fed by another listener's callbacks (``daemon.fleet.handover``).
    """

    def __init__(self, topics: Sequence[str]) -> None:
        self.topics = list(topics)
        self._lock = threading.Lock()
        self._recreated: set[str] = set()
        self._settled: bool = True  # False while a rebalance is under way

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._settled = False

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._settled = True

    def recreated(self, topics: Iterable[str]) -> None:
        """``topics`` were re-created (the ones this consumer does not read are ignored)."""
        with self._lock:
            self._recreated.update(t for t in topics if t in self.topics)

    def catch_up(self, consumer: KafkaConsumer, listener: ConsumerRebalanceListener) -> bool:
        """Rewind to the new logs, or rejoin if stranded; True if it rejoined. Does nothing
        unless a re-creation was reported and the last rebalance has settled."""
        if not self._settled:
            return False
        with self._lock:
            recreated, self._recreated = self._recreated, set()
        if not recreated:
            return False
        assigned = [tp for tp in consumer.assignment() if tp.topic in recreated]
        if assigned:
            consumer.seek_to_beginning(*assigned)
            _log.warning("consumer_rewound", topics=sorted(recreated), partitions=len(assigned))
            return False
        if consumer.assignment():
            return False  # it reads none of the re-created topics' partitions (a fleet)
        _log.warning("consumer_rejoining", topics=self.topics, reason="stranded on no partitions")
        consumer.unsubscribe()
        consumer.subscribe(self.topics, listener=listener)
        return True
