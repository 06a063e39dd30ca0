"""Security settings map to both client stacks, and secrets never render (no broker needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from pydantic import SecretStr

from kappa.errors import KafkaAuthFailed
from kappa.kafka import _auth_failure, client_config, faust_broker_credentials
from kappa.settings import Settings
from tests.support.secure_broker import _properties

KAFKA_PW = "kafka-secret-4b1d"
CH_PW = "clickhouse-secret-9f2e"


def _secure(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "kappa",
        "kafka_sasl_password": KAFKA_PW,
        "kafka_ssl_cafile": "/etc/ssl/certs/ca-certificates.crt",
        "clickhouse_password": CH_PW,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_settings_never_render_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAPPA_KAFKA_SASL_PASSWORD", KAFKA_PW)
    monkeypatch.setenv("KAPPA_CLICKHOUSE_PASSWORD", CH_PW)
    for settings in (Settings(), _secure()):
        rendered = [repr(settings), str(settings), settings.model_dump_json(), json.dumps(
            settings.model_dump(mode="json")), f"{settings.model_dump()}"]
        for text in rendered:
            assert KAFKA_PW not in text and CH_PW not in text
        assert settings.kafka_sasl_password is not None
        assert settings.kafka_sasl_password.get_secret_value() == KAFKA_PW
        assert settings.clickhouse_password.get_secret_value() == CH_PW


def test_client_config_plaintext_has_no_security_keys() -> None:
    conf = client_config(Settings(kafka_sasl_password=SecretStr(KAFKA_PW)), "h:1")
    assert conf["bootstrap.servers"] == "h:1"
    assert not {k for k in conf if k.startswith(("security.", "sasl.", "ssl."))}


def test_client_config_sasl_ssl() -> None:
    conf = client_config(_secure(), "h:1", **{"group.id": "g"})
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("kappa", KAFKA_PW)
    assert conf["ssl.ca.location"] == "/etc/ssl/certs/ca-certificates.crt"
    assert conf["group.id"] == "g"


def test_faust_credentials_match_client_config() -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    assert faust_broker_credentials(Settings()) is None
    creds = faust_broker_credentials(_secure())
    assert KAFKA_PW not in repr(creds)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("kappa", KAFKA_PW)
    assert auth["ssl_context"] is not None
    plain = credentials_to_aiokafka_auth(faust_broker_credentials(_secure(kafka_security_protocol="SASL_PLAINTEXT")))
    assert plain["security_protocol"] == "SASL_PLAINTEXT" and plain["ssl_context"] is None


def test_faust_credentials_in_a_fresh_interpreter() -> None:
    """Regression: ``faust.auth`` is not an attribute of a fresh ``import faust``."""
    code = ("from kappa.kafka import faust_broker_credentials; from kappa.settings import Settings; "
            "c = faust_broker_credentials(Settings(kafka_security_protocol='SASL_PLAINTEXT', "
            "kafka_sasl_username='u', kafka_sasl_password='p')); print(c.mechanism.value)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SCRAM-SHA-512"


def test_auth_failure_message_names_address_and_user_not_password() -> None:
    err = KafkaError(KafkaError._AUTHENTICATION,
                     "sasl_ssl://h:1/bootstrap: SASL authentication error: Authentication failed")
    exc = _auth_failure(_secure(), "h:1", err)
    assert isinstance(exc, KafkaAuthFailed)
    msg = str(exc)
    assert "Kafka at h:1: authentication failed" in msg and "'kappa'" in msg
    assert "KAPPA_KAFKA_SASL_PASSWORD" in msg and KAFKA_PW not in msg
    tls = str(_auth_failure(_secure(), "h:1", KafkaError(KafkaError._SSL, "ssl://h:1/bootstrap: SSL handshake failed")))
    assert "TLS handshake failed" in tls and "KAPPA_KAFKA_SSL_CAFILE" in tls


def test_secure_broker_properties_are_consistent(tmp_path: Path) -> None:
    props = dict(
        line.split("=", 1) for line in
        _properties(tmp_path, {"sasl": 1, "ssl": 2, "controller": 3}, "bpw", tmp_path / "k.p12", "spw")
        .splitlines() if line and not line.startswith("#")
    )
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert props["sasl.mechanism.inter.broker.protocol"] == props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["advertised.listeners"] == "SASL_PLAINTEXT://127.0.0.1:1,SASL_SSL://127.0.0.1:2"
    for listener in ("sasl_plaintext", "sasl_ssl"):
        jaas = props[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"]
        assert "ScramLoginModule required" in jaas and 'password="bpw"' in jaas
    assert props["listener.security.protocol.map"].count(":") == 3
