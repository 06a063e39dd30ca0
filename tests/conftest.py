"""Session fixtures: real Kafka + schema registry for the integration tests.

Endpoints are taken, in order, from: the environment (``KAPPA_KAFKA_BOOTSTRAP`` and
``KAPPA_SCHEMA_REGISTRY_URL``) -> testcontainers when a Docker engine answers -> the same
local launcher as ``kappa up``, in a temporary ``KAPPA_HOME`` on free ports, stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kappa.settings import Settings
from kappa.stack import manager
from kappa.stack.process import free_port

REPO = Path(__file__).resolve().parents[1]
PASS_THROUGH = frozenset({"KAPPA_FAST_CONSUMER"})
"""``KAPPA_*`` settings of the test run itself that reach every ``kappa``/worker subprocess
(e.g. ``KAPPA_FAST_CONSUMER=1 pytest ...`` runs the suites on the fast consumer path)."""


@dataclass(frozen=True)
class Stack:
    """Endpoints of the stack under test, and the settings/env that point at it."""

    kafka_bootstrap: str
    schema_registry_url: str
    home: Path
    how: str

    def settings(self, **overrides: object) -> Settings:
        """Settings aimed at this stack (``home`` may be overridden per test)."""
        values: dict[str, object] = {
            "home": self.home,
            "kafka_bootstrap": self.kafka_bootstrap,
            "schema_registry_url": self.schema_registry_url,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def env(self, home: Path | None = None) -> dict[str, str]:
        """Environment for a ``kappa`` subprocess aimed at this stack."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_") or k in PASS_THROUGH}
        env.update(
            KAPPA_HOME=str(home or self.home),
            KAPPA_KAFKA_BOOTSTRAP=self.kafka_bootstrap,
            KAPPA_SCHEMA_REGISTRY_URL=self.schema_registry_url,
        )
        return env


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def reserve_ports(home: Path, brokers: int = 1) -> dict[str, int]:
    """Pre-seed ``home/stack.json`` with free ports so a test stack never collides."""
    from kappa.stack.cluster import node_names, port_names

    ports = {"registry": free_port()}
    for node in node_names(brokers):
        for name in port_names(node):
            ports[name] = free_port()
    home.mkdir(parents=True, exist_ok=True)
    (home / "stack.json").write_text(json.dumps({"ports": ports, "brokers": brokers}))
    return ports


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running Kafka broker + Confluent-compatible schema registry for the whole session."""
    home = tmp_path_factory.mktemp("kappa-home")
    env_kafka = os.environ.get("KAPPA_KAFKA_BOOTSTRAP")
    env_registry = os.environ.get("KAPPA_SCHEMA_REGISTRY_URL")
    if env_kafka and env_registry:
        yield Stack(env_kafka, env_registry, home, "env")
        return
    if _docker_answers():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka:
            bootstrap = kafka.get_bootstrap_server()
            registry = DockerContainer("apicurio/apicurio-registry:3.0.9").with_exposed_ports(8080)
            with registry:
                wait_for_logs(registry, "started in", timeout=120)
                url = (f"http://{registry.get_container_host_ip()}:"
                       f"{registry.get_exposed_port(8080)}/apis/ccompat/v7")
                yield Stack(bootstrap, url, home, "testcontainers")
        return
    reserve_ports(home)
    settings = Settings(home=home)
    try:
        manager.up(settings)
    except BaseException:
        manager.down(settings)  # never leave a half-started stack behind
        raise
    ep = manager.endpoints(settings)
    try:
        yield Stack(ep.kafka_bootstrap, ep.schema_registry_url, home, "local")
    finally:
        manager.down(settings)


@dataclass(frozen=True)
class Cluster(Stack):
    """A private local stack of several KRaft nodes (kill and restart them by name)."""

    brokers: int = 3

    @property
    def local(self) -> Settings:
        """Settings of the ``kappa up`` that owns this cluster (env endpoints ignored)."""
        return Settings(home=self.home, kafka_bootstrap=None, schema_registry_url=None)

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.home / "stack.json").read_text()))

    def pid(self, node: str) -> int:
        return int(self.state()["pids"][node])  # type: ignore[index]

    def address(self, node: str) -> str:
        from kappa.stack.cluster import port_names

        return f"127.0.0.1:{self.state()['ports'][port_names(node)[0]]}"  # type: ignore[index]

    def node_of(self, broker_id: int) -> str:
        from kappa.stack.cluster import node_names

        return node_names(self.brokers)[broker_id - 1]

    def kill(self, node: str) -> None:
        """kill -9 one node (its data stays; :meth:`restart` brings it back)."""
        os.kill(self.pid(node), signal.SIGKILL)

    def restart(self) -> None:
        """``kappa up``: start every node that is not running and wait for all of them."""
        manager.up(self.local, brokers=self.brokers)


def start_cluster(home: Path, brokers: int = 3) -> Iterator[Cluster]:
    """A private ``brokers``-node cluster + registry in ``home``, stopped at the end."""
    reserve_ports(home, brokers)
    settings = Settings(home=home, kafka_bootstrap=None, schema_registry_url=None)
    try:
        manager.up(settings, brokers=brokers)
        ep = manager.endpoints(settings)
        yield Cluster(ep.kafka_bootstrap, ep.schema_registry_url, home, "local-cluster", brokers)
    finally:
        manager.down(settings)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A private 3-node KRaft cluster (each node broker + controller) + registry, for one test."""
    yield from start_cluster(tmp_path / "cluster", 3)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session), SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Factory of uuid-suffixed names for topics and consumer groups: ``unique("orders")``."""
    run = uuid.uuid4().hex[:8]
    return lambda prefix: f"{prefix}-{run}-{uuid.uuid4().hex[:6]}"
