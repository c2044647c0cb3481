"""The bundled local broker and the Kafka client factories, against real tansu processes."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from daemon.errors import BrokerError
from daemon.kafka.broker import LocalBroker, tansu_binary
from daemon.kafka.clients import client_config, ensure_topics, make_consumer
from daemon.kafka.probe import broker_reachable
from daemon.settings import Settings, load_settings
from tests.conftest import Topics
from tests.support.helpers import round_trip


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.integration
def test_start_answers_and_stop_reaps_the_process() -> None:
    """start() returns a broker answering ApiVersions; stop() leaves no process; twice is fine."""
    broker = LocalBroker().start()
    pid = broker.pid
    assert pid is not None
    address = broker.bootstrap_servers
    try:
        assert address.startswith("127.0.0.1:")
        assert broker_reachable(address, timeout=2.0)
        assert _pid_alive(pid)
    finally:
        broker.stop()
    assert not _pid_alive(pid)  # reaped, not a zombie
    assert not broker_reachable(address, timeout=0.5)
    broker.stop()
    with pytest.raises(BrokerError, match="not started"):
        _ = broker.bootstrap_servers


@pytest.mark.integration
def test_restart_on_the_same_port_loses_all_data(broker: LocalBroker) -> None:
    """A broker stopped and started on its old port answers again, with memory storage emptied."""
    first = LocalBroker().start()
    port = first.port
    settings = load_settings(kafka_bootstrap_servers=first.bootstrap_servers)
    try:
        assert ensure_topics(settings, first.bootstrap_servers, ["before-restart"])
    finally:
        first.stop()
    with LocalBroker(port=port) as second:
        assert second.bootstrap_servers == f"127.0.0.1:{port}"
        assert ensure_topics(settings, second.bootstrap_servers, ["before-restart"]) == [
            "before-restart"
        ]


@pytest.mark.integration
def test_context_manager_stops_on_error() -> None:
    """Leaving the ``with`` block through an exception still stops the broker."""
    pid = None
    with pytest.raises(RuntimeError, match="boom"), LocalBroker() as broker:
        pid = broker.pid
        raise RuntimeError("boom")
    assert pid is not None
    assert not _pid_alive(pid)


@pytest.mark.integration
def test_advertised_port_is_what_clients_get(tmp_path: Path) -> None:
    """With advertised_port, clients are given that port while readiness probes the real one."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        advertised = placeholder.getsockname()[1]
    log = tmp_path / "broker.log"
    with LocalBroker(advertised_port=advertised, log_path=log) as broker:
        assert broker.bootstrap_servers == f"127.0.0.1:{advertised}"
        assert broker.port != advertised
        assert broker_reachable(f"127.0.0.1:{broker.port}", timeout=2.0)
    assert f"advertised: tcp://127.0.0.1:{advertised}" in log.read_text()


def test_missing_binary_is_a_readable_broker_error(tmp_path: Path) -> None:
    """A binary path that does not exist raises BrokerError naming the path."""
    missing = tmp_path / "no-such-tansu"
    with pytest.raises(BrokerError, match=r"cannot start the local broker .*no-such-tansu"):
        LocalBroker(binary=missing).start()


def test_bad_calf_tansu_bin_is_a_readable_broker_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad CALF_TANSU_BIN gives a BrokerError naming it and the CTD_KAFKA_* way out."""
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "nothing-here"))
    with pytest.raises(BrokerError, match="CALF_TANSU_BIN") as info:
        tansu_binary()
    assert "CTD_KAFKA_BOOTSTRAP_SERVERS" in str(info.value)


def test_broker_that_exits_reports_its_output(tmp_path: Path) -> None:
    """A broker that exits at start-up raises BrokerError carrying its exit code and last output."""
    script = tmp_path / "fake-tansu"
    script.write_text("#!/bin/sh\necho 'fatal: storage engine refused'\nexit 3\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        LocalBroker(binary=script).start(timeout=5.0)
    message = str(info.value)
    assert "exited with code 3" in message
    assert "fatal: storage engine refused" in message
    assert time.monotonic() - started < 5.0


@pytest.mark.integration
def test_port_in_use_fails_within_the_deadline(silent_listener: int) -> None:
    """An explicit port already taken fails with BrokerError, not a hang or a false start."""
    started = time.monotonic()
    with pytest.raises(BrokerError, match=str(silent_listener)):
        LocalBroker(port=silent_listener).start(timeout=3.0)
    assert time.monotonic() - started < 4.5


def test_probe_is_false_for_closed_and_silent_ports(silent_listener: int) -> None:
    """broker_reachable is False, on time, for a closed port and for a silent listener."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert not broker_reachable(f"127.0.0.1:{closed}", timeout=1.0)
    started = time.monotonic()
    assert not broker_reachable(f"127.0.0.1:{silent_listener}", timeout=0.5)
    assert time.monotonic() - started < 1.5


@pytest.mark.integration
def test_probe_tries_every_bootstrap_server(broker: LocalBroker, silent_listener: int) -> None:
    """One dead address before a live one in the bootstrap list still counts as reachable."""
    servers = f"127.0.0.1:{silent_listener},{broker.bootstrap_servers}"
    assert broker_reachable(servers, timeout=3.0)


@pytest.mark.integration
def test_ensure_topics_creates_with_configured_partitions_once(
    broker: LocalBroker, settings_base: dict[str, object]
) -> None:
    """ensure_topics creates missing topics with topic_partitions; a second call creates none."""
    settings = load_settings(**settings_base, topic_partitions=3)
    names = [f"ensure-{os.urandom(4).hex()}-{i}" for i in range(2)]
    assert ensure_topics(settings, broker.bootstrap_servers, names) == names
    assert ensure_topics(settings, broker.bootstrap_servers, names) == []
    consumer = make_consumer(settings, broker.bootstrap_servers)
    try:
        for name in names:
            assert consumer.partitions_for_topic(name) == {0, 1, 2}
    finally:
        consumer.close(autocommit=False)


@pytest.mark.integration
def test_round_trip_bytes_through_the_factories(
    broker: LocalBroker, topics: Topics, settings_factory: Callable[..., Settings]
) -> None:
    """Bytes produced by make_producer come back unchanged, keys included, via make_consumer."""
    settings = settings_factory()
    sent = {(b"K%d" % (i % 3), b"\x00value-%d\xff" % i) for i in range(20)}
    assert round_trip(settings, broker.bootstrap_servers, sent) == sent


def test_client_config_unwraps_secrets_and_paths(tmp_path: Path) -> None:
    """client_config passes SASL/SSL settings through, with the password unwrapped."""
    cafile = tmp_path / "ca.pem"
    cafile.write_text("a CA bundle\n")
    settings = load_settings(
        kafka_client_id="ctd-test",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="ctd",
        kafka_sasl_password=SecretStr("hunter2"),
        kafka_ssl_cafile=cafile,
        kafka_request_timeout_ms=12_000,
    )
    config = client_config(settings, "a:9092, b:9093")
    assert config["bootstrap_servers"] == ["a:9092", "b:9093"]
    assert config["client_id"] == "ctd-test"
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "ctd"
    assert config["sasl_plain_password"] == "hunter2"  # noqa: S105
    assert config["ssl_cafile"] == str(cafile)
    assert config["request_timeout_ms"] == 12_000


def test_client_config_plaintext_has_no_security_keys() -> None:
    """Without SASL/SSL settings no sasl_* or ssl_* keys reach kafka-python."""
    config = client_config(load_settings(), "localhost:9092")
    assert config["security_protocol"] == "PLAINTEXT"
    assert not [k for k in config if k.startswith(("sasl_", "ssl_"))]
