"""Bulk I/O of a batch: state in a Faust table written in bulk, outputs through one confluent producer.

Why not ``table[key] = value``: each Faust table write sends one changelog message through
the Python producer (~3.6k writes/s here). :class:`TableState` keeps Faust's table — its
RocksDB store (rocksdict, one DB per partition), its changelog topic, its recovery and
partition assignment — but writes a whole batch at once: one RocksDB ``WriteBatch`` per
partition and the changelog records through librdkafka. :class:`Outputs` produces every
output record the same way and :meth:`Outputs.flush` waits for all of them, so a batch is
durable (outputs + changelog) before Faust acks its events and commits their offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from confluent_kafka import KafkaError, Producer
from faust.types import TP
from rocksdict import WriteBatch

from kappa.errors import KappaError
from kappa.kafka import client_config
from kappa.settings import Settings
from kappa.topics import OutputTopics
from schemas.serde import Encoder, Registry
from stream_processors.base import Emitted

__all__ = ["OutputError", "Outputs", "TableState"]

log = logging.getLogger(__name__)


class OutputError(KappaError):
    """Records of a batch could not be written to Kafka (the batch is not acked; restart retries)."""


class Outputs:
    """One idempotent librdkafka producer for outputs, partials and changelog records."""

    def __init__(self, settings: Settings, bootstrap: str, registry: Registry, outputs: OutputTopics,
                 partials_topic: str) -> None:
        self.producer = Producer(client_config(
            settings, bootstrap,
            **{"partitioner": "murmur2_random", "enable.idempotence": True, "linger.ms": 5,
               "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000,
               "message.max.bytes": 1_000_000}))  # no compression: aiokafka here lacks lz4/snappy
        self.topics = outputs
        self.partials_topic = partials_topic
        self.enriched = Encoder(registry, f"{outputs.enriched}-value", "enriched_order")
        self.revenue = Encoder(registry, f"{outputs.revenue}-value", "revenue_window")
        self.rejected = Encoder(registry, f"{outputs.rejected}-value", "rejected_event")
        self._errors: list[str] = []
        self._acked: dict[tuple[str, int], int] = {}

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err.str()}")
        else:
            tp = (msg.topic(), msg.partition())
            if msg.offset() > self._acked.get(tp, -1):
                self._acked[tp] = msg.offset()

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1) -> None:
        """Queue one record (waits for room when librdkafka's queue is full)."""
        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition, on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def emit(self, out: Emitted) -> None:
        """Queue every output record of a batch (encoded in bulk)."""
        produce = self.produce
        if out.enriched:
            for (key, _), value in zip(out.enriched, self.enriched.encode_many(r for _, r in out.enriched),
                                       strict=True):
                produce(self.topics.enriched, key.encode(), value)
        if out.revenue:
            for (key, _), value in zip(out.revenue, self.revenue.encode_many(r for _, r in out.revenue),
                                       strict=True):
                produce(self.topics.revenue, key.encode(), value)
        if out.rejected:
            for rec, value in zip(out.rejected, self.rejected.encode_many(out.rejected), strict=True):
                produce(self.topics.rejected, rec["source"].encode(), value)
        for key, value in out.partials:
            produce(self.partials_topic, key.encode(), value)

    def flush(self, timeout: float = 60.0) -> dict[tuple[str, int], int]:
        """Wait until everything queued is acknowledged; return the acked offsets (topic, partition).

        Raises OutputError when a record failed: the caller must not ack the batch.
        """
        left = self.producer.flush(timeout)
        if left or self._errors:
            errors, self._errors = self._errors, []
            raise OutputError(f"{left} records not delivered within {timeout}s; errors: "
                              f"{'; '.join(errors[:5]) or 'none'} — check that Kafka is reachable")
        acked, self._acked = self._acked, {}
        return acked


class TableState:
    """:class:`~stream_processors.base.State` on a Faust table with raw keys/values, written in bulk."""

    def __init__(self, table: Any, outputs: Outputs) -> None:
        self.table = table
        self.outputs = outputs

    @property
    def changelog(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._db(partition).get(key)  # type: ignore[no-any-return]

    def scan(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db(partition).items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    def write(self, partition: int, items: dict[bytes, bytes | None]) -> None:
        """Local RocksDB first (one WriteBatch), then the changelog records in the same order."""
        if not items:
            return
        batch = WriteBatch(raw_mode=True)
        for key, value in items.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db(partition).write(batch)
        topic = self.changelog
        for key, value in items.items():
            self.outputs.produce(topic, key, value, partition)

    def persisted(self, acked: dict[tuple[str, int], int]) -> None:
        """Record acked changelog offsets in the store, so recovery reads only what follows."""
        topic = self.changelog
        for (t, partition), offset in acked.items():
            if t == topic:
                self.table.data.set_persisted_offset(TP(topic, partition), offset)
