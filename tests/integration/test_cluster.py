"""`kappa up --brokers 3`: a real 3-node KRaft cluster, replicated topics, a leader lost and back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from kappa.kafka import TopicSpec, client_config, ensure_topics, producer_config
from kappa.stack.process import is_ours
from tests.conftest import Cluster

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))


def _kappa(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_")}
    env["KAPPA_HOME"] = str(cluster.home)
    return subprocess.run([KAPPA, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def _replication(admin: AdminClient, topic: str) -> tuple[set[int], str]:
    """(replica counts of the partitions, min.insync.replicas) of ``topic``."""
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    conf = admin.describe_configs([res])[res].result(timeout=10)
    return {len(p.replicas) for p in meta.partitions.values()}, conf["min.insync.replicas"].value


def test_three_nodes_replicate_and_survive_a_leader(cluster: Cluster, unique: Callable[[str], str]) -> None:
    shown = _kappa(cluster, "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    for node in ("kafka ", "kafka-2 ", "kafka-3 "):
        assert any(ln.startswith(node) and "healthy" in ln for ln in lines), shown.stdout
    assert sum("controller leader" in ln for ln in lines) == 1, shown.stdout
    assert any(ln.startswith("controller") and "3 of 3 voters" in ln for ln in lines), shown.stdout

    settings = cluster.settings()
    admin = AdminClient(client_config(settings, cluster.kafka_bootstrap))
    topic = unique("replicated")
    assert ensure_topics(settings, cluster.kafka_bootstrap, [TopicSpec(topic, 3)]) == [topic]
    assert _replication(admin, topic) == ({3}, "2")
    for internal in ("__consumer_offsets", "_kappa_registry_journal"):  # the registry's group made both
        assert _replication(admin, internal) == ({3}, "2"), internal

    # kill -9 the leader of partition 0 while producing: every acknowledged record is readable after
    leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    victim = cluster.node_of(leader)
    producer = Producer(producer_config(settings, cluster.kafka_bootstrap, **{"linger.ms": 5}))
    acked: list[bytes] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is None:
            acked.append(msg.value())  # type: ignore[attr-defined]

    t0 = time.monotonic()
    for i in range(6000):
        producer.produce(topic, f"e{i}".encode(), str(i).encode(), on_delivery=on_delivery)
        producer.poll(0)
        if i == 2000:
            assert producer.flush(30) == 0
            cluster.kill(victim)
    assert producer.flush(120) == 0, "records not acknowledged within 120s of the leader's death"
    print(f"node {leader} killed; 6000 records acknowledged {time.monotonic() - t0:.1f}s after the start")
    assert len(acked) == 6000

    shown = _kappa(cluster, "status")
    assert shown.returncode == 1 and any(ln.startswith(f"{victim} ") and "DOWN" in ln
                                         for ln in shown.stdout.splitlines()), shown.stdout
    new_leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    assert new_leader not in (leader, -1)

    cluster.restart()
    assert _kappa(cluster, "status").returncode == 0
    consumer = Consumer(client_config(settings, cluster.kafka_bootstrap, **{
        "group.id": unique("g"), "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(got) < 6000 and time.monotonic() < deadline:
        got += [m.value() for m in consumer.consume(1000, timeout=1.0) if m.error() is None]
    consumer.close()
    assert sorted(got) == sorted(acked)  # nothing lost, nothing doubled (idempotent retries)

    pids = [cluster.pid(n) for n in ("kafka", "kafka-2", "kafka-3")]
    stopped = _kappa(cluster, "down")
    assert stopped.returncode == 0 and "kafka-3" in stopped.stdout, stopped.stdout
    assert not any(is_ours(pid, "kappa.stack=") for pid in pids)

