"""The promotions topic as an alert sink: every promotion-topic decision, keyed by symbol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from kafka import KafkaProducer

from daemon.logs import get_logger
from deploy.events import RegistryEvent

_log = get_logger(component="promotions")

SEND_TIMEOUT_SECONDS: Final = 10.0


class PromotionsTopicSink:
    """``deploy.alerts.AlertSink`` that produces each event on the promotions topic and waits
    for the broker's acknowledgement (bounded), counting sent and failed."""

    name = "kafka"

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self.sent = 0
        self.failed = 0

    def notify(self, event: RegistryEvent) -> bool:
        """Publish a decision of the promotions topic's kinds; others are not for it."""
        if not event.is_promotion_topic_event:
            return False
        try:
            self._producer.send(self._topic, key=event.symbol.encode(), value=event.to_json()).get(
                timeout=SEND_TIMEOUT_SECONDS
            )
        except Exception as exc:
            self.failed += 1
            _log.error(
                "promotion_publish_failed", symbol=event.symbol, kind=event.event, error=str(exc)
            )
            return False
        self.sent += 1
        return True

    def deliveries(self) -> Mapping[str, int]:
        return {"sent": self.sent, "failed": self.failed}

    def close(self, timeout: float) -> None:
        """Nothing queued: every send was waited for. The producer belongs to the daemon."""
