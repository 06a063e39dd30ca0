"""A pipeline version is bound to one log on the broker (issue 7).

Its state there (Faust changelog, group offsets, partials, checkpoints, outputs) is named by the
version alone, and a worker with an empty state directory restores it: before the binding, a
version run over a second log started from the first log's watermarks, applied offsets and
user profiles, and a live run and its replay disagreed on too-late verdicts.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from kappa import lineage, topics
from kappa.errors import VersionLogMismatch
from kappa.kafka import client_config, ensure_topics
from kappa.runner import Pipeline
from kappa.settings import Settings
from stream_processors.app import create_app
from tests.conftest import Stack

pytestmark = pytest.mark.integration


def _log(stack: Stack, home: Path, events: int = 0) -> Settings:
    """A fresh log (its own topic prefix and KAPPA_HOME) holding ``events`` generator orders."""
    from producers.base import Publisher
    from tests.support.ecommerce import GeneratorConfig, generate, publish_events

    s = stack.settings(home=home, topic_prefix=f"lg{uuid.uuid4().hex[:8]}.", category_map="")
    ensure_topics(s, stack.kafka_bootstrap, topics.input_specs(s.partitions, s.topic_prefix))
    if events:
        with Publisher(s, stack.kafka_bootstrap) as pub:
            publish_events(pub, generate(GeneratorConfig(events=events, seed=3))[0])
            pub.flush()
    return s


def test_a_version_that_ran_on_one_log_refuses_another(stack: Stack, tmp_path: Path) -> None:
    version = f"g{uuid.uuid4().hex[:8]}"
    first = _log(stack, tmp_path / "a", events=300)
    Pipeline(first, version, echo=lambda _: None, serve_metrics=False).run(
        until_drained=True, poll=1.0, max_seconds=240)

    second = _log(stack, tmp_path / "b", events=300)
    with pytest.raises(VersionLogMismatch, match=rf"version {version} .* belongs to another log .*"
                                                 rf"kappa replay --cleanup {version}"):
        Pipeline(second, version, echo=lambda _: None, serve_metrics=False).run(
            until_drained=True, poll=1.0, max_seconds=60)
    assert not (tmp_path / "b" / "logs").exists()  # refused before any child started
    with pytest.raises(VersionLogMismatch):  # a worker started by hand refuses as well
        create_app(second, version, tmp_path / "b" / "worker", learning=False)

    Pipeline(first, version, echo=lambda _: None, serve_metrics=False).prepare()  # its own log: fine
    fresh = f"g{uuid.uuid4().hex[:8]}"
    assert lineage.bind(second, stack.kafka_bootstrap, fresh) == lineage.identity(second, stack.kafka_bootstrap)


def test_re_created_input_topics_are_another_log(stack: Stack, tmp_path: Path) -> None:
    s = _log(stack, tmp_path)
    version = f"g{uuid.uuid4().hex[:8]}"
    lineage.bind(s, stack.kafka_bootstrap, version)
    orders = topics.input_topics(s.topic_prefix).topic("orders")
    admin = AdminClient(client_config(s, stack.kafka_bootstrap))
    for fut in admin.delete_topics([orders], operation_timeout=30).values():
        fut.result()
    deadline = time.monotonic() + 60
    while orders in admin.list_topics(timeout=10).topics:  # deletion completes asynchronously
        assert time.monotonic() < deadline, f"{orders} still listed"
        time.sleep(0.5)
    ensure_topics(s, stack.kafka_bootstrap, topics.input_specs(s.partitions, s.topic_prefix))
    with pytest.raises(VersionLogMismatch, match=rf"{orders} was topic id .* \(deleted and re-created\)"):
        lineage.bind(s, stack.kafka_bootstrap, version)


def test_a_version_without_a_record_is_judged_by_its_group_offsets(stack: Stack, tmp_path: Path) -> None:
    """Versions started before the record existed: offsets on another log's inputs refuse."""
    old, new = _log(stack, tmp_path / "old"), _log(stack, tmp_path / "new")
    version = f"g{uuid.uuid4().hex[:8]}"
    orders = topics.input_topics(old.topic_prefix).topic("orders")
    c = Consumer(client_config(old, stack.kafka_bootstrap, **{"group.id": f"kappa-{version}"}))
    c.commit(offsets=[TopicPartition(orders, 0, 0)], asynchronous=False)
    c.close()
    with pytest.raises(VersionLogMismatch, match=rf"its group kappa-{version} consumed {orders}"):
        lineage.bind(new, stack.kafka_bootstrap, version)
    assert lineage.bind(old, stack.kafka_bootstrap, version).topics.keys() == {
        orders, topics.input_topics(old.topic_prefix).topic("users"),
        topics.input_topics(old.topic_prefix).topic("order_labels")}
