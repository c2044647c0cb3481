"""The operations assets in deploy/: alert rules, Prometheus config, Grafana dashboard, compose.

Rules and config are checked by the real ``promtool`` (Debian's ``prometheus`` package;
``scripts/ensure-test-tools.sh`` installs it). The last test scrapes a running daemon and
checks that every metric named by a dashboard or alert expression is one it exports.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from daemon.settings import Settings
from tests.support.helpers import wait_for
from trainers.data import BarRecord
from trainers.synthetic import MarketSpec, generate_bars

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "ctd-dashboard.json"
COMPOSE = DEPLOY / "compose.yaml"

# Suffixes a PromQL query may add to an exported family name, by family type.
SERIES_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    "counter": ("_total",),
    "info": ("_info",),
}


def _yaml() -> Any:
    """PyYAML, required by the dev extra; a clear failure instead of a collection error."""
    try:
        return importlib.import_module("yaml")
    except ModuleNotFoundError:
        pytest.fail("PyYAML is not installed: it is needed to read deploy/ YAML (dev extra)")


def _load_yaml(path: Path) -> Any:
    return _yaml().safe_load(path.read_text())


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not on PATH: run scripts/ensure-test-tools.sh "
            "(installs Debian's 'prometheus' package, which ships promtool)"
        )
    return subprocess.run(
        [exe, *args],
        cwd=PROMETHEUS,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


def _rules() -> list[dict[str, Any]]:
    doc = _load_yaml(PROMETHEUS / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text in the dashboard: panel targets, annotations, variable queries."""
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def metric_names(expr: str) -> set[str]:
    """ctd_* metric names in a PromQL (or Grafana variable) expression; string literals skipped."""
    code = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', "", expr)
    return set(re.findall(r"(?<![\w:])ctd_[A-Za-z0-9_:]*", code))


def exported_names(exposition: str) -> set[str]:
    """Names a query may use for the families in a /metrics text (``# TYPE`` lines)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, flags=re.MULTILINE):
        names.add(name)
        for suffix in SERIES_SUFFIXES.get(kind, ()):
            if not name.endswith(suffix):
                names.add(name + suffix)
    return names


def _grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables with values so promtool can parse the expression."""
    expr = re.sub(r"\$__(?:rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


# --- alert rules and Prometheus config ---------------------------------------------------------
def test_alert_rules_pass_promtool_check() -> None:
    """promtool accepts alerts.yml (syntax, PromQL, templates)."""
    result = _promtool("check", "rules", "alerts.yml")
    _assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    """promtool's unit tests of every alert (firing and quiet cases) pass."""
    _assert_ok(_promtool("test", "rules", "alerts_test.yml"))


def test_every_alert_is_labelled_annotated_and_has_a_firing_and_a_quiet_unit_test() -> None:
    """Each alert has severity, summary, description, and unit tests both firing and silent."""
    rules = _rules()
    alerts = {r["alert"] for r in rules if "alert" in r}
    expected = {
        "CtdModelPromoted",
        "CtdShadowRejected",
        "CtdTrainingFailures",
        "CtdDivergenceWarnings",
        "CtdIngestStalled",
        "CtdIngestLagGrowing",
        "CtdBrokerUnreachable",
        "CtdChampionStale",
        "CtdDlqRate",
        "CtdUndecodableBatchSkipped",
        "CtdDown",
        "CtdSymbolQuarantined",
        "CtdCommandsRejected",
    }
    assert alerts == expected
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    cases = [
        case
        for test in _load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if c.get("exp_alerts") == []}
    assert fires == alerts, f"alerts without a firing test: {sorted(alerts - fires)}"
    assert quiet == alerts, f"alerts without a quiet test: {sorted(alerts - quiet)}"


def test_prometheus_config_passes_promtool_and_scrapes_ctd_with_the_rules() -> None:
    """promtool accepts prometheus.yml, which scrapes ctd:9108 and loads alerts.yml."""
    result = _promtool("check", "config", "prometheus.yml")
    _assert_ok(result)
    assert "1 rule files found" in result.stdout
    config = _load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["ctd"]["static_configs"] for t in sc["targets"]]
    assert targets == ["ctd:9108"]


# --- Grafana ------------------------------------------------------------------------------------
def test_dashboard_is_importable_json_with_variables_and_decision_annotations() -> None:
    """Datasource and symbol variables, and annotations for promotions, rejections, rollbacks.

    deploy/grafana/dashboard.py generates the JSON; tests/unit/deploy/test_grafana_dashboard.py
    checks it is current, and its panel ids, grid, data sources and metric names."""
    dash = _dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["symbol"]["definition"].startswith("label_values(")
    assert variables["symbol"]["definition"].endswith(", symbol)")
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    annotations = [a for a in dash["annotations"]["list"] if a.get("datasource") == ds]
    assert {n for a in annotations for n in metric_names(a["expr"])} == {
        "ctd_promotions_total",
        "ctd_shadow_rejections_total",
        "ctd_rollbacks_total",
    }


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Every dashboard expression, variables substituted, is valid PromQL to promtool."""
    exprs = [_grafana_to_promql(e) for e in _dashboard_exprs(_dashboard())]
    queries = [e for e in exprs if not e.startswith("label_values(")]
    assert queries and all("$" not in e for e in queries)
    rules = [{"record": f"ctd_dashboard:check_{i}", "expr": e} for i, e in enumerate(queries)]
    # JSON is YAML, so promtool reads this without a YAML writer here.
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    _assert_ok(_promtool("check", "rules", str(path)))


def test_grafana_provisioning_loads_the_dashboard_from_prometheus() -> None:
    """The provisioned datasource is the compose Prometheus; the provider path holds the JSON."""
    sources = _load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources.yaml")["datasources"]
    assert [(s["type"], s["url"], s["isDefault"]) for s in sources] == [
        ("prometheus", "http://prometheus:9090", True)
    ]
    providers = _load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards.yaml")["providers"]
    assert [p["type"] for p in providers] == ["file"]
    grafana = _load_yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(_bind(v) for v in grafana["volumes"] if v.startswith("./"))
    target = mounts[DASHBOARD]
    assert str(Path(target).parent) == providers[0]["options"]["path"]


# --- compose ------------------------------------------------------------------------------------
def _bind(volume: str) -> tuple[Path, str]:
    """(host path resolved against deploy/, container path) of a ``./src:/dst[:ro]`` mount."""
    source, target = volume.split(":")[:2]
    return (DEPLOY / source).resolve(), target


def test_podman_compose_parses_the_stack_and_builds_ctd_from_the_repository_dockerfile() -> None:
    """``podman-compose config`` (compose's own parser, as `up` would read the file) accepts
    compose.yaml; its ctd service builds this repository's Dockerfile with no build
    argument overridden, i.e. the image scripts/container-smoke.sh builds and runs."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not on PATH: run scripts/ensure-test-tools.sh (./dev.sh test does)")
    done = subprocess.run(
        [sys.executable, "-m", "podman_compose", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    parsed = _yaml().safe_load(done.stdout)
    assert set(parsed["services"]) == {"kafka", "ctd", "prometheus", "grafana"}
    build = parsed["services"]["ctd"]["build"]
    assert Path(build["context"]).resolve() == REPO
    assert (Path(build["context"]) / build["dockerfile"]).resolve() == REPO / "Dockerfile"
    assert "args" not in build
    for service in parsed["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), volume


def test_compose_wires_kafka_ctd_prometheus_and_grafana() -> None:
    """compose.yaml: KRaft Kafka, ctd built from the repo on kafka:9092, mounts that exist."""
    doc = _load_yaml(COMPOSE)
    services = doc["services"]
    assert set(services) == {"kafka", "ctd", "prometheus", "grafana"}

    kafka = services["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kafka["healthcheck"]["test"]

    ctd = services["ctd"]
    assert (DEPLOY / ctd["build"]["context"] / ctd["build"]["dockerfile"]).resolve() == (
        REPO / "Dockerfile"
    )
    cenv = ctd["environment"]
    assert cenv["CTD_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert cenv["CTD_HTTP_HOST"] == "0.0.0.0"
    assert ctd["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert f"127.0.0.1:{cenv['CTD_HTTP_PORT']}/healthz" in " ".join(ctd["healthcheck"]["test"])
    assert f"{cenv['CTD_HTTP_PORT']}:{cenv['CTD_HTTP_PORT']}" in ctd["ports"]

    scrape = _load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
    targets = {t for job in scrape for sc in job["static_configs"] for t in sc["targets"]}
    assert f"ctd:{cenv['CTD_HTTP_PORT']}" in targets

    prom = services["prometheus"]
    mounts = dict(_bind(v) for v in prom["volumes"] if v.startswith("./"))
    config_in_container = next(
        a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file=")
    )
    assert mounts[PROMETHEUS / "prometheus.yml"] == config_in_container
    for rule_file in _load_yaml(PROMETHEUS / "prometheus.yml")["rule_files"]:
        assert mounts[PROMETHEUS / rule_file] == str(Path(config_in_container).parent / rule_file)

    named = set(doc["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                assert _bind(volume)[0].exists(), f"{name}: mount source missing: {volume}"
            else:
                assert volume.split(":")[0] in named, f"{name}: undeclared volume {volume}"


# --- the running daemon exports what the dashboard and the rules query ----------------------------
@pytest.fixture
def scraped(broker: Any, settings_factory: Callable[..., Settings]) -> Iterator[str]:
    """/metrics text of a real daemon that has stored bars for one symbol."""
    settings = settings_factory(http_port=0, min_bars=100_000, trainers=("xgboost",))
    daemon = Daemon(
        settings, bootstrap_servers=broker.bootstrap_servers, metrics_registry=CollectorRegistry()
    ).start()
    try:
        bars = generate_bars(MarketSpec(symbol="OPSX", seed=1), 50)
        records = [
            BarRecord("OPSX", int(t), float(o), float(h), float(lo), float(c), float(v))
            for t, o, h, lo, c, v in zip(
                bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume, strict=True
            )
        ]
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
        producer.send(settings.topic_bars, key=b"OPSX", value=encode_batch("OPSX", records))
        producer.flush()
        producer.close()
        assert daemon.http is not None
        url = f"{daemon.http.url}/metrics"

        def scrape_once_stored() -> str:
            with urllib.request.urlopen(url, timeout=10) as resp:
                text = str(resp.read().decode())
            return text if 'ctd_store_new_bars_total{symbol="OPSX"} 50.0' in text else ""

        yield wait_for(scrape_once_stored, timeout=60, interval=0.2, message="50 OPSX bars stored")
    finally:
        daemon.stop(10)


@pytest.mark.integration
def test_running_daemon_metrics_pass_promtool_and_cover_every_promql_name(scraped: str) -> None:
    """promtool lints the live /metrics clean; it exports every ctd_* name queried in deploy/."""
    _assert_ok(_promtool("check", "metrics", stdin=scraped))
    used: dict[str, set[str]] = {}
    for expr in _dashboard_exprs(_dashboard()):
        for name in metric_names(expr):
            used.setdefault(name, set()).add("dashboard")
    for rule in _rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    assert len(used) >= 25  # the extraction found the catalogue, not an empty set
    missing = {n: sorted(w) for n, w in sorted(used.items()) if n not in exported_names(scraped)}
    assert not missing, f"queried but not exported by the daemon: {missing}"


def test_metric_name_extraction_handles_functions_labels_and_suffixes() -> None:
    """Names come from PromQL code only (not strings), and series suffixes map to families."""
    expr = (
        "histogram_quantile(0.9, sum by (le) (rate(ctd_training_duration_seconds_bucket"
        '{job="ctd_x", symbol=~"$symbol"}[5m]))) / on(instance) ctd_ready and time() - ctd_a:b'
    )
    assert metric_names(expr) == {"ctd_training_duration_seconds_bucket", "ctd_ready", "ctd_a:b"}
    text = (
        "# TYPE ctd_training_duration_seconds histogram\n"
        "# TYPE ctd_promotions_total counter\n"
        "# TYPE ctd_webhook_deliveries counter\n"
        "# TYPE ctd_build info\n"
    )
    names = exported_names(text)
    assert {
        "ctd_training_duration_seconds_bucket",
        "ctd_training_duration_seconds_count",
        "ctd_promotions_total",
        "ctd_webhook_deliveries_total",
        "ctd_build_info",
    } <= names
    assert "ctd_promotions_total_total" not in names
