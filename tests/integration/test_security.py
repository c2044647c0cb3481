"""Kafka security settings: SASL/SSL reach kafka-python, a refused login fails fast and
clearly, and the SASL password never shows up in output, logs or tracebacks."""

from __future__ import annotations

import ast
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from daemon.kafka.broker import LocalBroker, tansu_binary
from daemon.kafka.clients import MaskedSecret, client_config
from daemon.kafka.probe import broker_reachable, check_sasl_mechanism
from daemon.settings import Settings, load_settings
from daemon.store.bars import BarStore
from deploy.registry import Registry
from tests.support.helpers import wait_for
from tests.support.metadata import write_sample_metadata
from trainers.data import BarRecord

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("daemon", "trainers", "monitors", "deploy")
START_BOUND_SECONDS = 30.0
"""Start-up failure, imports included (~5 s here), stays well inside this."""


@pytest.fixture
def secret() -> str:
    return f"pw-{uuid.uuid4().hex}"


def _env(secret: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTD_")}
    env.update(
        CTD_DATA_DIR=str(data_dir),
        CTD_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        CTD_KAFKA_SASL_MECHANISM="PLAIN",
        CTD_KAFKA_SASL_USERNAME="ctd",
        CTD_KAFKA_SASL_PASSWORD=secret,
        CTD_LOG_LEVEL="DEBUG",
    )
    env.update(extra)
    return env


def _ctd(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run_fails_fast(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``ctd run`` with ``env``: it must exit 1 within START_BOUND_SECONDS."""
    started = time.monotonic()
    proc = _ctd(env, "run", timeout=START_BOUND_SECONDS + 30)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < START_BOUND_SECONDS
    return proc


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    """A data dir with stored bars and a champion, so `ctd status` has rows to print."""
    data = tmp_path / "data"
    data.mkdir()
    store = BarStore(data / "bars.sqlite")
    store.upsert(
        [BarRecord("BTCUSDT", 1_735_689_600 + 60 * i, 1, 2, 0.5, 1.5, 3) for i in range(5)]
    )
    store.close()
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"onnx")
    write_sample_metadata(staging, symbol="BTCUSDT", created_at="2025-01-01T00:00:00Z")
    registry = Registry(data / "registry")
    registry.place("BTCUSDT", registry.add_version("BTCUSDT", staging))
    return data


@pytest.mark.parametrize("args", [("status",), ("status", "--json")])
def test_status_output_never_contains_the_secret(populated: Path, secret: str, args) -> None:
    """`ctd status` (table and JSON) prints its rows and never the SASL password."""
    proc = _ctd(_env(secret, populated, COLUMNS="200"), *args)  # wide enough for every column
    assert proc.returncode == 0, proc.stderr
    assert "BTCUSDT" in proc.stdout
    assert secret not in proc.stdout + proc.stderr


def test_invalid_settings_error_never_contains_the_secret(tmp_path: Path, secret: str) -> None:
    """A cross-field settings error (exit 2) names the settings but not the password."""
    env = _env(secret, tmp_path / "data", CTD_KAFKA_HEARTBEAT_INTERVAL_MS="5000")
    proc = _ctd(env, "status")
    assert proc.returncode == 2
    assert "CTD_KAFKA_HEARTBEAT_INTERVAL_MS" in proc.stderr
    assert secret not in proc.stdout + proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("log_format", ["json", "console"])
def test_run_with_a_refused_sasl_mechanism_fails_fast_without_the_secret(
    broker: LocalBroker, tmp_path: Path, secret: str, log_format: str
) -> None:
    """`ctd run` with SASL PLAIN against a broker that refuses it exits 1 within a bounded
    time, says which mechanism was refused, and never prints the password."""
    env = _env(
        secret,
        tmp_path / "data",
        CTD_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        CTD_HTTP_PORT="0",
        CTD_LOG_FORMAT=log_format,
    )
    proc = _run_fails_fast(env)
    assert "SASL mechanism PLAIN refused" in proc.stderr
    assert secret not in proc.stdout + proc.stderr


def test_sasl_check_leaves_unreachable_brokers_to_the_clients(secret: str) -> None:
    """The SASL pre-check passes when no broker answers (the clients then report that)."""
    settings = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="ctd",
        kafka_sasl_password=secret,
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"  # nobody listens once the block ends
    check_sasl_mechanism(settings, closed, timeout=1.0)


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[str]:
    """A tansu broker that requires SASL (SCRAM) and knows no user: every login fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    log = (tmp_path / "tansu-auth.log").open("wb")
    broker = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://{address}",
            "--advertised-listener-url",
            f"tcp://{address}",
            "--storage-engine",
            "memory://tansu/",
            "--authentication",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        wait_for(lambda: broker_reachable(address, timeout=0.5), 10, message=address)
        yield address
    finally:
        broker.kill()
        broker.wait(5)
        log.close()


@pytest.mark.integration
def test_run_with_rejected_credentials_fails_within_the_request_timeout(
    auth_broker: str, tmp_path: Path, secret: str
) -> None:
    """With a SASL login the broker rejects, `ctd run` exits 1 about one request timeout later,
    pointing at the security settings; kafka-python's own logs never show the password."""
    env = _env(
        secret,
        tmp_path / "data",
        CTD_KAFKA_BOOTSTRAP_SERVERS=auth_broker,
        CTD_KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        CTD_KAFKA_REQUEST_TIMEOUT_MS="2000",
        CTD_HTTP_PORT="0",
        CTD_LOG_FORMAT="console",
    )
    proc = _run_fails_fast(env)
    assert "CTD_KAFKA_SECURITY_PROTOCOL" in proc.stderr
    assert secret not in proc.stdout + proc.stderr


def test_settings_never_render_the_secret(secret: str) -> None:
    """repr, str and JSON dumps of Settings mask the SASL password."""
    settings = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="ctd",
        kafka_sasl_password=secret,
    )
    assert isinstance(settings.kafka_sasl_password, SecretStr)
    for text in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        json.dumps(settings.model_dump(mode="json")),
    ):
        assert secret not in text


def test_client_config_passes_security_settings_and_masks_the_password(
    tmp_path: Path, secret: str
) -> None:
    """client_config maps every security setting to kafka-python's names; the password is the
    real string for kafka-python but renders masked in repr, str of the dict, %s and slices."""
    cafile = tmp_path / "ca.pem"
    cafile.write_text("a CA bundle\n")
    settings = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="ctd",
        kafka_sasl_password=secret,
        kafka_ssl_cafile=cafile,
    )
    config = client_config(settings, "a:9093")
    assert {k: config[k] for k in config if k.startswith(("security", "sasl", "ssl"))} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "ctd",
        "sasl_plain_password": secret,
        "ssl_cafile": str(cafile),
    }
    password = config["sasl_plain_password"]
    assert isinstance(password, MaskedSecret)
    assert password.encode() == secret.encode()  # what kafka-python's SASL code sends
    logged = "Starting KafkaAdminClient with configuration: %s" % (config,)  # noqa: UP031
    for text in (repr(config), str(config), logged, repr(password[:11])):
        assert secret[3:11] not in text


def test_a_traceback_with_locals_does_not_show_the_password(secret: str) -> None:
    """structlog's console renderer shows local variables in tracebacks; the client config
    in a failing frame still renders its password masked."""
    settings = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="ctd",
        kafka_sasl_password=secret,
    )
    rendered = _log_failure_with_config_in_locals(settings)
    assert "sasl_plain_password" in rendered  # the locals really were rendered
    assert secret not in rendered


def _log_failure_with_config_in_locals(settings: Settings) -> str:
    """Render, as ctd's console log would, an error raised where the client config is a local.

    No frame of this traceback holds the plain secret itself (the test's own frame does).
    """
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out), processors=[structlog.dev.ConsoleRenderer(colors=False)]
    )

    def connect() -> None:
        config = client_config(settings, "a:9092")
        raise ConnectionError(f"cannot reach {config['bootstrap_servers']}")

    try:
        connect()
    except ConnectionError:
        logger.error("daemon_failed", exc_info=True)
    return out.getvalue()


def test_only_client_config_unwraps_a_secret() -> None:
    """get_secret_value() is called in three audited places: kafka.client_config (every
    client), the start-up check that the mTLS key loads, and the commands' HMAC key."""
    calls = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for func in ast.walk(tree):
                if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(func):
                    if isinstance(node, ast.Attribute) and node.attr == "get_secret_value":
                        calls.append(f"{path.relative_to(REPO)}::{func.name}")
    assert sorted(set(calls)) == [
        "daemon/kafka/clients.py::client_config",
        "daemon/kafka/commands_secret.py::commands_key",
        "daemon/settings.py::_check_client_certificate",
    ]
