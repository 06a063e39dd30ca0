"""The log a pipeline version is derived from: recorded on the broker once, checked at every start.

Why. Everything version ``V`` keeps on the broker is named by ``V`` alone: the Faust group
``kappa-V`` and its table changelog ``kappa-V-state-changelog`` (which a worker with an empty
state directory restores), the window partials, the learning checkpoints, the outputs
``kappa.V.*``. Run ``V`` over another log — another ``KAPPA_TOPIC_PREFIX``, or input topics
deleted and re-created under the same names — and its workers start from what the other log
left behind: per partition a watermark and a last applied offset the new log never had (so
its orders up to that offset pass as already applied: not late whatever their event time,
in no window), other users' profiles, another model. The results would then depend on what
ran before on the broker, not on the log.

So ``V`` is bound to one log — the names and Kafka topic ids of its input topics — by the
record its first start writes to the compacted topic ``kappa.V.lineage``. Every start
(``kappa run``, ``kappa replay``, each worker) compares and refuses another log with
:class:`~kappa.errors.VersionLogMismatch`; ``kappa replay --cleanup V`` drops the record with
the rest of ``V``. A version started before records existed is judged by its consumer group:
offsets committed on input topics that are not this log's mean another log.

>>> old = LogIdentity({"a.orders": "Zk2", "a.users": "Qx1"})
>>> old.differences(LogIdentity({"a.orders": "Zk2", "a.users": "Qx1"}))
[]
>>> old.differences(LogIdentity({"a.orders": "Jp7", "a.users": "Qx1"}))
['a.orders was topic id Zk2, now Jp7 (deleted and re-created)']
>>> old.differences(LogIdentity({"b.orders": "Jp7", "b.users": "Mm4"}))
['input topics were a.orders, a.users, now b.orders, b.users']
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from kappa import topics
from kappa.errors import KafkaUnavailable, VersionLogMismatch
from kappa.kafka import TopicSpec, client_config, ensure_topics, producer_config
from kappa.settings import Settings

__all__ = ["LogIdentity", "adopt", "bind", "identity", "lineage_topic"]

_KEY = b"log"


def lineage_topic(version: str) -> str:
    """The compacted one-record topic naming the log of ``version``."""
    return topics.output_topics(version).lineage


@dataclass(frozen=True)
class LogIdentity:
    """Input topic name -> Kafka topic id ("" when the broker does not tell)."""

    topics: dict[str, str]
    record: str = field(default="", compare=False)
    """Id of the binding (made when the version was bound; a new one after a cleanup)."""

    def differences(self, now: LogIdentity) -> list[str]:
        """Why ``now`` is not this log (empty when it is)."""
        if set(self.topics) != set(now.topics):
            return [f"input topics were {', '.join(sorted(self.topics))}, now {', '.join(sorted(now.topics))}"]
        return [f"{name} was topic id {was}, now {now.topics[name]} (deleted and re-created)"
                for name, was in sorted(self.topics.items())
                if was and now.topics[name] and was != now.topics[name]]

    def to_json(self) -> bytes:
        return json.dumps({"topics": self.topics, "record": self.record,
                           "recorded_at": datetime.now(UTC).isoformat()}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LogIdentity:
        d = json.loads(data)
        return cls(dict(d["topics"]), str(d.get("record", "")))


def identity(settings: Settings, bootstrap: str) -> LogIdentity:
    """The log of ``settings``: the selected pipeline's input topics with their topic ids."""
    from kappa.pipeline import current

    names = [settings.topic_prefix + name for name in current().inputs]
    admin = AdminClient(client_config(settings, bootstrap))
    ids = {}
    for name, fut in admin.describe_topics(TopicCollection(names), request_timeout=30).items():
        try:
            ids[name] = str(fut.result().topic_id or "")
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaUnavailable(f"describing {name} on {bootstrap} failed: {exc}") from exc
            ids[name] = ""  # not created yet: the names still tell the log
    return LogIdentity(ids)


def _recorded(settings: Settings, bootstrap: str, topic: str) -> LogIdentity | None:
    consumer = Consumer(client_config(settings, bootstrap, **{
        "group.id": f"kappa-lineage-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}))
    try:
        deadline = time.monotonic() + 30
        while True:  # a topic created a moment ago may not have its leader yet
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, 0, low)])
        last: bytes | None = None
        position = low
        while position < high:
            msg = consumer.poll(30)
            if msg is None:
                raise KafkaUnavailable(f"reading {topic} on {bootstrap} stalled at offset {position}/{high}")
            if msg.error() is not None:
                raise KafkaUnavailable(f"reading {topic} on {bootstrap}: {msg.error()}")
            position = int(msg.offset() or 0) + 1
            if msg.key() == _KEY and msg.value():
                last = msg.value()
        return None if last is None else LogIdentity.from_json(last)
    except KafkaException as exc:
        raise KafkaUnavailable(f"reading {topic} on {bootstrap} failed: {exc}") from exc
    finally:
        consumer.close()


def _consumed_elsewhere(settings: Settings, bootstrap: str, version: str, log: LogIdentity) -> list[str]:
    """Topics the group of ``version`` committed offsets on that are neither its own nor this log's."""
    from kappa.pipeline import current
    from kappa.pipeline.derive import Names

    names = Names(current(), version)
    group = names.group
    admin = AdminClient(client_config(settings, bootstrap))
    try:  # a group that never committed answers with no partitions
        result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                   request_timeout=30)[group].result()
    except KafkaException as exc:  # not "nothing committed": that would claim a foreign version
        raise KafkaUnavailable(f"reading the offsets of group {group} on {bootstrap} failed: {exc}") from exc
    own = re.compile(re.escape(f"{group}-") + "|" + re.escape(names.output_prefix))
    samples = re.compile(topics.input_topics(settings.topic_prefix).samples_pattern)
    committed = {tp.topic for tp in result.topic_partitions or [] if tp.offset >= 0}
    return sorted(t for t in committed
                  if t not in log.topics and not own.match(t) and not samples.fullmatch(t))


def bind(settings: Settings, bootstrap: str, version: str) -> LogIdentity:
    """Record the log of ``version`` at its first start; afterwards refuse any other log.

    Raises VersionLogMismatch, naming the difference and what to do, when ``version`` on this
    broker already belongs to another log.
    """
    topic = lineage_topic(version)
    ensure_topics(settings, bootstrap, [TopicSpec(topic, 1, {
        "cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"})])
    now = identity(settings, bootstrap)
    was = _recorded(settings, bootstrap, topic)
    if was is None:
        elsewhere = _consumed_elsewhere(settings, bootstrap, version, now)
        if elsewhere:
            from kappa.pipeline import current
            from kappa.pipeline.derive import Names

            group = Names(current(), version).group
            raise _mismatch(version, bootstrap, [f"its group {group} consumed {', '.join(elsewhere)}"])
        bound = LogIdentity(now.topics, uuid.uuid4().hex)
        _record(settings, bootstrap, topic, bound)
        return bound
    diff = was.differences(now)
    if diff:
        raise _mismatch(version, bootstrap, diff)
    if any(now.topics[name] and not known for name, known in was.topics.items()):
        was = LogIdentity(now.topics, was.record)  # recorded before a topic existed: complete it
        _record(settings, bootstrap, topic, was)
    return was


def adopt(datadir: Path, bound: LogIdentity) -> bool:
    """Keep a worker's local state directory only if it was built under binding ``bound``.

    The local RocksDB is a cache of the version's changelog. One left by an earlier binding of
    the version (dropped with ``kappa replay --cleanup`` from another KAPPA_HOME, or a broker
    reset, then bound anew, maybe to another log) is stale, and Faust would trust its persisted
    offsets against a changelog that no longer holds them. Such a directory is emptied (its
    lock file kept): the worker then restores the changelog, as on a new machine. Returns True
    when it emptied something.
    """
    datadir.mkdir(parents=True, exist_ok=True)
    marker = datadir / "lineage.json"
    try:
        seen = json.loads(marker.read_text()).get("record")
    except (OSError, ValueError):
        seen = None
    stale = [p for p in datadir.iterdir() if p.name not in (".lock", marker.name)] if seen != bound.record else []
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    marker.write_text(json.dumps({"record": bound.record, "topics": bound.topics}))
    return bool(stale)


def _record(settings: Settings, bootstrap: str, topic: str, log: LogIdentity) -> None:
    errors: list[str] = []
    producer = Producer(producer_config(settings, bootstrap))
    producer.produce(topic, log.to_json(), _KEY, partition=0,
                     on_delivery=lambda err, _msg: errors.append(str(err)) if err is not None else None)
    if producer.flush(30) or errors:
        raise KafkaUnavailable(f"recording the log of {topic} on {bootstrap} failed: "
                               f"{'; '.join(errors) or 'not acknowledged within 30s'}")


def _mismatch(version: str, bootstrap: str, why: list[str]) -> VersionLogMismatch:
    from kappa.pipeline import current
    from kappa.pipeline.derive import Names

    n = Names(current(), version)
    return VersionLogMismatch(
        f"version {version} on {bootstrap} belongs to another log ({'; '.join(why)}): its state there "
        f"(group {n.group}, changelog {n.group}-state-changelog, topics {n.output_prefix}*) "
        f"would be restored into this run and mix the two logs. Run this log as a new version "
        f"(--version / KAPPA_VERSION), or drop the old one first: kappa replay --cleanup {version}")
