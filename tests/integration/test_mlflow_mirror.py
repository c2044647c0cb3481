"""MLflow model registry mirror (optional extra): the champion and shadow of ctd's registry are
the aliases champion / challenger of an MLflow registered model, checked against a real
`mlflow server` (SQLite backend) on loopback.

The server needs the full `mlflow` package (extra `dev`); without it these tests fail,
saying so. One server serves the module; each test mirrors under a prefix of its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from daemon.actions import Command
from daemon.app import Daemon
from daemon.errors import TrackingUnavailableError
from daemon.live.mlflow_mirror import MlflowRegistryMirror
from daemon.settings import Settings
from deploy.events import RegistryEvent
from deploy.registry import Registry
from tests.support.helpers import wait_for
from tests.support.metadata import write_sample_metadata
from trainers.features import FEATURE_SPEC
from trainers.naive import NaiveModel

SYMBOL = "BTCUSDT"
SERVER_START_SECONDS = 180.0  # four cold imports of mlflow's server stack on a busy 2-core box


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(uri: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{tail}")
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the server's process group (it forks a uvicorn worker), politely first."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)


def test_without_mlflow_the_mirror_refuses_to_start_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment without the extra fails at construction, naming what to install."""
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(TrackingUnavailableError, match=r"pip install 'ctd\[mlflow\]'"):
        MlflowRegistryMirror(Registry(tmp_path), "http://127.0.0.1:1")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` with a SQLite backend on a free loopback port; its URI once /health
    answers."""
    if importlib.util.find_spec("mlflow.server") is None or (
        importlib.util.find_spec("alembic") is None
    ):
        pytest.fail(
            "the full mlflow package is not installed: pip install -c constraints.txt -e '.[dev]'"
        )
    root = tmp_path_factory.mktemp("mlflow")
    port, log = _free_port(), root / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    command += ["--default-artifact-root", str(root / "art")]
    # No job runner: its consumer processes are of no use to a registry and slow the start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: _healthy(uri, process, log),
            timeout=SERVER_START_SECONDS,
            interval=0.2,
            message=f"mlflow server /health on {uri}",
        )
        yield uri
    finally:
        _stop(process)


class Rig:
    """A local registry, a mirror prefix of the test's own, and an MLflow client to check with."""

    def __init__(self, uri: str, root: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri, self.root = uri, root
        self.registry = Registry(root / "registry")
        self.client = MlflowClient(tracking_uri=uri)
        self.prefix = f"t{uuid.uuid4().hex[:8]}-"
        self.name = self.prefix + SYMBOL
        self._mirrors: list[MlflowRegistryMirror] = []

    def add(self, trainer: str, registry: Registry | None = None) -> str:
        """A version of SYMBOL (a real constant-probability ONNX model) trained by ``trainer``."""
        staging = self.root / f"staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        NaiveModel(0.5, len(FEATURE_SPEC.names)).export_onnx(staging / "model.onnx")
        write_sample_metadata(staging, symbol=SYMBOL, trainer=trainer)
        return (registry or self.registry).add_version(SYMBOL, staging)

    def mirror(self, uri: str | None = None, **options: Any) -> MlflowRegistryMirror:
        """A mirror of the rig's registry to ``uri`` (default: the server), closed at the end."""
        options = {"prefix": self.prefix, "backoff": 0.05, **options}
        self._mirrors.append(MlflowRegistryMirror(self.registry, uri or self.uri, **options))
        return self._mirrors[-1]

    def aliases(self) -> dict[str, str]:
        """Alias -> the ctd version its MLflow model version carries."""
        model = self.client.get_registered_model(self.name)
        return {
            alias: self.client.get_model_version(self.name, number).tags["ctd.version"]
            for alias, number in model.aliases.items()
        }

    def versions(self) -> dict[str, Any]:
        """ctd version -> its MLflow model version; none may have two."""
        found = self.client.search_model_versions(f"name = '{self.name}'")
        by_ctd = {mv.tags["ctd.version"]: mv for mv in found}
        assert len(by_ctd) == len(found), "a ctd version has two MLflow versions"
        return by_ctd

    def close(self) -> None:
        for mirror in self._mirrors:
            mirror.close(5)


@pytest.fixture
def rig(mlflow_server: str, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(mlflow_server, tmp_path)
    yield made
    made.close()


def _deliver(mirror: MlflowRegistryMirror, events: Sequence[RegistryEvent]) -> None:
    """Notify ``events`` and wait until each is mirrored; none may fail."""
    done = sum(mirror.deliveries().values())
    assert all(mirror.notify(event) for event in events)
    wait_for(
        lambda: sum(mirror.deliveries().values()) >= done + len(events),
        timeout=60,
        message=f"{len(events)} event(s) mirrored",
    )
    assert mirror.deliveries()["failed"] == 0


@pytest.mark.integration
def test_aliases_follow_the_slots_through_every_decision(rig: Rig) -> None:
    """Bootstrap, shadow placement, promotion, rollback and rejection each leave champion and
    challenger on the MLflow versions of the champion and shadow slots; every ctd version is
    one MLflow version whose source is its place in ctd's registry and whose tags say what
    it is."""
    registry, mirror = rig.registry, rig.mirror()
    v1, v2, v3 = rig.add("xgboost"), rig.add("lstm"), rig.add("tcn")
    _deliver(mirror, registry.place(SYMBOL, v1))
    assert rig.aliases() == {"champion": v1}
    _deliver(mirror, registry.place(SYMBOL, v2))
    assert rig.aliases() == {"champion": v1, "challenger": v2}
    _deliver(mirror, [registry.promote(SYMBOL, evidence={})])
    assert rig.aliases() == {"champion": v2}
    _deliver(mirror, registry.place(SYMBOL, v3))
    assert rig.aliases() == {"champion": v2, "challenger": v3}
    _deliver(mirror, [registry.rollback(SYMBOL)])  # the shadow stays through a rollback
    assert rig.aliases() == {"champion": v1, "challenger": v3}
    _deliver(mirror, [registry.reject(SYMBOL, evidence={})])
    assert rig.aliases() == {"champion": v1}

    versions = rig.versions()
    assert sorted(versions) == sorted([v1, v2, v3])
    for version, trainer in ((v1, "xgboost"), (v2, "lstm"), (v3, "tcn")):
        held = versions[version]
        where = (rig.root / "registry" / SYMBOL / version).resolve()
        assert held.source == f"ctd-file://{where}"
        assert (held.tags["ctd.symbol"], held.tags["ctd.trainer"]) == (SYMBOL, trainer)
    assert mirror.deliveries() == {"sent": 6, "failed": 0, "dropped": 0}


@pytest.mark.integration
def test_redelivered_events_create_no_version_and_move_no_alias_back(rig: Rig) -> None:
    """Announcements are at-least-once: after each decision was mirrored, delivering the whole
    history again, then the stale bootstrap alone, creates no MLflow version and leaves the
    champion where the slots say."""
    registry, mirror = rig.registry, rig.mirror()
    v1, v2 = rig.add("xgboost"), rig.add("xgboost")
    boot = registry.place(SYMBOL, v1)
    _deliver(mirror, boot)
    placed = registry.place(SYMBOL, v2)
    _deliver(mirror, placed)
    promoted = [registry.promote(SYMBOL, evidence={})]
    _deliver(mirror, promoted)
    numbers = {version: mv.version for version, mv in rig.versions().items()}
    assert sorted(numbers) == sorted([v1, v2])
    _deliver(mirror, [*boot, *placed, *promoted])
    _deliver(mirror, boot)
    assert rig.aliases() == {"champion": v2}
    assert {version: mv.version for version, mv in rig.versions().items()} == numbers


@pytest.mark.integration
def test_an_unreachable_server_costs_only_counted_failures_and_the_next_decision_repairs(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With MLflow down, notify returns at once, never raises, and each event is counted failed
    after its retries; once MLflow is back, the symbol's next decision mirrors the slots as
    they are, including the decision that was missed."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    v1, v2 = rig.add("xgboost"), rig.add("lstm")
    missed = rig.registry.place(SYMBOL, v1)
    down = rig.mirror(f"http://127.0.0.1:{_free_port()}", retries=2, backoff=0.01)
    started = time.monotonic()
    assert all(down.notify(event) for event in missed * 3)
    assert time.monotonic() - started < 0.5
    wait_for(lambda: down.deliveries()["failed"] == 3, timeout=60, message="3 failures counted")
    assert down.deliveries() == {"sent": 0, "failed": 3, "dropped": 0}
    down.close(5)
    assert down.notify(missed[0]) is False
    assert down.deliveries()["dropped"] == 1

    _deliver(rig.mirror(), rig.registry.place(SYMBOL, v2))
    assert rig.aliases() == {"champion": v1, "challenger": v2}


@pytest.mark.integration
def test_the_daemon_mirrors_its_operators_decisions(
    rig: Rig, settings_factory: Callable[..., Settings]
) -> None:
    """A daemon with CTD_MLFLOW_REGISTRY_MIRROR on mirrors an operator's promote and rollback
    and counts them in ctd_alert_deliveries_total{sink="mlflow"}."""
    settings = settings_factory(
        http_port=0,
        mlflow_tracking_uri=rig.uri,
        mlflow_registry_mirror=True,
        mlflow_model_prefix=rig.prefix,
    )
    before = Registry(settings.paths.registry)
    v1, v2 = rig.add("xgboost", before), rig.add("lstm", before)
    before.place(SYMBOL, v1)
    before.place(SYMBOL, v2)
    assert settings.kafka_bootstrap_servers is not None
    daemon = Daemon(settings, bootstrap_servers=settings.kafka_bootstrap_servers).start()

    def counted(outcome: str) -> float | None:
        labels = {"sink": "mlflow", "outcome": outcome}
        return daemon.metrics.registry.get_sample_value("ctd_alert_deliveries_total", labels)

    try:
        promote = Command("promote", SYMBOL, reason="test", force=True)  # no trial evidence
        assert daemon.handle_command(promote) is not None
        wait_for(lambda: counted("sent") == 1, 60, message="the promotion mirrored")
        assert rig.aliases() == {"champion": v2}
        assert daemon.handle_command(Command("rollback", SYMBOL, reason="test")) is not None
        wait_for(lambda: counted("sent") == 2, 60, message="the rollback mirrored")
        assert rig.aliases() == {"champion": v1}
        assert counted("failed") == 0
    finally:
        daemon.stop(10)
