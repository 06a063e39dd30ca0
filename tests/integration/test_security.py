"""Kafka security against a real broker that requires SASL/SCRAM-SHA-512 (and SASL_SSL).

The broker comes from :mod:`tests.support.secure_broker` (same cached jars as ``kappa up``), one per
module. Every client is configured only through ``kappa.kafka``: ``client_config`` for
confluent-kafka, ``faust_broker_credentials`` for Faust/aiokafka. Wrong credentials must fail
fast with a KappaError naming the address, and no secret may reach any output or log.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from pydantic import SecretStr

from kappa.errors import KafkaAuthFailed
from kappa.kafka import TopicSpec, check_connection, client_config, ensure_topics, faust_broker_credentials
from kappa.settings import Settings
from kappa.stack.manager import registry_healthy
from kappa.stack.process import free_port
from tests.support.secure_broker import SecureBroker, start_secure_broker, stop_secure_broker

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))
REPO = Path(__file__).resolve().parents[2]
SHARED_REGISTRY = "http://127.0.0.1:8081/apis/ccompat/v7"
PROTOCOLS = ["SASL_PLAINTEXT", "SASL_SSL"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A SASL/SCRAM broker with a SASL_SSL listener too; user ``kappa``, random password."""
    b = start_secure_broker(tmp_path_factory.mktemp("sasl-broker"),
                            password="kappa-pw-" + secrets.token_hex(12), tls=True)
    try:
        yield b
    finally:
        stop_secure_broker(b)


@pytest.fixture(scope="module")
def registry_url(request: pytest.FixtureRequest) -> str:
    """A schema registry (it needs no SASL): env, else the shared dev one, else the test stack's."""
    url = os.environ.get("KAPPA_SCHEMA_REGISTRY_URL") or SHARED_REGISTRY
    if registry_healthy(url):
        return url
    return str(request.getfixturevalue("stack").schema_registry_url)


def bootstrap_of(broker: SecureBroker, protocol: str) -> str:
    return (broker.ssl_bootstrap or "") if protocol == "SASL_SSL" else broker.sasl_bootstrap


def sasl_settings(broker: SecureBroker, protocol: str = "SASL_PLAINTEXT",
                  password: str | None = None, **extra: object) -> Settings:
    """Settings as a user would give them (env names without the KAPPA_ prefix)."""
    return Settings(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=broker.username,
        kafka_sasl_password=SecretStr(broker.password if password is None else password),
        kafka_ssl_cafile=broker.ca_file if protocol == "SASL_SSL" else None,
        **extra,  # type: ignore[arg-type]
    )


def sasl_env(broker: SecureBroker, home: Path, registry: str, password: str | None = None,
             **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_")}
    env.update(
        KAPPA_HOME=str(home),
        KAPPA_KAFKA_BOOTSTRAP=broker.sasl_bootstrap,
        KAPPA_SCHEMA_REGISTRY_URL=registry,
        KAPPA_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAPPA_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAPPA_KAFKA_SASL_USERNAME=broker.username,
        KAPPA_KAFKA_SASL_PASSWORD=broker.password if password is None else password,
        **extra,
    )
    return env


def consume(settings: Settings, bootstrap: str, topic: str, group: str, expected: int) -> list[bytes]:
    consumer = Consumer(client_config(settings, bootstrap, **{
        "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                got.append(msg.value() or b"")
    finally:
        consumer.close()
    return got


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_confluent_clients_authenticate_through_client_config(
        broker: SecureBroker, unique: Callable[[str], str], protocol: str) -> None:
    settings = sasl_settings(broker, protocol)
    bootstrap = bootstrap_of(broker, protocol)
    topic = unique("sasl")
    check_connection(settings, bootstrap, timeout=10)
    assert ensure_topics(settings, bootstrap, [TopicSpec(topic, partitions=2)]) == [topic]
    producer = Producer(client_config(settings, bootstrap, **{"enable.idempotence": True}))
    for i in range(300):
        producer.produce(topic, key=str(i % 5).encode(), value=f"event-{i}".encode())
    assert producer.flush(30) == 0
    got = consume(settings, bootstrap, topic, unique("group"), 300)
    assert sorted(got) == sorted(f"event-{i}".encode() for i in range(300))


# A Faust app built like stream_processors/app.py (broker_credentials from kappa.kafka), whose
# agent consumes ``src`` and produces upper-cased values to ``dst``: Faust's consumer, producer,
# group coordination and topic admin all go through the SASL listener.
_FAUST_RELAY = textwrap.dedent("""
    import os, sys
    import faust
    from kappa.kafka import faust_broker_credentials
    from kappa.settings import Settings

    settings = Settings()
    src, dst, n, datadir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    app = faust.App(f"sasl-relay-{dst}", broker=f"kafka://{settings.kafka_bootstrap}",
                    broker_credentials=faust_broker_credentials(settings), datadir=datadir,
                    store="memory://", web_enabled=False, autodiscover=False,
                    topic_partitions=1, topic_replication_factor=1, key_serializer="raw",
                    value_serializer="raw", consumer_auto_offset_reset="earliest")
    out = app.topic(dst, value_serializer="raw")
    seen = {"n": 0}

    @app.agent(app.topic(src, value_serializer="raw"))
    async def relay(stream):
        async for value in stream:
            await out.send(value=value.upper())
            seen["n"] += 1
            if seen["n"] >= n:
                await app.producer.flush()
                print(f"relayed {seen['n']}", flush=True)
                os._exit(0)

    faust.Worker(app, loglevel="debug", redirect_stdouts=False, quiet=True).execute_from_commandline()
""")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_faust_app_authenticates_with_faust_broker_credentials(
        broker: SecureBroker, unique: Callable[[str], str], tmp_path: Path, protocol: str) -> None:
    settings = sasl_settings(broker, protocol)
    bootstrap = bootstrap_of(broker, protocol)
    src, dst = unique("faust-in"), unique("faust-out")
    ensure_topics(settings, bootstrap, [TopicSpec(src), TopicSpec(dst)])
    producer = Producer(client_config(settings, bootstrap))
    for i in range(50):
        producer.produce(src, value=f"e{i}".encode())
    assert producer.flush(30) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_")}
    env.update(KAPPA_KAFKA_BOOTSTRAP=bootstrap, KAPPA_KAFKA_SECURITY_PROTOCOL=protocol,
               KAPPA_KAFKA_SASL_MECHANISM="SCRAM-SHA-512", KAPPA_KAFKA_SASL_USERNAME=broker.username,
               KAPPA_KAFKA_SASL_PASSWORD=broker.password, KAPPA_HOME=str(tmp_path))
    if broker.ca_file and protocol == "SASL_SSL":
        env["KAPPA_KAFKA_SSL_CAFILE"] = str(broker.ca_file)
    proc = subprocess.run([sys.executable, "-c", _FAUST_RELAY, src, dst, "50", str(tmp_path / "faust")],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "relayed 50" in proc.stdout
    assert broker.password not in proc.stdout + proc.stderr  # Faust/aiokafka debug logs included
    got = consume(settings, bootstrap, dst, unique("group"), 50)
    assert sorted(got) == sorted(f"E{i}".encode() for i in range(50))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_password_fails_fast_naming_the_address(broker: SecureBroker, protocol: str) -> None:
    wrong = "wrong-pw-" + secrets.token_hex(8)
    settings = sasl_settings(broker, protocol, password=wrong)
    bootstrap = bootstrap_of(broker, protocol)
    t0 = time.monotonic()
    with pytest.raises(KafkaAuthFailed) as info:
        check_connection(settings, bootstrap, timeout=20)
    assert time.monotonic() - t0 < 5, "an authentication failure must not wait for the timeout"
    msg = str(info.value)
    assert bootstrap in msg and "authentication failed" in msg and "'kappa'" in msg
    assert wrong not in msg and broker.password not in msg
    t0 = time.monotonic()  # topic setup (kappa run, sinks, processors) takes the same path
    with pytest.raises(KafkaAuthFailed, match="authentication failed"):
        ensure_topics(settings, bootstrap, [TopicSpec("never-created")])
    assert time.monotonic() - t0 < 5


def test_wrong_password_is_refused_to_faust_clients_too(broker: SecureBroker) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    async def start(password: str) -> None:
        auth = credentials_to_aiokafka_auth(faust_broker_credentials(sasl_settings(broker, password=password)))
        producer = AIOKafkaProducer(bootstrap_servers=broker.sasl_bootstrap, **auth)
        try:
            await producer.start()
        finally:
            await producer.stop()

    asyncio.run(start(broker.password))  # the same path with the right password works
    with pytest.raises(KafkaConnectionError):
        asyncio.run(start("wrong-" + secrets.token_hex(6)))


def test_untrusted_broker_certificate_fails_clearly(broker: SecureBroker) -> None:
    settings = sasl_settings(broker, "SASL_SSL").model_copy(update={"kafka_ssl_cafile": None})
    assert broker.ssl_bootstrap
    with pytest.raises(KafkaAuthFailed, match="TLS handshake failed"):
        check_connection(settings, broker.ssl_bootstrap, timeout=20)


def _kappa(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAPPA, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_cli_wrong_password_says_authentication_failed(
        broker: SecureBroker, registry_url: str, tmp_path: Path) -> None:
    wrong = "wrong-pw-" + secrets.token_hex(8)
    env = sasl_env(broker, tmp_path, registry_url, password=wrong)
    status = _kappa(["status"], env)
    assert status.returncode == 1
    assert "authentication failed" in status.stdout and broker.sasl_bootstrap in status.stdout
    t0 = time.monotonic()
    produce = _kappa(["produce", "--generator", "ecommerce", "--events", "10"], env)
    assert produce.returncode == 1, produce.stdout + produce.stderr
    assert time.monotonic() - t0 < 30
    assert "authentication failed" in produce.stderr and broker.sasl_bootstrap in produce.stderr
    for out in (status, produce):
        assert wrong not in out.stdout + out.stderr


def _files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {n[:4]}..." for n in needles if n.encode() in data]
    return hits


def test_no_secret_in_cli_output_or_logs(broker: SecureBroker, registry_url: str,
                                         unique: Callable[[str], str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    ch_password = "ch-pw-" + secrets.token_hex(12)
    prefix = unique("sec") + "."
    env = sasl_env(broker, home, registry_url, KAPPA_CLICKHOUSE_PASSWORD=ch_password,
                   KAPPA_CLICKHOUSE_USER="kappa_ch", KAPPA_TOPIC_PREFIX=prefix)
    secrets_ = [broker.password, ch_password]

    status = _kappa(["-v", "status"], env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert broker.sasl_bootstrap in status.stdout and "healthy" in status.stdout
    status_json = _kappa(["-v", "status", "--json"], env)
    assert status_json.returncode == 0, status_json.stdout + status_json.stderr
    produce = _kappa(["-v", "produce", "--generator", "ecommerce", "--events", "50"], env)
    assert produce.returncode == 0, produce.stdout[-2000:] + produce.stderr[-4000:]
    assert "failed 0" in produce.stdout
    assert "DEBUG" in produce.stderr  # -v really logged debug details, so the check below means something

    # The ClickHouse credentials path (server backend) with a server that refuses connections:
    # the error names the URL, the debug logs of clickhouse-connect/urllib3 run, no password.
    query = _kappa(["-v", "query", "SELECT 1"],
                   {**env, "KAPPA_CLICKHOUSE_URL": f"http://127.0.0.1:{free_port()}"}, timeout=60)
    assert query.returncode == 1 and "does not answer" in query.stderr, query.stderr[-2000:]
    assert "DEBUG clickhouse_connect" in query.stderr

    for out in (status, status_json, produce, query):
        for secret in secrets_:
            assert secret not in out.stdout and secret not in out.stderr
    assert (home / "manifests").is_dir()  # the produce run wrote its state under KAPPA_HOME
    assert _files_containing(home, secrets_) == []
    assert broker.password not in broker.log.read_text(errors="replace")

    settings = sasl_settings(broker)
    orders = consume(settings, broker.sasl_bootstrap, prefix + "orders", unique("group"), 50)
    assert len(orders) >= 50  # the events really went through the SASL listener
