"""Prediction records (``daemon.live.publish``): signals, canary routing, the served record."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.live.publish import (
    IDEMPOTENCY_HEADER,
    PredictionPublisher,
    routes_to_shadow,
    signal_of,
)
from daemon.metrics import Metrics
from daemon.settings import load_settings
from deploy.live_state import LiveUpdate
from deploy.scoring import LiveModel
from deploy.trial import Prediction


class _Future:
    """Acknowledged: a callback runs at once."""

    def add_callback(self, fn: Any) -> _Future:
        fn(None)
        return self

    def add_errback(self, fn: Any) -> _Future:
        return self


class _Producer:
    """Records what was sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any) -> _Future:
        record = {"topic": topic, "key": key, "value": json.loads(value), "headers": headers}
        self.sent.append(record)
        return _Future()


def _publisher(tmp_path: Path, **settings: Any) -> tuple[PredictionPublisher, _Producer]:
    producer = _Producer()
    s = load_settings(data_dir=tmp_path, topic_predictions="preds", **settings)
    model = LiveModel(scorer=None, trained_until=0, trainer="xgboost", created_ts=1000.0)  # type: ignore[arg-type]
    metrics = Metrics(CollectorRegistry(), version="test")
    return PredictionPublisher(producer, s, lambda _s, _v: model, metrics), producer  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("p", "signal"), [(0.9, 1), (0.56, 1), (0.55, 0), (0.5, 0), (0.45, 0), (0.44, -1), (0.0, -1)]
)
def test_signal_from_thresholds(p: float, signal: int) -> None:
    assert signal_of(p, 0.55, 0.45) == signal


def test_canary_routing_is_deterministic_and_serves_about_its_share() -> None:
    """Over 20,000 bars, share 0.5 routes within 4 standard deviations of half (binomial),
    share 0.1 likewise of a tenth; 0 never and 1 always; the same bar always routes alike."""
    n = 20_000
    for share in (0.5, 0.1):
        k = sum(routes_to_shadow("AAPL", 1_700_000_000 + 60 * i, share) for i in range(n))
        assert abs(k - n * share) <= 4 * math.sqrt(n * share * (1 - share)), (share, k)
    assert not any(routes_to_shadow("AAPL", i, 0.0) for i in range(1000))
    assert all(routes_to_shadow("AAPL", i, 1.0) for i in range(1000))
    assert [routes_to_shadow("MSFT", i, 0.5) for i in range(100)] == [
        routes_to_shadow("MSFT", i, 0.5) for i in range(100)
    ]


def test_one_served_record_per_bar_and_a_header_to_drop_repeats(tmp_path: Path) -> None:
    publisher, producer = _publisher(tmp_path)
    update = LiveUpdate(
        "AAPL",
        scored=2,
        ignored=0,
        predictions=(
            Prediction(60, "champion", "v1", 0.7),
            Prediction(60, "shadow", "v2", 0.3),
            Prediction(120, "shadow", "v2", 0.4),  # the champion made no prediction here
        ),
        resolved=0,
    )
    assert publisher.publish([update]) == 3
    values = [m["value"] for m in producer.sent]
    assert {(v["target"], v["predicted_return"]) for v in values} == {("direction", None)}
    assert [(v["ts"], v["slot"], v["served"]) for v in values] == [
        (60, "champion", True),
        (60, "shadow", False),
        (120, "shadow", True),
    ]
    first = values[0]
    assert list(first) == [
        "symbol", "ts", "horizon_bars", "slot", "served", "version", "trainer", "target",
        "p_up", "predicted_return", "signal", "model_age_seconds", "produced_at",
    ]  # fmt: skip
    assert (first["symbol"], first["version"], first["trainer"], first["signal"]) == (
        "AAPL",
        "v1",
        "xgboost",
        1,
    )
    assert first["model_age_seconds"] == pytest.approx(first["produced_at"] - 1000.0, abs=0.01)
    assert producer.sent[0]["key"] == b"AAPL" and producer.sent[0]["topic"] == "preds"
    assert producer.sent[0]["headers"] == [(IDEMPOTENCY_HEADER, b"AAPL:60:v1")]
    latest = publisher.latest("AAPL")
    assert latest is not None and (latest.ts, latest.slot) == (120, "shadow")


def test_with_full_canary_share_the_shadow_is_served(tmp_path: Path) -> None:
    publisher, producer = _publisher(tmp_path, canary_share=1.0)
    update = LiveUpdate(
        "AAPL",
        1,
        0,
        (Prediction(60, "champion", "v1", 0.7), Prediction(60, "shadow", "v2", 0.3)),
        0,
    )
    publisher.publish([update])
    assert [(m["value"]["slot"], m["value"]["served"]) for m in producer.sent] == [
        ("champion", False),
        ("shadow", True),
    ]


def test_return_models_publish_a_predicted_return_and_its_signal(tmp_path: Path) -> None:
    """With CTD_TARGET=return the record carries the predicted log return over the horizon
    (p_up null) and the signal compares it with +/- signal_return_threshold."""
    publisher, producer = _publisher(
        tmp_path, target="return", horizon_bars=5, signal_return_threshold=0.001
    )
    update = LiveUpdate(
        "AAPL",
        scored=3,
        ignored=0,
        predictions=(
            Prediction(60, "champion", "v1", 0.004),
            Prediction(120, "champion", "v1", -0.0005),
            Prediction(180, "champion", "v1", -0.002),
        ),
        resolved=0,
    )
    assert publisher.publish([update]) == 3
    values = [m["value"] for m in producer.sent]
    assert [(v["target"], v["horizon_bars"], v["p_up"]) for v in values] == [
        ("return", 5, None)
    ] * 3
    assert [v["predicted_return"] for v in values] == [0.004, -0.0005, -0.002]
    assert [v["signal"] for v in values] == [1, 0, -1]
