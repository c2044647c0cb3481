"""Mutual TLS to Kafka: the client certificate settings, end to end through a TLS terminator.

The local broker speaks plaintext, so a TLS proxy that requires a client
certificate signed by the test CA sits in front of it (tests/tls_proxy.py) and
the broker advertises the proxy's port: every byte the clients exchange with
the broker crosses a real mTLS connection.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from daemon.errors import SettingsError
from daemon.kafka.broker import LocalBroker
from daemon.kafka.clients import MaskedSecret, client_config, ensure_topics
from daemon.kafka.probe import broker_reachable
from daemon.settings import load_settings
from tests.support.helpers import round_trip
from tests.support.tls_proxy import TlsProxy

PASSPHRASE = "correct horse battery staple"  # noqa: S105 (a test key's passphrase)


class Pki:
    def __init__(self, root: Path) -> None:
        ca = trustme.CA()
        self.server = ca.issue_cert("127.0.0.1", "localhost")
        client, stranger = ca.issue_cert("ctd-client"), ca.issue_cert("someone-else")
        self.cafile = root / "ca.pem"
        ca.cert_pem.write_to_path(str(self.cafile))
        self.certfile, self.keyfile = root / "client.pem", root / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.certfile))
        client.private_key_pem.write_to_path(str(self.keyfile))
        self.other_keyfile = root / "other.key"
        stranger.private_key_pem.write_to_path(str(self.other_keyfile))
        key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
        self.encrypted_keyfile = root / "client-encrypted.key"
        self.encrypted_keyfile.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(PASSPHRASE.encode()),
            )
        )
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(self.server_context)
        ca.configure_trust(self.server_context)
        self.server_context.verify_mode = ssl.CERT_REQUIRED


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> Iterator[tuple[LocalBroker, TlsProxy]]:
    with TlsProxy(pki.server_context) as proxy, LocalBroker(advertised_port=proxy.port) as broker:
        proxy.upstream = ("127.0.0.1", broker.port)
        yield broker, proxy


def tls_settings(pki: Pki, tmp_path: Path, **overrides: Any) -> Any:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": pki.cafile,
        "kafka_ssl_certfile": pki.certfile,
        "kafka_ssl_keyfile": pki.encrypted_keyfile,
        "kafka_ssl_key_password": PASSPHRASE,
        "kafka_group_id": f"mtls-{tag}",
        "topic_bars": f"mtls-{tag}.bars",
        "topic_dlq": f"mtls-{tag}.dlq",
        "topic_commands": f"mtls-{tag}.commands",
        "topic_promotions": f"mtls-{tag}.promotions",
        "data_dir": tmp_path,
    }
    return load_settings(**{**values, **overrides})


@pytest.mark.integration
def test_records_round_trip_over_mutual_tls(
    pki: Pki, tls_broker: tuple[LocalBroker, TlsProxy], tmp_path: Path
) -> None:
    """Topic set-up, produce and consume, all over mTLS with an encrypted client key."""
    _, proxy = tls_broker
    settings = tls_settings(pki, tmp_path)
    bootstrap = f"127.0.0.1:{proxy.port}"
    assert broker_reachable(bootstrap, timeout=5.0, settings=settings)
    ensure_topics(settings, bootstrap)
    sent = {(f"K{i}".encode(), f"v{i}".encode()) for i in range(10)}
    assert round_trip(settings, bootstrap, sent, timeout=30) == sent


@pytest.mark.integration
def test_without_a_client_certificate_the_broker_is_unreachable(
    pki: Pki, tls_broker: tuple[LocalBroker, TlsProxy], tmp_path: Path
) -> None:
    """The proxy really demands the certificate: the same probe without it fails."""
    _, proxy = tls_broker
    bootstrap = f"127.0.0.1:{proxy.port}"
    without = load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki.cafile)
    assert not broker_reachable(bootstrap, timeout=3.0, settings=without)
    assert broker_reachable(bootstrap, timeout=5.0, settings=tls_settings(pki, tmp_path))


def test_client_config_passes_the_client_certificate_and_masks_the_passphrase(
    pki: Pki, tmp_path: Path
) -> None:
    config = client_config(tls_settings(pki, tmp_path), "a:9093")
    assert config["ssl_certfile"] == str(pki.certfile)
    assert config["ssl_keyfile"] == str(pki.encrypted_keyfile)
    assert isinstance(config["ssl_password"], MaskedSecret)
    assert config["ssl_password"] == PASSPHRASE
    assert PASSPHRASE not in repr(config) and PASSPHRASE not in str(config)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"kafka_ssl_key_password": "wrong"}, "kafka_ssl_key_password"),
        ({"kafka_ssl_keyfile": "OTHER", "kafka_ssl_key_password": None}, "kafka_ssl_keyfile"),
        ({"kafka_ssl_certfile": None}, "without kafka_ssl_certfile"),
        ({"kafka_security_protocol": "PLAINTEXT"}, "use SSL or SASL_SSL"),
        ({"kafka_ssl_certfile": "MISSING"}, "kafka_ssl_certfile"),
    ],
)
def test_bad_client_certificate_settings_fail_start_up_naming_them(
    pki: Pki, tmp_path: Path, overrides: dict[str, Any], named: str
) -> None:
    files = {"OTHER": pki.other_keyfile, "MISSING": tmp_path / "missing.pem"}
    overrides = {k: files.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(SettingsError) as info:
        tls_settings(pki, tmp_path, **overrides)
    assert named in str(info.value)
    assert PASSPHRASE not in str(info.value)
