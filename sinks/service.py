"""The sink service of one pipeline version: Kafka output topics -> ClickHouse, exactly once.

It consumes the version's output topics and the producer-edge DLQs (``<prefix><input>.dlq``,
by regex so new ones are found) as group ``kappa-<V>-sink``, decodes each message with its
Avro schema (undecodable ones become ``rejected_events`` rows, stage ``sink``), groups the
rows into size- and time-bounded batches and hands them to :class:`sinks.writer.Writer`.
Decoding is the hot path: with the embedded engine, messages of the plain-field tables whose
writer schema is the reader schema are inserted per batch straight from their Avro bytes by
the engine (:mod:`sinks.bulk`, checked record by record, falling back to per-message decode);
everything else is decoded per message straight into row tuples
(:meth:`schemas.serde.Decoder.decode_row`), no dicts.
Two threads make a pipeline of batches. The consuming thread reads chunks of messages
(:data:`CONSUME_CHUNK`), decodes or frames each chunk into the filling batch n+2 and hands
a batch over when it is full or old; batch n+1 may wait, handed over, behind batch n, which
the landing thread writes meanwhile (its rows, then its offsets into ``sink_offsets``). Only
then are batch n's next offsets queued back, and the consuming thread commits them to Kafka
(synchronously) on its next poll: a commit never overtakes its insert, and the consuming
thread waits for the landing thread only when two batches are already in flight.
On partition assignment the consumer seeks to the offsets stored in ClickHouse.
With the embedded engine it also owns the chdb directory and serves ``kappa query``
through a read-only endpoint on 127.0.0.1.
"""

from __future__ import annotations

import gc
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Iterable
from itertools import repeat
from operator import is_not
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from kappa import topics
from kappa.errors import RegistryUnavailable, SinkError
from kappa.kafka import ClientErrorLog, client_config, ensure_topics
from kappa.settings import Settings
from kappa.stack import endpoints
from schemas.serde import DecodeError, Decoder, Registry, schema_text, split_frame
from sinks import migrate, views
from sinks.backends import endpoint_file, open_backend
from sinks.base import Backend
from sinks.endpoint import QueryEndpoint
from sinks.rows import TABLES, Table, poison_row, route
from sinks.writer import Batch, CrashPoint, Writer

__all__ = ["CONSUME_CHUNK", "SinkService", "dlq_pattern", "sink_group"]

log = logging.getLogger("kappa.sink")


def sink_group(version: str) -> str:
    """Consumer group of the sink of ``version`` (its committed offsets mean "landed")."""
    from kappa.pipeline import current
    from kappa.pipeline.derive import Names

    return str(Names(current(), version).sink_group)


def dlq_pattern(prefix: str) -> str:
    """Regex of the producer-edge DLQs of the inputs named with ``prefix``.

    >>> import re
    >>> p = dlq_pattern("t1.")
    >>> [bool(re.match(p, t)) for t in ("t1.orders.dlq", "orders.dlq", "t1.samples.x.dlq", "t2.users.dlq")]
    [True, False, True, False]
    """
    from kappa.pipeline import current

    inputs = "|".join(re.escape(name) for name in current().inputs)
    return "^" + re.escape(prefix).replace("\\-", "-") + rf"({inputs}|samples\.[^.]+)\.dlq$"


CONSUME_CHUNK = 10_000
"""Most messages one consume call returns. A batch is filled by several calls: each call's
messages are grouped, checked and framed for the bulk insert while they are fresh in the CPU
cache (a bare consumer reads ~1.5x faster in chunks of 10k than of 50k here), and the landing
thread waits less for the interpreter while a call builds its Message objects."""


def _all_framed(values: list[bytes | None], header: bytes) -> bool:
    """Every value is a message starting with ``header`` (tombstones are None: not framed).

    >>> _all_framed([b"\\x00ab", b"\\x00a"], b"\\x00a"), _all_framed([b"\\x00a", None], b"\\x00a")
    (True, False)
    """
    try:
        return all(map(bytes.startswith, values, repeat(header)))  # type: ignore[arg-type]
    except TypeError:
        return False


def _is_fatal(err: KafkaError) -> bool:
    """A consumer error it never recovers from. librdkafka reports a fenced static member as
    ``_FATAL`` consume events whose ``fatal()`` is False, and as ``FENCED_INSTANCE_ID`` on commit."""
    return bool(err.fatal()) or err.code() in (KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID)


class SinkService:
    """Runs the sink of ``version`` until ``stop`` is set (then flushes, commits, closes)."""

    def __init__(self, settings: Settings, version: str | None = None,
                 backend: Backend | None = None, serve_queries: bool = True,
                 bulk_decode: bool = True) -> None:
        self.settings = settings
        self.version = version or settings.version
        self.outputs = topics.output_topics(self.version)
        self.group = sink_group(self.version)
        self._backend = backend
        self.serve_queries = serve_queries
        self.bulk_decode = bulk_decode
        """Decode the busiest tables' messages in bulk with the embedded engine (sinks.bulk)."""
        self.stop_event = threading.Event()
        self.batch = Batch()
        self.endpoint: QueryEndpoint | None = None
        self.consumer: Consumer | None = None
        self.writer: Writer | None = None
        self.decoders: dict[str, Decoder] = {}
        self._catch_up: list[TopicPartition] = []
        self._fatal: KafkaError | None = None
        self._waits = ClientErrorLog(log, "sink consumer")
        self._pending: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        """Batches handed to the landing thread (one queued behind the one being written)."""
        self._landed: queue.SimpleQueue[list[TopicPartition]] = queue.SimpleQueue()
        """Next offsets of landed batches, committed to Kafka by the consuming thread."""
        self._landing: threading.Thread | None = None
        self._landing_error: BaseException | None = None
        self.landed_rows = 0
        """Rows of every batch written to ClickHouse so far (benchmarks, tests)."""
        self._want_paused = self._paused = False
        self._routes: dict[str, tuple[Table, Any, tuple[Any, ...], list[Any] | None]] = {}

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Open the store, migrate, create views if none, open the endpoint, subscribe."""
        s = self.settings
        backend = self._backend or open_backend(s, fail_inserts=s.sink_fail_inserts)
        self._backend = backend
        applied = migrate.apply(backend, self.version)
        if applied:
            log.info("applied migrations %s to %s", applied, migrate.database(self.version))
        if views.ensure_views(backend, self.version):
            log.info("serving views now point at version %s", self.version)
        self.writer = Writer(backend, self.version, CrashPoint.parse(s.sink_crash_at),
                             on_failure=self._pause, on_recover=self._resume,
                             give_up=self._giving_up)
        if self.serve_queries and backend.name == "embedded":
            from sinks.embedded import EmbeddedBackend

            assert isinstance(backend, EmbeddedBackend)
            self.endpoint = QueryEndpoint(EmbeddedBackend(backend.path, readonly=True),
                                          endpoint_file(s))
            self.endpoint.start()
        ep = endpoints(s)
        ensure_topics(s, ep.kafka_bootstrap, self.outputs.specs(s.partitions))
        registry = Registry(ep.schema_registry_url)
        self.decoders = {t.schema: Decoder(registry, t.schema) for t in TABLES.values() if t.schema}
        self.consumer = Consumer(client_config(s, ep.kafka_bootstrap, **{
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 2000,
            "max.poll.interval.ms": 600_000,
            "queued.max.messages.kbytes": 65_536,
            # Prefetch bounded by bytes (above), not by librdkafka's default 100k messages per
            # partition, and in big fetches: raw consume 156k -> 730k msg/s here.
            "queued.min.messages": 1_000_000,
            "max.partition.fetch.bytes": 8 << 20,
            "enable.partition.eof": False,
            # Static membership: a restarted sink (after kill -9) takes its partitions back at
            # once instead of waiting for the dead member's session to expire.
            "group.instance.id": f"{self.group}-0",
            "session.timeout.ms": 10_000,
            "error_cb": self._on_error,
        }))
        o = self.outputs
        subscription = [*o.all, dlq_pattern(s.topic_prefix)]
        self.consumer.subscribe(subscription, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("sink %s consuming %s as group %s", self.version, subscription, self.group)
        # Every consumed chunk makes thousands of Message objects, which triggers the cyclic
        # collector often; a full collection walks every object alive (modules, schemas, the
        # engine's and Arrow's bindings: ~100k here) with the GIL held, ~100 ms that stalls the
        # consuming and the landing thread alike. What start-up made lives as long as the
        # process: collect once, then freeze what is left out of the collector (refcounting
        # still frees it; only a cycle among those objects would now outlive its last use).
        gc.collect()
        gc.freeze()

    def run(self) -> None:
        """Consume until :meth:`stop`; everything in flight is flushed and committed."""
        if self.consumer is None:
            self.start()
        try:
            while not self.stop_event.is_set():
                self.poll_once()
            self.flush(wait=True)
        finally:
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to flush, commit and return (signal-handler safe)."""
        self.stop_event.set()

    def close(self) -> None:
        """Stop the landing thread, leave the group, stop the endpoint, release the engine."""
        if self._landing is not None:
            self._pending.put(None)
            self._landing.join()
            self._landing = None
        if self.consumer is not None:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError):
                pass
            self.consumer = None
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint.backend.close()
            self.endpoint = None
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # -- consuming -----------------------------------------------------------------------
    def poll_once(self) -> None:
        """One consume call; hand the batch over when it is full or old enough."""
        assert self.consumer is not None
        s = self.settings
        if self.batch.size:
            wait = max(0.01, s.sink_batch_seconds - (time.monotonic() - self.batch.started))
        else:
            wait = min(0.2, s.sink_batch_seconds)
        room = max(1, min(CONSUME_CHUNK, s.sink_batch_rows - self.batch.size))
        if self._catch_up:
            self._commit(self._catch_up)
            self._catch_up = []
        self._apply_pause()
        self._add_many(self.consumer.consume(num_messages=room, timeout=wait))
        self._raise_fatal()
        if self.batch.size and (self.batch.size >= s.sink_batch_rows
                                or time.monotonic() - self.batch.started >= s.sink_batch_seconds):
            self.flush(wait=False)
        else:
            self._check_landing()
            self._commit_landed()

    def _route(self, topic: str) -> tuple[Table, Any, tuple[Any, ...], list[Any] | None]:
        """(table, ``bytes -> values`` decoder, values appended after the decoded ones,
        ``[header, schema]`` of the bulk path once known, or None when it does not apply)."""
        r = self._routes.get(topic)
        if r is None:
            table = route(self.outputs, topic)
            assert table.schema is not None
            extra = (self.version,) if table.name == "rejected_events" else ()
            bulk = [None, None] if self._bulk_capable(table) else None
            r = self._routes[topic] = (table, self.decoders[table.schema].decode_row, extra, bulk)
        return r

    def _bulk_capable(self, table: Table) -> bool:
        """The bulk path needs the embedded engine and a schema of plain fields (:mod:`sinks.bulk`)."""
        from sinks.bulk import bulk_schema

        assert table.schema is not None
        return (self.bulk_decode and hasattr(self._backend, "insert_select")
                and table.name != "rejected_events"
                and bulk_schema(json.loads(schema_text(table.schema))) is not None)

    def _bulk_header(self, table: Table, value: bytes, bulk: list[Any]) -> None:
        """Learn the bulk path's schema from the first framed message whose writer is the reader."""
        from sinks.bulk import bulk_schema

        assert table.schema is not None
        try:
            schema_id = split_frame(value)[0]
            decoder = self.decoders[table.schema]
            if decoder.writer_is_reader(schema_id):
                writer = decoder.registry.writer_schema(schema_id)["__kappa_plain"]
                bulk[0], bulk[1] = value[:5], bulk_schema(writer)
        except (DecodeError, RegistryUnavailable):
            pass

    def _add_many(self, msgs: list[Message]) -> None:
        """Add one consume call's messages to the batch, topic by topic.

        Messages of a bulk-capable topic that all carry the bulk header are queued with a
        handful of list comprehensions (no per-message call into the batch); everything else
        is decoded per message straight into row tuples (no dict per message).
        """
        if not msgs:
            return
        topics = [m.topic() for m in msgs]
        groups: Iterable[tuple[str | None, list[Message]]]
        if topics.count(topics[0]) == len(topics):
            groups = ((topics[0], msgs),)  # the common case: one topic per consume call
        else:
            by_topic: dict[str | None, list[Message]] = {}
            for topic, msg in zip(topics, msgs, strict=True):
                group = by_topic.get(topic)
                if group is None:
                    group = by_topic[topic] = []
                group.append(msg)
            groups = by_topic.items()
        for topic, group in groups:
            # is_not, not ==: KafkaError's == against None leaves a TypeError pending
            if topic is None or any(map(is_not, [m.error() for m in group], repeat(None))):
                group = self._drop_errors(group)
                if not group or topic is None:
                    continue
            route = self._routes.get(topic) or self._route(topic)
            table, bulk = route[0], route[3]
            if bulk is not None:
                values = [m.value() for m in group]
                if bulk[0] is None and values[0] is not None:
                    self._bulk_header(table, values[0], bulk)
                header = bulk[0]
                if header is not None and _all_framed(values, header):
                    if self.batch.add_raw_many(
                            table.name, topic, bulk[1], header, route[1], values,  # type: ignore[arg-type]
                            [m.partition() for m in group], [m.offset() for m in group],  # type: ignore[misc]
                            [m.timestamp()[1] for m in group]):
                        continue
            self._add_each(topic, group, route)

    def _drop_errors(self, msgs: list[Message]) -> list[Message]:
        """``msgs`` without the consumer's error events (logged unless benign)."""
        kept = []
        for msg in msgs:
            err = msg.error()
            if err is None:
                kept.append(msg)
            else:
                self._on_error(err)
        return kept

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (called on the consuming thread, inside ``consume``)."""
        if _is_fatal(err):
            self._fatal = err
        elif err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            self._waits(err)  # librdkafka reconnects by itself; logged, throttled, with the address
        elif err.code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
            log.warning("consumer error: %s", err)

    def _raise_fatal(self) -> None:
        """A fatal consumer error (e.g. ``FENCED_INSTANCE_ID`` after a broker restart lost a
        JoinGroup response) leaves the consumer dead for good: leave the process, uncommitted
        work is redone by the restarted sink (``kappa run`` supervises it) with no duplicate."""
        if self._fatal is not None:
            raise SinkError(f"sink consumer hit a fatal Kafka error, restart needed: {self._fatal}")

    def _add_each(self, topic: str, msgs: list[Message],
                  route: tuple[Table, Any, tuple[Any, ...], list[Any] | None]) -> None:
        """Decode ``msgs`` (one topic) one by one into the batch's row tuples."""
        table, decode_row, extra, _ = route
        add = self.batch.add_values
        for msg in msgs:
            partition, offset, value = msg.partition(), msg.offset(), msg.value()
            try:
                if value is None:
                    raise DecodeError("empty value (tombstone)")
                values = decode_row(value)
            except DecodeError as exc:
                self._add_poison(topic, partition, offset, value, exc.reason,  # type: ignore[arg-type]
                                 msg.timestamp()[1])
                continue
            except RegistryUnavailable:
                out = self._decode_retrying(decode_row, value)  # type: ignore[arg-type]
                if isinstance(out, DecodeError):
                    self._add_poison(topic, partition, offset, value, out.reason,  # type: ignore[arg-type]
                                     msg.timestamp()[1])
                    continue
                values = out
            add(table.name, values + extra if extra else values, topic, partition, offset)  # type: ignore[arg-type]

    def _add_poison(self, topic: str, partition: int, offset: int, value: bytes | None, reason: str,
                    timestamp_ms: int) -> None:
        """A rejected_events row (stage ``sink``) for a message the sink cannot decode."""
        self.batch.add("rejected_events", poison_row(topic, partition, offset, value, reason, timestamp_ms,
                                                     self.version), topic, partition, offset)

    def _decode_retrying(self, decode_row: Any, value: bytes) -> tuple[Any, ...] | DecodeError:
        """Decode through a registry outage (an outage is not poison: wait for the registry)."""
        delay = 0.1
        while True:
            try:
                return decode_row(value)
            except DecodeError as exc:
                return exc
            except RegistryUnavailable as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(5.0, delay * 2)

    def flush(self, wait: bool = True) -> None:
        """Hand the batch to the landing thread; with ``wait``, return once everything handed
        over is in ClickHouse and its offsets are committed to Kafka.

        Without ``wait`` (the consume loop) this returns at once unless a batch is already
        queued behind the one being written: consuming the next batch overlaps writing this
        one, and at most three batches are in memory (writing, queued, filling).
        """
        batch, self.batch = self.batch, Batch()
        self._check_landing()
        if batch.size:
            self._start_landing()
            self._pending.put(batch)
        if wait:
            self._pending.join()
            self._check_landing()
        self._commit_landed()

    def _start_landing(self) -> None:
        if self._landing is None:
            self._landing = threading.Thread(target=self._land, name="kappa-sink-landing", daemon=True)
            self._landing.start()

    def _land(self) -> None:
        """The landing thread: write each handed-over batch, in order, then queue its offsets."""
        assert self.writer is not None
        while True:
            batch = self._pending.get()
            try:
                if batch is None:
                    return
                if self._landing_error is None:
                    self.writer.write(batch)
                    self.writer.checkpoint("before_commit")
                    self.landed_rows += batch.size
                    self._landed.put([TopicPartition(t, p, o) for (t, p), o in batch.next_offsets().items()])
            except BaseException as exc:  # re-raised on the consuming thread
                self._landing_error = exc
                self.stop_event.set()
            finally:
                self._pending.task_done()

    def _check_landing(self) -> None:
        """Raise on the consuming thread what failed on the landing thread (nothing committed)."""
        if self._landing_error is not None:
            raise self._landing_error

    def _commit_landed(self) -> None:
        """Commit the offsets of every batch landed since the last call (one commit)."""
        offsets: dict[tuple[str, int], int] = {}
        while not self._landed.empty():
            for tp in self._landed.get_nowait():
                offsets[(tp.topic, tp.partition)] = tp.offset
        if offsets and self.consumer is not None:
            self._commit([TopicPartition(t, p, o) for (t, p), o in offsets.items()])

    def _commit(self, offsets: list[TopicPartition]) -> None:
        assert self.consumer is not None
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # safe: the offsets are in ClickHouse with the data
            log.warning("Kafka commit failed (%s); ClickHouse holds the offsets", exc)
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and _is_fatal(err):
                self._fatal = err

    # -- rebalance and backpressure --------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self.writer is not None
        stored = self.writer.stored_offsets()
        resume = []
        for tp in partitions:
            if (tp.topic, tp.partition) in stored:
                tp.offset = stored[(tp.topic, tp.partition)]
                resume.append(TopicPartition(tp.topic, tp.partition, tp.offset))
        log.info("assigned %s", [(tp.topic, tp.partition, tp.offset) for tp in partitions])
        consumer.assign(partitions)
        # A crash after the ClickHouse write but before the Kafka commit leaves Kafka behind;
        # catch it up, else a partition with no new messages would look undrained forever.
        self._catch_up = resume

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.flush(wait=True)

    def _pause(self) -> None:
        """Landing failed: stop fetching (applied by the consuming thread, which owns the consumer)."""
        self._want_paused = True

    def _resume(self) -> None:
        self._want_paused = False

    def _apply_pause(self) -> None:
        """Pause or resume the assignment when the landing thread asked for it."""
        if self._want_paused == self._paused or self.consumer is None:
            return
        try:
            if self._want_paused:
                self.consumer.pause(self.consumer.assignment())
            else:
                self.consumer.resume(self.consumer.assignment())
            self._paused = self._want_paused
        except KafkaException:
            pass

    def _giving_up(self) -> bool:
        """During shutdown, stop retrying after 30 s: nothing was committed, nothing is lost."""
        if not self.stop_event.is_set():
            self._stop_seen: float | None = None
            return False
        if getattr(self, "_stop_seen", None) is None:
            self._stop_seen = time.monotonic()
        assert self._stop_seen is not None
        return time.monotonic() - self._stop_seen > 30
