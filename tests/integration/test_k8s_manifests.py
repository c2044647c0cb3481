"""The Kubernetes manifests in deploy/k8s/: valid for the API server, and wired the way ctd needs.

Built-in kinds are validated offline by ``kubernetes-validate`` (strict: an unknown or
misspelt field fails) against the schemas it bundles for ``K8S_VERSIONS``. The Prometheus
Operator kinds (CRDs, no bundled schema) are checked field by field, and the PrometheusRule
must hold exactly deploy/prometheus/alerts.yml's rules. Regenerate it after editing the
alerts with ``python -m tests.integration.test_k8s_manifests --write-prometheusrule``.
"""

from __future__ import annotations

import copy
import importlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.settings import Settings

# The repository root, wherever under tests/ this module lives.
REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
K8S = REPO / "deploy" / "k8s"
OPERATOR = K8S / "prometheus-operator"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = OPERATOR / "prometheusrule.yaml"
# Not applied by the kustomization: a template with placeholders for the real Secret.
SECRET_EXAMPLE = K8S / "secret.example.yaml"
# The newest schemas kubernetes-validate bundles, and an older release managed clusters run.
K8S_VERSIONS = ("1.31", "1.37")
OPERATOR_API = "monitoring.coreos.com/v1"
# Settings the manifests set that daemon/settings.py does not define yet. pydantic-settings
# ignores unknown CTD_* variables silently, so until then they have no effect. Remove a name
# here when its setting lands (the last test fails as a reminder).
NOT_YET_SETTINGS: frozenset[str] = frozenset()

PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml: do not edit. After changing the alerts, run
#   python -m tests.integration.test_k8s_manifests --write-prometheusrule
# (tests/integration/test_k8s_manifests.py fails while the two differ.) Add the label your
# Prometheus' ruleSelector selects (kube-prometheus-stack: `release: <its release name>`).
"""


def _yaml() -> Any:
    """PyYAML, required by the dev extra; a clear failure instead of a collection error."""
    try:
        return importlib.import_module("yaml")
    except ModuleNotFoundError:
        pytest.fail("PyYAML is not installed: it is needed to read deploy/ YAML (dev extra)")


def _validator() -> Any:
    try:
        return importlib.import_module("kubernetes_validate")
    except ModuleNotFoundError:
        pytest.fail(
            "kubernetes-validate is not installed (dev extra): pip install kubernetes-validate"
        )


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in _yaml().safe_load_all(path.read_text()) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _resources() -> list[dict[str, Any]]:
    """Every resource applied by the kustomization and its Prometheus Operator component."""
    return [doc for path in _manifest_files() if path != SECRET_EXAMPLE for doc in _docs(path)]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for doc in _resources()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    containers = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env() -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in _container().get("env", [])}


def _config() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap", "ctd-config")["data"]
    return data


def _metrics_port() -> int:
    (port,) = [p for p in _container()["ports"] if p["name"] == "metrics"]
    number: int = port["containerPort"]
    return number


def _alerts_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = _yaml().safe_load(ALERTS.read_text())["groups"]
    return groups


def render_prometheus_rule() -> str:
    """The PrometheusRule manifest holding alerts.yml's groups, as the file should read."""
    rule = {
        "apiVersion": OPERATOR_API,
        "kind": "PrometheusRule",
        "metadata": {"name": "ctd", "labels": {"app.kubernetes.io/name": "ctd"}},
        "spec": {"groups": _alerts_groups()},
    }
    yaml = _yaml()

    class IndentedDumper(yaml.SafeDumper):  # type: ignore[misc,name-defined]
        """Indents block sequences under their key, as the other manifests (and yamllint) do."""

        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            super().increase_indent(flow, False)

    body: str = yaml.dump(
        rule, Dumper=IndentedDumper, sort_keys=False, width=1000, allow_unicode=True
    )
    return PROMETHEUS_RULE_HEADER + body


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    """Each built-in resource passes strict schema validation; operator kinds use their CRD API."""
    kv = _validator()
    docs = _docs(path)
    assert docs, f"{path} holds no resource"
    problems = []
    for doc in docs:
        if doc["apiVersion"] == OPERATOR_API:
            # A CRD: kubernetes-validate bundles no schema for it (checked by the tests below).
            assert doc["kind"] in {"ServiceMonitor", "PrometheusRule"}, doc["kind"]
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:  # its str() holds the whole schema: keep the gist
            where = ".".join(str(part) for part in exc.absolute_path)
            problems.append(f"{doc['kind']} at {where or '.'}: {exc.message}")
    assert problems == [], f"{path.name} invalid for Kubernetes {version}"


def test_the_validator_rejects_a_misspelt_field() -> None:
    """Strict validation is really on: an unknown field in the StatefulSet fails."""
    kv = _validator()
    broken = copy.deepcopy(_one("StatefulSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_yaml_is_lint_clean() -> None:
    """yamllint finds nothing (duplicate keys, which PyYAML silently merges, above all)."""
    try:
        config_mod = importlib.import_module("yamllint.config")
        linter = importlib.import_module("yamllint.linter")
    except ModuleNotFoundError:
        pytest.fail("yamllint is not installed (dev extra): pip install yamllint")
    config = config_mod.YamlLintConfig(
        "extends: default\n"
        "rules:\n"
        "  document-start: disable\n"
        "  line-length: {max: 100, ignore: [deploy/k8s/prometheus-operator/prometheusrule.yaml]}\n"
        "  comments: {min-spaces-from-content: 1}\n"
    )
    problems = [
        f"{path.relative_to(REPO)}:{p.line}:{p.column}: {p.message}"
        for path in sorted(K8S.rglob("*.yaml"))
        for p in linter.run(path.read_text(), config, str(path.relative_to(REPO)))
    ]
    assert problems == []


def test_kustomization_lists_every_manifest() -> None:
    """The kustomization and its operator component apply every manifest but the example Secret."""
    root = _yaml().safe_load((K8S / "kustomization.yaml").read_text())
    component = _yaml().safe_load((OPERATOR / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    listed = {K8S / name for name in root["resources"]} | {
        OPERATOR / name for name in component["resources"]
    }
    assert listed == set(_manifest_files()) - {SECRET_EXAMPLE}
    # Offered, commented out: the component needs the operator's CRDs in the cluster.
    text = (K8S / "kustomization.yaml").read_text()
    assert re.search(r"^# components:\n#   - prometheus-operator$", text, re.M)


def test_statefulset_is_governed_by_the_headless_service() -> None:
    """serviceName is a headless Service selecting the StatefulSet's pods."""
    sts = _one("StatefulSet")
    service = _one("Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()


def test_probes_ask_healthz_and_readyz_on_the_metrics_port() -> None:
    """Startup and liveness probe /healthz, readiness /readyz, all on the named metrics port."""
    c = _container()
    port = _metrics_port()
    assert port == int(_config()["CTD_HTTP_PORT"])
    assert _config()["CTD_HTTP_HOST"] == "0.0.0.0"
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "metrics"), probe


def test_group_instance_id_is_the_pod_name() -> None:
    """Kafka static membership: CTD_KAFKA_GROUP_INSTANCE_ID comes from metadata.name."""
    ref = _env()["CTD_KAFKA_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]
    assert ref["fieldPath"] == "metadata.name"
    assert "CTD_KAFKA_GROUP_INSTANCE_ID" not in _config()


def test_termination_grace_outlasts_the_shutdown_grace() -> None:
    """Kubernetes waits at least 15 s longer than the daemon's drain before its SIGKILL."""
    default = Settings.model_fields["shutdown_grace_seconds"].default
    grace = float(_config().get("CTD_SHUTDOWN_GRACE_SECONDS", default))
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= grace + 15


def test_resources_are_requested_and_limited() -> None:
    """CPU and memory have requests and limits, requests no higher than limits."""
    res = _container()["resources"]
    for key in ("cpu", "memory"):
        assert key in res["requests"] and key in res["limits"], key
    assert _quantity(res["requests"]["cpu"]) <= _quantity(res["limits"]["cpu"])
    assert _quantity(res["requests"]["memory"]) <= _quantity(res["limits"]["memory"])
    # Benchmarks: 1,000 symbols, daemon + workers, peaked under 1 GiB.
    assert _quantity(res["limits"]["memory"]) >= 2 * 2**30


def _quantity(text: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|)", str(text))
    assert match, f"unsupported quantity {text!r}"
    return float(match.group(1)) * units[match.group(2)]


def test_pod_runs_non_root_on_a_read_only_root_fs_with_writable_data_and_tmp() -> None:
    """Non-root, no privilege escalation, read-only root; the data volume and /tmp writable."""
    sts = _one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    c = _container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert mounts[_config()["CTD_DATA_DIR"]] in claims
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]]


def test_settings_come_from_the_configmap_and_secrets_from_a_secret() -> None:
    """Settings load from ctd-config; the commands secret and AWS keys only by Secret reference."""
    c = _container()
    assert {"configMapRef": {"name": "ctd-config"}} in c["envFrom"]
    assert _config()["CTD_REGISTRY_URL"].startswith("s3://")
    env = _env()
    secret_refs = {
        name: item["valueFrom"]["secretKeyRef"]
        for name, item in env.items()
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert set(secret_refs) == {"CTD_COMMANDS_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert secret_refs["CTD_COMMANDS_SECRET"].get("optional", False) is False
    for name in secret_refs:
        assert "value" not in env[name]
        assert name not in _config()
    (example,) = _docs(SECRET_EXAMPLE)
    names = {ref["name"] for ref in secret_refs.values()}
    assert names == {example["metadata"]["name"]}
    assert {ref["key"] for ref in secret_refs.values()} == set(example["stringData"])
    assert set(example["stringData"].values()) == {"REPLACE_ME"}
    assert not any(doc["kind"] == "Secret" for doc in _resources())


def test_every_ctd_variable_names_a_setting() -> None:
    """A misspelt CTD_* variable would be ignored silently: each one is a field of Settings."""
    names = {k for k in _config() if k.startswith("CTD_")} | {
        k for k in _env() if k.startswith("CTD_")
    }
    fields = set(Settings.model_fields)
    unknown = {n for n in names if n.removeprefix("CTD_").lower() not in fields}
    assert {n.removeprefix("CTD_").lower() for n in unknown} <= NOT_YET_SETTINGS, unknown
    landed = NOT_YET_SETTINGS & fields
    assert not landed, f"now settings, remove them from NOT_YET_SETTINGS: {sorted(landed)}"


def test_metrics_service_is_scraped_as_the_job_the_alerts_use() -> None:
    """The ServiceMonitor selects only the metrics Service, whose name is the alerts' job."""
    (job,) = set(re.findall(r'up\{job="([^"]+)"\}', ALERTS.read_text()))
    service = _one("Service", job)
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    monitor = _one("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    matching = [
        s["metadata"]["name"]
        for s in _resources()
        if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()
    ]
    assert matching == [job]
    assert "jobLabel" not in monitor["spec"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


def test_prometheus_rule_holds_exactly_the_alert_rules() -> None:
    """The PrometheusRule's groups equal alerts.yml's; the file is what the generator writes."""
    rule = _one("PrometheusRule")
    assert rule["spec"]["groups"] == _alerts_groups(), (
        "deploy/k8s/prometheus-operator/prometheusrule.yaml differs from alerts.yml: run "
        "python -m tests.integration.test_k8s_manifests --write-prometheusrule"
    )
    assert PROMETHEUS_RULE.read_text() == render_prometheus_rule()


def test_pod_disruption_budget_allows_one_pod_down() -> None:
    """At most one ctd pod is voluntarily disrupted at a time; it selects the StatefulSet's pods."""
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = _one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-prometheusrule"]:
        sys.exit("usage: python -m tests.integration.test_k8s_manifests --write-prometheusrule")
    PROMETHEUS_RULE.write_text(render_prometheus_rule())
    print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}")
