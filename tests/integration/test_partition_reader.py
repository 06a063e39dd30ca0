"""Direct partition reads (:func:`stream_processors.dimensions.partition_reader`) on the real broker:
exact ranges, and reads that end where no record is (transaction markers, aborted records)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer

from kappa.kafka import TopicSpec, client_config, ensure_topics
from kappa.settings import Settings
from stream_processors.dimensions import partition_reader
from tests.conftest import Stack

pytestmark = pytest.mark.integration


def _topic(settings: Settings, stack: Stack, name: str) -> str:
    ensure_topics(settings, stack.kafka_bootstrap, [TopicSpec(name, partitions=2)])
    return name


def test_reads_exact_ranges(stack: Stack, tmp_path: Path, unique) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path)
    topic = _topic(settings, stack, unique("reader-plain"))
    p = Producer(client_config(settings, stack.kafka_bootstrap))
    for i in range(25):
        p.produce(topic, key=b"k", value=str(i).encode(), partition=1)
    assert p.flush(30) == 0
    read = partition_reader(settings, stack.kafka_bootstrap, topic, stall_s=2.0)
    assert [m.offset for m in read(1, 0)] == list(range(25))
    assert [(m.offset, m.value) for m in read(1, 7, 10)] == [(7, b"7"), (8, b"8"), (9, b"9")]
    assert read(1, 25) == [] and read(0, 0) == []  # at the end, an empty partition
    again = read(1, 20)  # the same reader, after reads of other ranges: no stale records
    assert [m.offset for m in again] == [20, 21, 22, 23, 24]


def test_reads_end_at_offsets_without_records(stack: Stack, tmp_path: Path, unique) -> None:  # type: ignore[no-untyped-def]
    """The partition's last offsets hold a commit marker, then aborted records and their abort
    marker: none is a record the reader gets, yet every read up to that end returns (by the
    end-of-partition event or the consumer's position)."""
    settings = Settings(home=tmp_path)
    topic = _topic(settings, stack, unique("reader-txn"))
    tx = Producer(client_config(settings, stack.kafka_bootstrap, **{"transactional.id": topic}))
    tx.init_transactions(30)
    tx.begin_transaction()
    for i in range(3):
        tx.produce(topic, value=f"c{i}".encode(), partition=0)
    tx.commit_transaction(30)  # offsets 0-2, marker 3
    tx.begin_transaction()
    for i in range(2):
        tx.produce(topic, value=f"a{i}".encode(), partition=0)
    tx.flush(30)
    tx.abort_transaction(30)  # aborted 4-5, marker 6
    read = partition_reader(settings, stack.kafka_bootstrap, topic, stall_s=2.0)
    assert [m.value for m in read(0, 0)] == [b"c0", b"c1", b"c2"]
    assert [m.value for m in read(0, 0, 4)] == [b"c0", b"c1", b"c2"]  # to the commit marker
    assert read(0, 3, 7) == [] and read(0, 4) == []
