"""A real Prometheus server scrapes a running daemon with the shipped rules loaded.

Debian's ``prometheus`` (installed with promtool by scripts/ensure-test-tools.sh)
runs on loopback with a 1 s scrape and evaluation interval, ``alerts.yml`` as
shipped, and one target: an in-process daemon on a broker of its own, reached
through a loopback proxy the test can cut. The daemon gets a champion and a
shadow (a running trial), a dead-lettered message, an operator command and a
quarantined symbol. Then:

- every PromQL expression of the Grafana dashboard returns data from the server;
- every alert rule's condition, evaluated with ``bool`` comparisons (so a quiet
  alert still returns its series), returns data: each rule reads real series;
- CtdSymbolQuarantined fires for the quarantined symbol;
- with the broker cut, CtdBrokerUnreachable goes pending, then firing after its
  ``for`` (1 minute), through Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from daemon.actions import Command
from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import ensure_topics
from daemon.kafka.commands_secret import commands_key
from daemon.kafka.signing import sign_command
from deploy.grafana import dashboard
from tests.support.helpers import own_settings, wait_for
from tests.support.reliability import free_port
from tests.support.tcp_proxy import TcpProxy
from trainers.data import BarRecord, bar_records
from trainers.synthetic import MarketGenerator, MarketSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "ctd-dashboard.json"
SYMBOL, BROKEN = "PROM", "BROKEN"
# Grafana's variables as a dashboard user would resolve them over this short run.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$symbol": ".*",
}
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def boolify(expr: str) -> str:
    """``expr`` with each comparison made a ``bool`` one: it returns 0/1 per series instead of
    filtering them out. Label matchers (inside braces) and strings are left alone."""
    out: list[str] = []
    i, depth, quote = 0, 0, ""
    while i < len(expr):
        ch = expr[i]
        if quote:
            out.append(ch)
            quote = "" if ch == quote and expr[i - 1] != "\\" else quote
            i += 1
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            op = next((c for c in _COMPARISONS if expr.startswith(c, i)), None)
            if op is not None:
                rest = expr[i + len(op) :]
                out.append(op if rest.lstrip().startswith("bool") else f"{op} bool")
                i += len(op)
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def test_boolify_turns_filters_into_bool_comparisons_outside_matchers() -> None:
    assert boolify('up{job="ctd"} == 0') == 'up{job="ctd"} == bool 0'
    assert (
        boolify('x{k=~"a|b"} > 0 and y{l!="z"} > 0')
        == 'x{k=~"a|b"} > bool 0 and y{l!="z"} > bool 0'
    )
    assert boolify("a >= bool 1") == "a >= bool 1"
    assert boolify('rate(x[5m]) / rate(y{q="a>b"}[5m])') == 'rate(x[5m]) / rate(y{q="a>b"}[5m])'


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [data["result"]]

    def alert_states(self, name: str) -> set[str]:
        return {
            a["state"]
            for a in self.get("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name
        }


@dataclass
class Rig:
    daemon: Daemon
    proxy: TcpProxy
    prometheus: Prometheus


def _start_prometheus(tmp: Path, target: str) -> tuple[subprocess.Popen[bytes], Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "prometheus is not on PATH: run scripts/ensure-test-tools.sh (./dev.sh test does)"
        )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "ctd", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        assert process.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_for(ready, 60, message="Prometheus ready")
    return process, server


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("prometheus")
    with TcpProxy() as proxy, LocalBroker(advertised_port=proxy.port) as broker:
        assert broker.port is not None
        proxy.upstream = (broker.host, broker.port)
        bootstrap = f"127.0.0.1:{proxy.port}"
        settings = own_settings(
            bootstrap,
            tmp / "data",
            "p",
            kafka_session_timeout_ms=3000,
            kafka_heartbeat_interval_ms=500,
            http_port=free_port(),
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
        ensure_topics(settings, bootstrap)
        broken = settings.paths.registry / BROKEN
        broken.mkdir(parents=True)
        (broken / "slots.json").write_text('{"champion": ')  # truncated: quarantined at start
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        gen = MarketGenerator(MarketSpec(symbol=SYMBOL, seed=5, signal_strength=1.5))

        sent: list[BarRecord] = []

        def send(n: int, chunk: int) -> None:
            records = bar_records(SYMBOL, gen.next_bars(n))
            sent.extend(records)
            for i in range(0, n, chunk):
                value = encode_batch(SYMBOL, records[i : i + chunk])
                producer.send(settings.topic_bars, key=SYMBOL.encode(), value=value)
            producer.flush()

        daemon = Daemon(settings, bootstrap_servers=bootstrap).start()
        process = None
        try:
            send(800, chunk=100)
            wait_for(lambda: daemon.registry.slots(SYMBOL).champion, 120, message="a champion")
            send(300, chunk=10)
            wait_for(lambda: daemon.registry.slots(SYMBOL).shadow, 120, message="a shadow")
            producer.send(settings.topic_bars, key=SYMBOL.encode(), value=b"{not json")
            corrected = sent[-1]._replace(close=sent[-1].close * 1.001)  # same ts, new values
            producer.send(
                settings.topic_bars, key=SYMBOL.encode(), value=encode_batch(SYMBOL, [corrected])
            )
            command = sign_command(Command("retrain", SYMBOL), commands_key(settings, create=False))
            producer.send(settings.topic_commands, value=command)
            send(300, chunk=1)
            producer.flush()
            process, server = _start_prometheus(tmp, f"127.0.0.1:{daemon.http.port}")
            yield Rig(daemon, proxy, server)
        finally:
            if process is not None:
                process.terminate()
                process.wait(10)
            daemon.stop(10)
            producer.close()


def _resolve(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def _dashboard_expressions() -> list[str]:
    """Panel queries as they are; annotation conditions made ``bool`` (an annotation marks
    only moments with a decision); the variables' series selectors as they are."""
    panels = {t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
              for t in p.get("targets", [])}  # fmt: skip
    annotations = {a["expr"] for a in json.loads(DASHBOARD.read_text())["annotations"]["list"]
                   if "expr" in a}  # fmt: skip
    assert panels and annotations and (panels | annotations) <= set(dashboard.expressions())
    return [_resolve(boolify(e) if e in annotations else e) for e in dashboard.expressions()]


def _rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def _all_return_data(server: Prometheus, exprs: list[str], what: str, timeout: float) -> None:
    empty: list[str] = list(exprs)

    def check() -> bool:
        empty[:] = [e for e in empty if not server.query(e)]
        return not empty

    try:
        wait_for(check, timeout, interval=1.0, message=what)
    except TimeoutError:
        pytest.fail(f"{what}: {len(empty)} returned no data: {empty}")


def test_every_dashboard_expression_returns_data(rig: Rig) -> None:
    exprs = _dashboard_expressions()
    assert len(exprs) >= 30
    _all_return_data(rig.prometheus, exprs, "dashboard expressions", 120)


def test_every_alert_rule_reads_real_series(rig: Rig) -> None:
    rules = _rule_expressions()
    assert {"CtdBrokerUnreachable", "CtdSymbolQuarantined", "CtdDown"} <= set(rules)
    _all_return_data(rig.prometheus, [boolify(e) for e in rules.values()], "alert rules", 120)


def test_the_quarantine_alert_fires_for_the_quarantined_symbol(rig: Rig) -> None:
    assert BROKEN in rig.daemon.quarantine
    wait_for(
        lambda: "firing" in rig.prometheus.alert_states("CtdSymbolQuarantined"),
        60,
        message="CtdSymbolQuarantined firing",
    )
    alerts = rig.prometheus.get("/api/v1/alerts")["alerts"]
    fired = [a["labels"] for a in alerts if a["labels"]["alertname"] == "CtdSymbolQuarantined"]
    assert [(a["symbol"], a["reason"]) for a in fired] == [(BROKEN, "slots")]


def test_broker_down_goes_pending_then_firing(rig: Rig) -> None:
    """Last: it cuts the broker for good."""
    server = rig.prometheus
    assert server.alert_states("CtdBrokerUnreachable") == set()
    cut_at = time.monotonic()
    rig.proxy.cut()
    wait_for(
        lambda: "pending" in server.alert_states("CtdBrokerUnreachable"),
        30,
        message="CtdBrokerUnreachable pending",
    )
    pending_after = time.monotonic() - cut_at
    wait_for(
        lambda: "firing" in server.alert_states("CtdBrokerUnreachable"),
        120,
        message="CtdBrokerUnreachable firing",
    )
    firing_after = time.monotonic() - cut_at
    assert firing_after - pending_after >= 55  # the rule's `for: 1m`, less scrape jitter
    assert server.query("ctd_kafka_connected")[0]["value"][1] == "0"
    status = json.loads(urllib.request.urlopen(f"{rig.daemon.http.url}/healthz", timeout=5).read())
    assert status == {"status": "ok"}  # the daemon itself is up: only the broker is gone
