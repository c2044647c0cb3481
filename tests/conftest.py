"""Shared fixtures: one local broker per session, fresh topics and settings per test."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# kafka-python 3.0.12 calls importlib.resources.read_text at import; the warning is
# attributed to importlib, so pyproject's "kafka.*" filter misses it. Import once, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka  # noqa: F401

from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import ensure_topics
from daemon.settings import Settings, load_settings
from tests.support.helpers import TOPIC_KINDS

pytest_plugins = ["tests.support.s3"]

# Short group timeouts: tansu answers a JoinGroup after ~session_timeout/2 (NOTES.md),
# so tests join in ~1.5 s instead of ~3 s with the daemon's defaults.
TEST_SESSION_TIMEOUT_MS = 3000
TEST_HEARTBEAT_INTERVAL_MS = 500


@dataclass(frozen=True)
class Topics:
    bars: str
    dlq: str
    commands: str
    promotions: str
    predictions: str

    @property
    def all(self) -> list[str]:
        return [self.bars, self.dlq, self.commands, self.promotions, self.predictions]


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """The bundled tansu broker on a free loopback port, shared by the whole session."""
    with LocalBroker() as running:
        yield running


@pytest.fixture
def topics(broker: LocalBroker, settings_base: dict[str, Any]) -> Topics:
    """The daemon's topics with names unique to this test, created on the session broker."""
    tag = uuid.uuid4().hex[:10]
    names = Topics(*(f"t{tag}.{kind}" for kind in TOPIC_KINDS))
    ensure_topics(load_settings(**settings_base), broker.bootstrap_servers, names.all)
    return names


@pytest.fixture
def settings_base(broker: LocalBroker, tmp_path: Path) -> dict[str, Any]:
    return {
        "kafka_bootstrap_servers": broker.bootstrap_servers,
        "kafka_group_id": f"g{uuid.uuid4().hex[:10]}",
        "kafka_session_timeout_ms": TEST_SESSION_TIMEOUT_MS,
        "kafka_heartbeat_interval_ms": TEST_HEARTBEAT_INTERVAL_MS,
        "data_dir": tmp_path / "data",
    }


@pytest.fixture
def settings_factory(settings_base: dict[str, Any], topics: Topics) -> Callable[..., Settings]:
    """Build Settings for this test's broker, topics, consumer group and data dir (tmp_path/data).

    Keyword overrides win, e.g. ``settings_factory(kafka_group_id="other")``.
    """

    def make(**overrides: Any) -> Settings:
        values = {
            **settings_base,
            "topic_bars": topics.bars,
            "topic_dlq": topics.dlq,
            "topic_commands": topics.commands,
            "topic_promotions": topics.promotions,
            "topic_predictions": topics.predictions,
            **overrides,
        }
        return load_settings(**values)

    return make
