"""Consumer lag from Kafka itself: committed offsets of a group vs the partitions' end offsets.

``kappa run --until-drained`` and the progress line use it; so can any operator, since it
needs nothing but the broker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

__all__ = ["GroupLag", "group_lag", "matching_topics", "wait_group_stable"]


@dataclass(frozen=True)
class GroupLag:
    """Lag of one consumer group over a set of topics."""

    group: str
    per_partition: dict[tuple[str, int], tuple[int, int]]  # (topic, p) -> (committed, end)

    @property
    def total(self) -> int:
        return sum(max(0, end - committed) for committed, end in self.per_partition.values())

    @property
    def consumed(self) -> int:
        return sum(committed for committed, _ in self.per_partition.values())

    @property
    def end(self) -> int:
        return sum(end for _, end in self.per_partition.values())

    def by_topic(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (topic, _), (committed, end) in self.per_partition.items():
            out[topic] = out.get(topic, 0) + max(0, end - committed)
        return out


def matching_topics(admin: AdminClient, names: Iterable[str] = (), patterns: Iterable[str] = (),
                    timeout: float = 10.0, meta: Any = None) -> dict[str, int]:
    """Existing topics among ``names`` or matching a regex in ``patterns``, with partition counts.

    ``meta``: cluster metadata already fetched (``admin.list_topics()``), to share one fetch
    between calls: on a broker with many topics, building it costs milliseconds of Python.
    """
    if meta is None:
        meta = admin.list_topics(timeout=timeout)
    wanted = set(names)
    regexes = [re.compile(p) for p in patterns]
    return {
        name: len(t.partitions)
        for name, t in meta.topics.items()
        if name in wanted or any(r.fullmatch(name) for r in regexes)
    }


def group_lag(admin: AdminClient, group: str, topics: dict[str, int], timeout: float = 10.0) -> GroupLag:
    """Committed offsets of ``group`` (missing = 0) against end offsets, for ``topics``.

    Raises KafkaException when Kafka does not answer (never reports that as a lag).
    """
    tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
    if not tps:
        return GroupLag(group, {})
    ends: dict[tuple[str, int], int] = {}
    for attempt in range(10):  # just-created topics answer NOT_LEADER until metadata settles
        try:
            futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
            for tp, fut in futures.items():
                ends[(tp.topic, tp.partition)] = fut.result().offset
            break
        except KafkaException:
            if attempt == 9:
                raise
            time.sleep(0.5)
    committed: dict[tuple[str, int], int] = {}
    for tp in _committed(admin, group, tps, timeout):
        if tp.error is None and tp.offset >= 0:
            committed[(tp.topic, tp.partition)] = tp.offset
    return GroupLag(group, {k: (committed.get(k, 0), end) for k, end in ends.items()})


_COORDINATOR_MOVING = (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                       KafkaError.NOT_COORDINATOR)


def _committed(admin: AdminClient, group: str, tps: list[TopicPartition],
               timeout: float) -> list[TopicPartition]:
    """Committed offsets of ``group`` for ``tps`` (offset < 0: none committed).

    A group nobody ever committed for answers with no offsets, not an error. Errors are
    raised, never read as "nothing committed": a lag of everything is not what a broker
    that does not answer means (only a coordinator still loading is waited for).
    """
    req = [ConsumerGroupTopicPartitions(group, tps)]
    attempts = 10
    while True:
        try:
            return list(admin.list_consumer_group_offsets(req, request_timeout=timeout)[group]
                        .result().topic_partitions)
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                return []
            attempts -= 1
            if code not in _COORDINATOR_MOVING or not attempts:
                raise
            time.sleep(0.5)


def wait_group_stable(admin: AdminClient, group: str, members: int, timeout: float) -> None:
    """Until consumer group ``group`` is Stable with ``members`` members that all hold partitions;
    TimeoutError (naming the last state seen) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen = "not described"
    while time.monotonic() < deadline:
        try:
            g = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
            seen = f"{g.state.name} with {len(g.members)} members"
            if (g.state == ConsumerGroupState.STABLE and len(g.members) == members
                    and all(m.assignment.topic_partitions for m in g.members)):
                return
        except KafkaException as exc:
            seen = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"group {group} not stable with {members} members after {timeout:.0f}s: {seen}")
