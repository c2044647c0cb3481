"""The product's output against the real broker: the predictions topic and the read API.

One in-process daemon (xgboost, lenient gates, a trial that never decides on
its own) gets a champion and then a shadow for a symbol with a planted signal;
its records on the predictions topic are read back from the broker, its /v1
routes over HTTP. The same data directory then serves with a 0.5 canary share,
and finally an operator promotion switches the served version.
"""

from __future__ import annotations

import hashlib
import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from daemon.actions import Command
from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from daemon.kafka.clients import ensure_topics
from daemon.live.publish import IDEMPOTENCY_HEADER, routes_to_shadow
from daemon.settings import Settings
from tests.support.helpers import own_settings, wait_for
from trainers.data import bar_records
from trainers.synthetic import MarketGenerator, MarketSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOL = "PLANT"


@dataclass
class Rig:
    settings: Settings
    producer: KafkaProducer
    gen: MarketGenerator = field(default_factory=lambda: MarketGenerator(
        MarketSpec(symbol=SYMBOL, seed=5, signal_strength=1.5)
    ))  # fmt: skip
    sent_ts: list[int] = field(default_factory=list)
    daemon: Daemon | None = None

    def start(self, **overrides: Any) -> Daemon:
        settings = self.settings.model_copy(update=overrides)
        self.daemon = Daemon(settings, bootstrap_servers=self.bootstrap).start()
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(10)
            self.daemon = None

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers or ""

    def send(self, n: int, chunk: int) -> None:
        records = bar_records(SYMBOL, self.gen.next_bars(n))
        for i in range(0, n, chunk):
            value = encode_batch(SYMBOL, records[i : i + chunk])
            self.producer.send(self.settings.topic_bars, key=SYMBOL.encode(), value=value)
        self.producer.flush()
        self.sent_ts.extend(r.ts for r in records)

    def stored(self) -> int:
        assert self.daemon is not None
        return self.daemon.store.count(SYMBOL)

    def served_for(self, bars: list[int], timeout: float = 60) -> list[dict[str, Any]]:
        """Every record on the predictions topic (with its key and idempotency header), read
        from the start until each of ``bars`` has a served record, then one poll more."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False
        )
        records: list[dict[str, Any]] = []
        try:
            topic = self.settings.topic_predictions
            parts = wait_for(lambda: consumer.partitions_for_topic(topic), 15)
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)

            def poll() -> bool:
                for msgs in consumer.poll(timeout_ms=200).values():
                    for msg in msgs:
                        value = json.loads(msg.value)
                        value["_header"] = dict(msg.headers)[IDEMPOTENCY_HEADER].decode()
                        value["_key"] = msg.key.decode()
                        records.append(value)
                return set(bars) <= set(_served(records))

            wait_for(poll, timeout, interval=0, message=f"served records of {len(bars)} bars")
            poll()
            return records
        finally:
            consumer.close()

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        assert self.daemon is not None
        request = urllib.request.Request(f"{self.daemon.http.url}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def rig(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Champion then shadow for SYMBOL, with 400 more single bars scored by both."""
    settings = own_settings(
        broker.bootstrap_servers,
        tmp_path_factory.mktemp("predictions") / "data",
        "pred",
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=500,
        min_bars=800,
        retrain_every_bars=300,
        trainers=("xgboost",),
        walk_forward_folds=0,
        gate_require_beat_baseline=False,
        gate_max_val_test_diff=1.0,
        gate_max_train_val_gap=1.0,
        gate_min_test_rows=30,
        promotion_min_samples=100_000,
        promotion_max_samples=200_000,
    )
    ensure_topics(settings, broker.bootstrap_servers)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    r = Rig(settings, producer)
    try:
        daemon = r.start()
        r.send(800, chunk=100)
        wait_for(lambda: daemon.registry.slots(SYMBOL).champion, 120, message="a champion")
        r.send(300, chunk=10)
        wait_for(lambda: daemon.registry.slots(SYMBOL).shadow, 120, message="a shadow")
        r.send(400, chunk=1)
        wait_for(lambda: r.stored() == len(r.sent_ts), 60, message="every bar stored")
        yield r
    finally:
        r.stop()
        producer.close()


def _served(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    served: dict[int, dict[str, Any]] = {}
    for record in records:
        if record["served"]:
            assert record["ts"] not in served, f"two served records for bar {record['ts']}"
            served[record["ts"]] = record
    return served


def test_every_bar_after_the_champion_has_exactly_one_served_record(rig: Rig) -> None:
    """From the champion's first scored bar on, each stored bar has one served record, made
    with the champion (canary share 0), on a bar after the champion's training data."""
    daemon = rig.daemon
    assert daemon is not None
    champion = daemon.registry.slots(SYMBOL).champion
    assert champion is not None
    trained_until = daemon.registry.metadata(SYMBOL, champion).data.last_ts
    assert trained_until is not None
    after = [ts for ts in rig.sent_ts if ts > trained_until]
    records = rig.served_for(after)
    served = _served(records)
    assert sorted(served) == after
    assert {r["version"] for r in served.values()} == {champion}
    assert all(r["slot"] == "champion" for r in served.values())
    assert all(r["_key"] == SYMBOL for r in records)
    assert all(r["_header"] == f"{SYMBOL}:{r['ts']}:{r['version']}" for r in records)
    shadow_records = [r for r in records if r["slot"] == "shadow"]
    assert len(shadow_records) >= 400  # the shadow scored at least the single bars
    assert all(not r["served"] for r in shadow_records)
    for r in records:
        assert 0.0 <= r["p_up"] <= 1.0 and r["signal"] in (-1, 0, 1)
        assert r["trainer"] == "xgboost" and r["horizon_bars"] == 1
        assert r["model_age_seconds"] is not None and r["model_age_seconds"] >= 0
    status, _, body = rig.get("/metrics")
    assert status == 200
    text = body.decode()
    assert 'ctd_predictions_published_total{outcome="acked"}' in text
    count = next(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ctd_prediction_latency_seconds_count")
    )
    assert count == len(served)


def test_the_read_api_serves_status_predictions_metadata_and_the_model(rig: Rig) -> None:
    daemon = rig.daemon
    assert daemon is not None
    slots = daemon.registry.slots(SYMBOL)
    status, headers, body = rig.get("/v1/symbols")
    assert status == 200 and headers["Content-Type"] == "application/json"
    (row,) = [s for s in json.loads(body)["symbols"] if s["symbol"] == SYMBOL]
    assert (row["champion"], row["shadow"], row["bars"]) == (
        slots.champion,
        slots.shadow,
        len(rig.sent_ts),
    )
    status, _, body = rig.get(f"/v1/predictions/{SYMBOL}")
    assert status == 200
    latest = json.loads(body)
    assert (latest["ts"], latest["served"], latest["version"]) == (
        rig.sent_ts[-1],
        True,
        slots.champion,
    )
    status, _, body = rig.get(f"/v1/models/{SYMBOL}/champion")
    assert status == 200 and json.loads(body)["version"] == slots.champion
    assert slots.champion is not None
    meta = daemon.registry.metadata(SYMBOL, slots.champion)
    status, headers, body = rig.get(f"/v1/models/{SYMBOL}/champion/model.onnx")
    assert status == 200
    assert meta.onnx is not None
    assert hashlib.sha256(body).hexdigest() == meta.onnx.sha256
    assert headers["ETag"] == f'"{meta.onnx.sha256}"'
    status, headers, body = rig.get(f"/v1/models/{SYMBOL}/champion/model.onnx", "HEAD")
    assert status == 200 and body == b"" and headers["ETag"] == f'"{meta.onnx.sha256}"'
    for path, code in [
        ("/v1/predictions/NOSUCH", 404),
        ("/v1/models/NOSUCH/champion", 404),
        ("/v1/predictions/bad%20symbol", 404),
        ("/v1/predictions/../../etc", 404),
        ("/v1/models/PLANT/shadow", 404),
        ("/v1/nothing", 404),
    ]:
        status, headers, body = rig.get(path)
        assert (status, headers["Content-Type"]) == (code, "application/json"), path
        assert "error" in json.loads(body), path
    status, _, _ = rig.get("/v1/symbols", method="POST")
    assert status == 405


def test_a_canary_share_of_half_serves_the_shadow_on_the_bars_its_hash_picks(rig: Rig) -> None:
    """Restarted with canary_share 0.5: for every new bar the served slot is the one the
    hash of (symbol, bar) picks, and over 400 bars that is about half (binomial, 4 sd)."""
    rig.stop()
    daemon = rig.start(canary_share=0.5, retrain_every_bars=100_000)  # the same shadow
    wait_for(lambda: daemon.readiness()["group"], 60, message="the daemon serves its partitions")
    first = len(rig.sent_ts)
    rig.send(400, chunk=1)
    new = rig.sent_ts[first:]
    slots = daemon.registry.slots(SYMBOL)
    served = _served(rig.served_for(new))
    picks = {ts: routes_to_shadow(SYMBOL, ts, 0.5) for ts in new}
    for ts in new:
        record = served[ts]
        assert record["slot"] == ("shadow" if picks[ts] else "champion"), ts
        assert record["version"] == (slots.shadow if picks[ts] else slots.champion), ts
    k, n = sum(picks.values()), len(new)
    assert abs(k - n / 2) <= 4 * math.sqrt(n / 4), k


def test_after_a_promotion_served_records_carry_the_new_version(rig: Rig) -> None:
    daemon = rig.daemon
    assert daemon is not None
    slots = daemon.registry.slots(SYMBOL)
    event = daemon.handle_command(Command("promote", SYMBOL, reason="test", force=True))
    assert event is not None and event.event == "promoted"
    first = len(rig.sent_ts)
    rig.send(100, chunk=1)
    new = rig.sent_ts[first:]
    served = _served(rig.served_for(new))
    assert {served[ts]["version"] for ts in new} == {slots.shadow}
    assert {served[ts]["slot"] for ts in new} == {"champion"}
