"""A daemon serving return models (CTD_TARGET=return, CTD_HORIZON_BARS=5) on the real broker.

Bars of a market whose next-5-bar log return depends on the features go through the bundled
broker into an in-process daemon; it trains an xgboost return model, serves it, publishes
predicted returns on the predictions topic and the read API, and resolves each prediction
five bars later to the realised log return in its prediction log.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from daemon.kafka.clients import ensure_topics
from tests.support.helpers import own_settings, wait_for
from trainers.data import bar_records
from trainers.features import forward_returns
from trainers.synthetic import planted_return_bars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOL = "RETS"
H = 5
BARS = planted_return_bars(1300, horizon=H, strength=0.5, seed=4)


@pytest.fixture(scope="module")
def daemon(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    settings = own_settings(
        broker.bootstrap_servers,
        tmp_path_factory.mktemp("returns") / "data",
        "rets",
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=500,
        target="return",
        horizon_bars=H,
        signal_return_threshold=0.0005,
        min_bars=800,
        retrain_every_bars=100_000,
        trainers=("xgboost",),
        trainer_params={"xgboost": {"preset": "tiny"}},
        walk_forward_folds=0,
        gate_require_beat_baseline=False,
        gate_max_val_test_diff=1.0,
        gate_max_train_val_gap=1.0,
        gate_min_test_rows=30,
    )
    ensure_topics(settings, broker.bootstrap_servers)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    d = Daemon(settings, bootstrap_servers=broker.bootstrap_servers).start()
    records = bar_records(SYMBOL, BARS)

    def send(lo: int, hi: int, chunk: int) -> None:
        for i in range(lo, hi, chunk):
            value = encode_batch(SYMBOL, records[i : min(i + chunk, hi)])
            producer.send(settings.topic_bars, key=SYMBOL.encode(), value=value)
        producer.flush()

    try:
        send(0, 800, 100)
        wait_for(lambda: d.registry.slots(SYMBOL).champion, 180, message="a champion")
        send(800, len(records), 1)
        wait_for(lambda: d.store.count(SYMBOL) == len(records), 60, message="every bar stored")
        yield d
    finally:
        d.stop(10)
        producer.close()


def _published(d: Daemon, want: set[int]) -> dict[int, dict[str, Any]]:
    """The served record of each bar in ``want``, read back from the predictions topic."""
    topic = d.settings.topic_predictions
    consumer = KafkaConsumer(
        bootstrap_servers=d.settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
    )
    served: dict[int, dict[str, Any]] = {}
    try:
        parts = wait_for(lambda: consumer.partitions_for_topic(topic), 15)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        def poll() -> bool:
            for msgs in consumer.poll(timeout_ms=200).values():
                for msg in msgs:
                    value = json.loads(msg.value)
                    if value["symbol"] == SYMBOL and value["served"]:
                        served[value["ts"]] = value
            return want <= set(served)

        wait_for(poll, 60, interval=0, message=f"served records of {len(want)} bars")
        return served
    finally:
        consumer.close()


def test_the_champion_is_a_return_model_with_a_decay_promise(daemon: Daemon) -> None:
    champion = daemon.registry.slots(SYMBOL).champion
    assert champion is not None
    meta = daemon.registry.metadata(SYMBOL, champion)
    assert (meta.target, meta.feature_spec.label_horizon) == ("return", H)
    assert meta.test_hit_rate is not None and meta.test_accuracy is None


def test_predicted_returns_are_published_and_served_by_the_read_api(daemon: Daemon) -> None:
    """Every bar after the champion's training data has one served record carrying a
    predicted 5-bar log return (p_up null) and its signal against the threshold."""
    champion = daemon.registry.slots(SYMBOL).champion
    assert champion is not None
    trained_until = daemon.registry.metadata(SYMBOL, champion).data.last_ts
    assert trained_until is not None
    after = {int(ts) for ts in BARS.ts if ts > trained_until}
    served = _published(daemon, after)
    records = [served[ts] for ts in sorted(after)]
    assert {(r["target"], r["horizon_bars"], r["p_up"]) for r in records} == {("return", H, None)}
    values = np.array([r["predicted_return"] for r in records])
    assert np.isfinite(values).all() and (values > 0).any() and (values < 0).any()
    for r in records:
        expected = (
            1 if r["predicted_return"] > 0.0005 else -1 if r["predicted_return"] < -0.0005 else 0
        )
        assert r["signal"] == expected
    url = f"{daemon.http.url}/v1/predictions/{SYMBOL}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        latest = json.loads(resp.read())
    assert latest["ts"] == int(BARS.ts[-1]) and latest["target"] == "return"
    assert math.isclose(latest["predicted_return"], served[int(BARS.ts[-1])]["predicted_return"])


def test_each_prediction_resolves_five_bars_later_to_the_realised_log_return(
    daemon: Daemon,
) -> None:
    champion = daemon.registry.slots(SYMBOL).champion
    assert champion is not None
    realised = dict(zip(BARS.ts.tolist(), forward_returns(BARS, H).tolist(), strict=True))

    def resolved() -> list[tuple[float, float]]:
        return daemon.predictions.recent_outcomes(SYMBOL, champion, 10_000)

    # Every scored bar but the newest five has its outcome.
    scored = len(daemon.predictions.unresolved(SYMBOL)) + len(resolved())
    wait_for(lambda: len(resolved()) == scored - H, 30, message="outcomes of all but 5 bars")
    waiting = daemon.predictions.unresolved(SYMBOL)
    assert [p.bar_ts for p in waiting] == BARS.ts[-H:].tolist()
    outcomes = np.array([outcome for _, outcome in resolved()])
    first = len(BARS) - H - len(outcomes)
    expected = np.array([realised[int(ts)] for ts in BARS.ts[first : len(BARS) - H]])
    np.testing.assert_allclose(outcomes, expected, rtol=1e-12)
