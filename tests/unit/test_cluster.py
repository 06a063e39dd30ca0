"""The local cluster's layout and the producer guarantees, without a broker."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from kappa.errors import ConfigError
from kappa.kafka import PRODUCER_GUARANTEES, producer_config, replication_for
from kappa.settings import Settings
from kappa.stack import cluster, manager

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("kappa", "producers", "stream_processors", "sinks", "schemas")


def _props(text: str) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))


def _ports(n: int) -> dict[str, int]:
    ports = {}
    for i, node in enumerate(cluster.node_names(n)):
        kafka, controller = cluster.port_names(node)
        ports[kafka], ports[controller] = 10000 + 2 * i, 10001 + 2 * i
    return ports


def test_three_nodes_replicate_everything_three_times_two_in_sync() -> None:
    ports = _ports(3)
    every = [_props(cluster.server_properties(n, 3, ports, Path(f"/d/{n}"), 4)) for n in cluster.node_names(3)]
    assert [p["node.id"] for p in every] == ["1", "2", "3"]
    assert {p["controller.quorum.voters"] for p in every} == {
        "1@127.0.0.1:10001,2@127.0.0.1:10003,3@127.0.0.1:10005"}
    assert [p["listeners"] for p in every][2] == "PLAINTEXT://127.0.0.1:10004,CONTROLLER://127.0.0.1:10005"
    for p in every:
        assert p["offsets.topic.replication.factor"] == p["transaction.state.log.replication.factor"] == "3"
        assert p["default.replication.factor"] == "3"  # Faust's and the registry's own topics
        assert p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == "2"
        assert p["unclean.leader.election.enable"] == "false"


def test_one_node_is_the_single_broker_it_always_was() -> None:
    p = _props(cluster.server_properties("kafka", 1, {"kafka": 9092, "controller": 9093}, Path("/d"), 4))
    assert p["controller.quorum.voters"] == "1@127.0.0.1:9093" and p["node.id"] == "1"
    assert p["offsets.topic.replication.factor"] == p["min.insync.replicas"] == "1"


@pytest.mark.parametrize(("brokers", "factor", "min_insync"), [(1, 1, 1), (2, 2, 1), (3, 3, 2), (7, 3, 2)])
def test_replication_choice(brokers: int, factor: int, min_insync: int) -> None:
    rep = replication_for(brokers)
    assert (rep.factor, rep.min_insync) == (factor, min_insync)
    assert f"replication factor {factor}, min.insync.replicas={min_insync}" in rep.describe()


def test_producer_config_cannot_weaken_the_guarantees() -> None:
    conf = producer_config(Settings(), "h:1", **{"enable.idempotence": True, "linger.ms": 5})
    assert {k: conf[k] for k in PRODUCER_GUARANTEES} == {"acks": "all", "enable.idempotence": True}
    with pytest.raises(ConfigError, match=r"enable\.idempotence"):
        producer_config(Settings(), "h:1", **{"enable.idempotence": False})


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def test_every_producer_is_built_with_producer_config() -> None:
    """A ``Producer(...)`` anywhere in the product takes its config from producer_config."""
    offenders = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Producer"
                        and not (node.args and isinstance(node.args[0], ast.Call)
                                 and _name(node.args[0].func) == "producer_config")):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_quorum_leader_is_the_newest_epoch_among_live_nodes(tmp_path: Path) -> None:
    for name, leader, epoch in (("kafka", 1, 3), ("kafka-2", 2, 5), ("kafka-3", 3, 9)):
        d = tmp_path / name / "data" / "__cluster_metadata-0"
        d.mkdir(parents=True)
        (d / "quorum-state").write_text(json.dumps({"leaderId": leader, "leaderEpoch": epoch, "votedId": -1}))
    assert cluster.quorum_leader(tmp_path, ["kafka", "kafka-2"]) == 2
    assert cluster.quorum_leader(tmp_path, ["kafka", "kafka-2", "kafka-3"]) == 3
    assert cluster.quorum_leader(tmp_path, []) is None


def test_a_home_keeps_its_node_count(tmp_path: Path) -> None:
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "stack.json").write_text(json.dumps({"brokers": 3, "ports": _ports(3)}))
    settings = Settings(home=tmp_path, kafka_bootstrap=None, schema_registry_url=None)
    with pytest.raises(ConfigError, match=r"3-node Kafka cluster.*kappa up --brokers 3"):
        manager.up(settings, brokers=1)
    assert json.loads((tmp_path / "stack.json").read_text())["brokers"] == 3
    assert manager.brokers_of(settings) == 3


def test_faust_producer_asks_for_acks_all_and_idempotence() -> None:
    import faust

    from stream_processors import faust_internals

    faust_internals.install()
    app = faust.App("kappa-unit-acks", broker="kafka://127.0.0.1:1", web_enabled=False)
    extra = app.producer._settings_extra()  # what aiokafka gets beside Faust's defaults
    assert (extra["acks"], extra["enable_idempotence"]) == ("all", True)
    assert app.conf.producer_acks == -1


def test_client_waits_are_logged_with_the_broker_address_once_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from confluent_kafka import KafkaError

    from kappa.kafka import ClientErrorLog

    now = [0.0]
    cb = ClientErrorLog(logging.getLogger("kappa.test.waits"), "sink consumer", every=10.0, clock=lambda: now[0])
    down = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9192/2: Connect to ipv4#127.0.0.1:9192 failed")
    with caplog.at_level(logging.WARNING, "kappa.test.waits"):
        for t in (0.0, 1.0, 9.9, 10.0, 15.0):
            now[0] = t
            cb(down)
        cb(KafkaError(KafkaError._ALL_BROKERS_DOWN, "3/3 brokers are down"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all(ln.startswith("sink consumer waits for Kafka: ") for ln in lines)
    assert "127.0.0.1:9192/2" in lines[0] and "3/3 brokers are down" in lines[2]
