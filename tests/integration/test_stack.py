"""The local stack is real: a Kafka broker and a Confluent-compatible registry, and `kappa up/down`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from kappa.kafka import TopicSpec, client_config, ensure_topics
from kappa.settings import Settings
from tests.conftest import Stack, reserve_ports

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))


def _consume_all(bootstrap: str, topic: str, group: str, expected: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        for _ in range(60):
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                got.append(msg.value())
            if len(got) >= expected:
                break
    finally:
        consumer.close()
    return got


def test_topics_produce_consume(stack: Stack, unique: Callable[[str], str]) -> None:
    settings = stack.settings()
    topic = unique("roundtrip")
    assert ensure_topics(settings, stack.kafka_bootstrap, [TopicSpec(topic, partitions=3)]) == [topic]
    assert ensure_topics(settings, stack.kafka_bootstrap, [TopicSpec(topic, partitions=3)]) == []
    producer = Producer(client_config(settings, stack.kafka_bootstrap, **{"enable.idempotence": True}))
    for i in range(500):
        producer.produce(topic, key=str(i % 7).encode(), value=f"event-{i}".encode())
    assert producer.flush(30) == 0
    got = _consume_all(stack.kafka_bootstrap, topic, unique("group"), 500)
    assert sorted(got) == sorted(f"event-{i}".encode() for i in range(500))


def test_registry_with_confluent_client(stack: Stack, unique: Callable[[str], str]) -> None:
    client = SchemaRegistryClient({"url": stack.schema_registry_url})
    subject = unique("thing") + "-value"
    v1 = Schema('{"type":"record","name":"Thing","fields":[{"name":"id","type":"long"}]}', "AVRO")
    schema_id = client.register_schema(subject, v1)
    fetched = client.get_schema(schema_id)
    assert '"id"' in fetched.schema_str and fetched.schema_type == "AVRO"
    assert client.get_latest_version(subject).schema_id == schema_id
    # adding an optional field is backward compatible, adding a required one is not
    ok = Schema('{"type":"record","name":"Thing","fields":[{"name":"id","type":"long"},'
                '{"name":"note","type":["null","string"],"default":null}]}', "AVRO")
    bad = Schema('{"type":"record","name":"Thing","fields":[{"name":"id","type":"long"},'
                 '{"name":"must","type":"string"}]}', "AVRO")
    client.set_compatibility(subject, "BACKWARD")
    assert client.test_compatibility(subject, ok) is True
    assert client.test_compatibility(subject, bad) is False


def _run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KAPPA, *args], env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"kappa {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _processes_of(home: Path) -> list[int]:
    marker = f"-Dkappa.stack={home.resolve()}/"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            if marker in cmd and state != "Z":
                pids.append(int(entry.name))
    return pids


def test_up_status_down_twice_keeps_data(tmp_path: Path, unique: Callable[[str], str]) -> None:
    home = tmp_path / "home"
    ports = reserve_ports(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_")}
    env["KAPPA_HOME"] = str(home)
    bootstrap = f"127.0.0.1:{ports['kafka']}"
    topic = unique("survives")
    try:
        _run(["up"], env)
        assert _run(["up"], env).returncode == 0  # idempotent
        status = _run(["status"], env)
        assert "kafka" in status.stdout and "registry" in status.stdout
        assert bootstrap in status.stdout

        settings = Settings(home=home)
        ensure_topics(settings, bootstrap, [TopicSpec(topic, partitions=2)])
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(50):
            producer.produce(topic, value=f"kept-{i}".encode())
        assert producer.flush(30) == 0
        registry = SchemaRegistryClient({"url": f"http://127.0.0.1:{ports['registry']}/apis/ccompat/v7"})
        sid = registry.register_schema(topic + "-value", Schema('"string"', "AVRO"))

        _run(["down"], env)
        assert _processes_of(home) == []
        assert _run(["status"], env, check=False).returncode == 1

        _run(["up"], env)
        assert _run(["status"], env).returncode == 0
        got = _consume_all(bootstrap, topic, unique("g"), 50)
        assert sorted(got) == sorted(f"kept-{i}".encode() for i in range(50))
        assert registry.get_schema(sid).schema_str.strip('"') == "string"
        _run(["down"], env)
        assert _processes_of(home) == []
    finally:
        subprocess.run([KAPPA, "down"], env=env, capture_output=True, timeout=120)
    assert _processes_of(home) == []


def test_failed_up_stops_what_it_started_and_moves_taken_ports(tmp_path: Path) -> None:
    """The recorded Kafka port is taken (up moves it); then the registry fails to start (a heap
    the JVM refuses): up exits non-zero with one line and leaves its Kafka not running."""
    import json
    import socket

    home = tmp_path / "home"
    ports = reserve_ports(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_")}
    env.update(KAPPA_HOME=str(home), KAPPA_REGISTRY_HEAP="1k")
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", ports["kafka"]))
    squatter.listen()
    try:
        proc = _run(["up", "--timeout", "120"], env, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in out, out
        assert f"port {ports['kafka']} (kafka) is in use by another process; using" in proc.stderr, out
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "schema registry" in errors[0] and "exited during start" in errors[0], out
        assert "stopped what this `kappa up` started: kafka" in errors[0], out
        assert _processes_of(home) == []
        state = json.loads((home / "stack.json").read_text())
        assert state["pids"] == {} and state["ports"]["kafka"] != ports["kafka"]
        down = _run(["produce", "--generator", "ecommerce", "--events", "5"], env, check=False)
        assert down.returncode == 1 and "run `kappa up`" in down.stderr, down.stderr
    finally:
        squatter.close()
        subprocess.run([KAPPA, "down"], env=env, capture_output=True, timeout=120)
    assert _processes_of(home) == []


def test_second_run_refused_on_a_real_runner(stack: Stack, tmp_path: Path, unique: Callable[[str], str]) -> None:
    """A real `kappa run` holds KAPPA_HOME: a second one exits 1 at once naming its pid, and
    `kappa status` lists the runner, its worker and its sink."""
    import json
    import time

    from kappa.runlock import running
    from tests.conftest import stop_group

    home = tmp_path / "home"
    env = {**stack.env(home), "KAPPA_TOPIC_PREFIX": unique("lock") + ".",
           "KAPPA_VERSION": unique("v").replace("-", "")}
    first = subprocess.Popen([KAPPA, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        for _ in range(240):
            info = running(home)
            if info and {"sink", "worker-0"} <= set(info.children):
                break
            assert first.poll() is None, first.communicate()[0]
            time.sleep(0.5)
        assert info is not None and info.pid == first.pid
        second = _run(["run"], env, check=False)
        assert second.returncode == 1 and "Traceback" not in second.stdout + second.stderr, second.stderr
        assert f"another `kappa run` (pid {first.pid}" in second.stderr
        rows = json.loads(_run(["status", "--json"], env, check=False).stdout)
        pipeline = {r["name"]: r["pid"] for r in rows if r["kind"] == "pipeline"}
        assert pipeline == {"run": first.pid, "sink": info.children["sink"], "worker-0": info.children["worker-0"]}
        assert any(r["kind"] == "metrics" and r["name"] == "runner" for r in rows), rows
    finally:
        stop_group(first)
    assert running(home) is None
