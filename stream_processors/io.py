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

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError, Producer
from faust.types import TP
from rocksdict import WriteBatch

from kappa.errors import KappaError
from kappa.kafka import ClientErrorLog, producer_config
from kappa.settings import Settings
from schemas.serde import Encoder, Registry
from stream_processors.base import Emitted
from stream_processors.faust_internals import partition_db

__all__ = ["OutputError", "Outputs", "Route", "TableState"]

log = logging.getLogger(__name__)


class OutputError(KappaError):
    """Records of a batch could not be written to Kafka (the batch is not acked; restart retries)."""


@dataclass
class Route:
    """Where one stage's outputs go: its stream's valid events, its window's values, its partials."""

    stream_topic: str | None = None
    stream_encoder: Encoder | None = None
    window_topic: str | None = None
    window_encoder: Encoder | None = None
    partials_topic: str | None = None
    learn: tuple[tuple[str, str, str, str], ...] = ()
    """The models that learn from the stream: its valid events also go to each model's merge
    topic: (merge topic, kind ``event`` or ``label``, the record's id field in the merge (the
    model's join field; a label's ``label_by``), the stream's event time field)."""
    rows: dict[str, tuple[str, Encoder]] | None = None
    """Declared outputs of the stage (sessions, joins): name -> (topic, encoder)."""


class Outputs:
    """One idempotent librdkafka producer (``acks=all``) for outputs, partials and changelog records."""

    def __init__(self, settings: Settings, bootstrap: str, registry: Registry, rejected_topic: str) -> None:
        self.bootstrap = bootstrap
        self.producer = Producer(producer_config(
            settings, bootstrap,
            **{"partitioner": "murmur2_random", "linger.ms": 5,
               "error_cb": ClientErrorLog(log, "processors' output producer"),
               "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000,
               "message.max.bytes": 1_000_000}))  # no compression: aiokafka here lacks lz4/snappy
        self.registry = registry
        self.rejected_topic = rejected_topic
        self.rejected = Encoder(registry, f"{rejected_topic}-value", "rejected_event")
        self._errors: list[str] = []
        self._acked: dict[tuple[str, int], int] = {}

    def route(self, stream_topic: str | None = None, stream_schema: str | None = None,
              window_topic: str | None = None, window_schema: str | None = None,
              partials_topic: str | None = None, learn: Sequence[tuple[str, str, str, str]] = (),
              rows: dict[str, tuple[str, str]] | None = None) -> Route:
        """A :class:`Route` with the encoders of its topics (subjects ``<topic>-value``);
        ``learn``: (merge topic, kind, id field, time field) per model learning from the stream;
        ``rows``: output name -> (topic, schema) of the stage's sessions and joins."""
        enc = self._encoder
        encoded = {name: (topic, Encoder(self.registry, f"{topic}-value", schema))
                   for name, (topic, schema) in (rows or {}).items()}
        return Route(stream_topic, enc(stream_topic, stream_schema), window_topic, enc(window_topic, window_schema),
                     partials_topic, tuple(learn), encoded or None)

    def _encoder(self, topic: str | None, schema: str | None) -> Encoder | None:
        return Encoder(self.registry, f"{topic}-value", schema) if topic and schema else None

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err.str()}")
        else:
            tp = (msg.topic(), msg.partition())
            offset = msg.offset()
            if offset > self._acked.get(tp, -1):
                self._acked[tp] = offset

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1) -> None:
        """Queue one record (waits for room when librdkafka's queue is full)."""
        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition, on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def emit(self, out: Emitted, route: Route) -> None:
        """Queue every output record of a batch (encoded in bulk) along ``route``."""
        if out.enriched and route.stream_topic and route.stream_encoder:
            self.produce_many(route.stream_topic, [k.encode() for k, _ in out.enriched],
                              route.stream_encoder.encode_many([r for _, r in out.enriched]))
        if out.window_values and route.window_topic and route.window_encoder:
            self.produce_many(route.window_topic, [k.encode() for k, _ in out.window_values],
                              route.window_encoder.encode_many([r for _, r in out.window_values]))
        for name, rows in out.rows.items():
            if rows and route.rows and name in route.rows:
                topic, encoder = route.rows[name]
                self.produce_many(topic, [k.encode() for k, _ in rows], encoder.encode_many([r for _, r in rows]))
        self.produce_many(self.rejected_topic, [r["source"].encode() for r in out.rejected],
                          self.rejected.encode_many(out.rejected))
        if out.partials and route.partials_topic:
            self.produce_many(route.partials_topic, [k.encode() for k, _ in out.partials],
                              [v for _, v in out.partials])
        for topic, kind, ident, at in route.learn if out.enriched else ():
            # Straight from the stream stage, so each input partition's events reach the model's
            # merge in offset order (its per-source lateness test is then deterministic); the
            # source offset lets the learner drop what a restarted stage sends again.
            self.produce_many(topic, [k.encode() for k, _ in out.enriched],
                              [orjson.dumps({"kind": kind, "time": r[at], "id": r[ident],
                                             "src": f"{r['source_topic']}/{r['source_partition']}",
                                             "off": r["source_offset"], "data": r})
                               for _, r in out.enriched], partition=0)

    def produce_many(self, topic: str, keys: Sequence[bytes], values: Sequence[bytes | None],
                     partition: int = -1) -> None:
        """Queue records of one topic (the per-record path without a Python frame per record)."""
        produce, poll, on_delivery = self.producer.produce, self.producer.poll, self._on_delivery
        for key, value in zip(keys, values, strict=True):
            try:
                produce(topic, value, key, partition=partition, on_delivery=on_delivery)
            except BufferError:
                poll(0.05)
                self.produce(topic, key, value, partition)

    def flush(self, timeout: float = 60.0) -> dict[tuple[str, int], int]:
        """Wait until everything queued is acknowledged; return the acked offsets (topic, partition).

        Raises OutputError when a record failed: the caller must not ack the batch.
        """
        return self._result(self.producer.flush(timeout), timeout)

    def _result(self, left: int, timeout: float) -> dict[tuple[str, int], int]:
        errors, self._errors = self._errors, []
        acked, self._acked = self._acked, {}
        if left or errors:
            raise OutputError(f"{left} records not delivered within {timeout}s; errors: "
                              f"{'; '.join(errors[:5]) or 'none'} — check that Kafka at {self.bootstrap} is reachable "
                              "(`kappa status`)")
        return acked

    async def flush_async(self, timeout: float = 60.0, tick: float = 0.002) -> dict[tuple[str, int], int]:
        """:meth:`flush` that lets the event loop (Faust's fetcher) run while Kafka acks.

        Delivery reports are served here, in the loop's thread (no GIL ping-pong with a
        flushing thread); returns once nothing is queued or in flight.
        """
        producer = self.producer
        producer.flush(0)  # send now, whatever linger.ms says
        deadline = time.monotonic() + timeout
        while len(producer) and time.monotonic() < deadline:
            await asyncio.sleep(tick)
            producer.poll(0)
        return self._result(len(producer), timeout)


class TableState:
    """:class:`~stream_processors.base.State` on a Faust table with raw keys/values, written in bulk."""

    def __init__(self, table: Any, outputs: Outputs) -> None:
        self.table = table
        self.outputs = outputs

    @property
    def changelog(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def _db(self, partition: int) -> Any:
        return partition_db(self.table, partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._db(partition).get(key)

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        """One rocksdict multi-get."""
        return self._db(partition).get(keys)

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
        self.outputs.produce_many(self.changelog, list(items), list(items.values()), partition)

    def persisted(self, acked: dict[tuple[str, int], int]) -> None:
        """Record acked changelog offsets in the store, so recovery reads only what follows."""
        topic = self.changelog
        for (t, partition), offset in acked.items():
            if t == topic:
                self.table.data.set_persisted_offset(TP(topic, partition), offset)
