"""Where a ClickHouse batch gets written: one idempotent insert per table, then the offsets.

Order of writes for one batch: every data table (each insert carries
``insert_deduplication_token = <table>:<digest of the batch's offset ranges>``), then the
next offsets into ``<db>.sink_offsets``. Kafka offsets are committed by the caller only
after :meth:`Writer.write` returns. A crash anywhere in between re-delivers the batch on
restart (from the offsets in ClickHouse); the engine drops an identical re-sent insert, and
rows re-sent in a differently cut batch replace their earlier copy by key (the tables are
ReplacingMergeTree and the views read FINAL). A failing insert is retried with backoff
until it succeeds: nothing is skipped, and the caller pauses consumption meanwhile.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from kappa import metrics
from kappa.errors import SinkError
from schemas.serde import DecodeError
from sinks.base import Backend
from sinks.bulk import BulkAvro
from sinks.migrate import database
from sinks.rows import TABLES, poison_row

__all__ = ["Batch", "CrashPoint", "Writer"]

log = logging.getLogger("kappa.sink")


@dataclass
class Batch:
    """Rows per table plus the (first, last) offset consumed per topic partition.

    A row is a tuple: the table's :attr:`~sinks.rows.Table.fields` then
    ``(kafka_topic, kafka_partition, kafka_offset)`` (see :meth:`sinks.rows.Table.arrow_rows`).
    """

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    bulk: dict[str, BulkAvro] = field(default_factory=dict)
    """Raw messages per table for one bulk decode at flush (:mod:`sinks.bulk`)."""
    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    size: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, table: str, row: dict[str, Any], topic: str, partition: int, offset: int) -> None:
        """Add one message's row given as a dict (missing columns are null)."""
        self.add_values(table, tuple(row.get(f) for f in TABLES[table].fields), topic, partition, offset)

    def add_values(self, table: str, values: tuple[Any, ...], topic: str, partition: int,
                   offset: int) -> None:
        """Add one message's values (in the table's field order); offsets arrive in order."""
        if self.size == 0:
            self.started = time.monotonic()
        rows = self.rows.get(table)
        if rows is None:
            rows = self.rows[table] = []
        rows.append((*values, topic, partition, offset))
        key = (topic, partition)
        r = self.ranges.get(key)
        self.ranges[key] = (offset if r is None else r[0], offset)
        self.size += 1

    def add_raw_many(self, table: str, topic: str, schema: dict[str, Any], header: bytes,
                     decode_row: Callable[[bytes], tuple[Any, ...]], values: list[bytes],
                     partitions: list[int], offsets: list[int], timestamps: list[int]) -> bool:
        """Queue messages of one topic, each framed with ``header``, for the bulk insert of
        ``table``; False (nothing queued) when that table's bulk holds another topic or schema."""
        bulk = self.bulk.get(table)
        if bulk is None:
            bulk = self.bulk[table] = BulkAvro(topic, schema, header, decode_row)
        elif bulk.topic != topic or bulk.schema is not schema or bulk.header != header:
            return False
        if self.size == 0:
            self.started = time.monotonic()
        bulk.extend(values, partitions, offsets, timestamps)
        # offsets of a partition arrive in order: its first and last are the range
        ranges, last = self.ranges, dict(zip(partitions, offsets, strict=True))
        for p, first in dict(zip(reversed(partitions), reversed(offsets), strict=True)).items():
            r = ranges.get((topic, p))
            ranges[(topic, p)] = (first if r is None else r[0], last[p])
        self.size += len(values)
        return True

    def digest(self) -> str:
        """Deterministic id of the offset ranges in this batch.

        >>> b = Batch(); b.add("orders", {}, "t", 0, 5); b.add("orders", {}, "t", 0, 6)
        >>> b.digest() == Batch(ranges={("t", 0): (5, 6)}).digest()
        True
        """
        text = ";".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(self.ranges.items()))
        return hashlib.sha1(text.encode()).hexdigest()

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """Offset to resume from, per topic partition."""
        return {k: last + 1 for k, (_, last) in self.ranges.items()}


def _offsets_table(next_offsets: dict[tuple[str, int], int], now_ms: int) -> pa.Table:
    """The ``sink_offsets`` rows of a batch (``from_arrays``: ``from_pylist`` would need pandas)."""
    nxt = sorted(next_offsets.items())
    schema = TABLES["sink_offsets"].arrow_schema
    return pa.Table.from_arrays([
        pa.array([t for (t, _), _ in nxt], schema[0].type), pa.array([p for (_, p), _ in nxt], schema[1].type),
        pa.array([o for _, o in nxt], schema[2].type), pa.repeat(pa.scalar(now_ms, schema[3].type), len(nxt)),
    ], schema=schema)


@dataclass(frozen=True)
class CrashPoint:
    """Test hook ``KAPPA_SINK_CRASH_AT=<point>:<n>``: SIGKILL at ``point`` of batch ``n``.

    >>> CrashPoint.parse("before_commit:3")
    CrashPoint(point='before_commit', batch=3)
    >>> CrashPoint.parse("")
    """

    point: str
    batch: int

    POINTS = ("mid_batch", "before_offsets", "before_commit")

    @classmethod
    def parse(cls, spec: str) -> CrashPoint | None:
        if not spec:
            return None
        point, _, n = spec.partition(":")
        if point not in cls.POINTS:
            raise SinkError(f"KAPPA_SINK_CRASH_AT={spec!r}: point must be one of {', '.join(cls.POINTS)}")
        return cls(point, int(n or 1))


class Writer:
    """Writes batches of version ``version`` into ``backend`` exactly once (see module doc)."""

    def __init__(self, backend: Backend, version: str, crash: CrashPoint | None = None,
                 on_failure: Callable[[], None] = lambda: None,
                 on_recover: Callable[[], None] = lambda: None,
                 give_up: Callable[[], bool] = lambda: False,
                 max_backoff: float = 5.0) -> None:
        self.backend = backend
        self.version = version
        self.db = database(version)
        self.crash = crash
        self.on_failure = on_failure
        self.on_recover = on_recover
        self.give_up = give_up
        self.max_backoff = max_backoff
        self.batches = 0
        self.failures = 0
        # pyarrow imports pandas on its first array (~0.5 s here): pay it now, not in the first batch
        _offsets_table({}, 0)

    def checkpoint(self, point: str) -> None:
        """Die here when the crash hook names this point of the current batch."""
        if self.crash and self.crash.point == point and self.crash.batch == self.batches:
            log.warning("crash hook: SIGKILL at %s of batch %d", point, self.batches)
            os.kill(os.getpid(), signal.SIGKILL)

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        """Next offset per topic partition, as stored with the data."""
        rows = self._retry("sink_offsets", lambda: self.backend.rows(
            f"SELECT topic, partition, max(next_offset) FROM {self.db}.sink_offsets "
            "GROUP BY topic, partition"))
        return {(t, int(p)): int(o) for t, p, o in rows}

    def write(self, batch: Batch) -> None:
        """Insert every table of ``batch``, then its next offsets; retried until done."""
        if not batch.size:
            return
        self.batches += 1
        digest = batch.digest()
        now_ms = int(time.time() * 1000)
        first = True
        for name, bulk in sorted(batch.bulk.items()):
            t0 = time.perf_counter()
            if self._retry(name, functools.partial(bulk.insert, self.backend, TABLES[name], f"{self.db}.{name}",
                                                   f"{self.version}:{name}:{digest}:bulk", now_ms)):
                self._observe(name, len(bulk), time.perf_counter() - t0,
                              lambda b=bulk, n=name: self._event_time(n, b))  # type: ignore[misc]
                if first:
                    first = False
                    self.checkpoint("mid_batch")
            else:
                log.info("bulk insert of %d %s messages refused; decoding them one by one", len(bulk), name)
                self._one_by_one(batch, name, bulk)
        batch.bulk.clear()
        for name, rows in sorted(batch.rows.items()):
            if not rows:
                continue
            table = TABLES[name]
            data = table.arrow_rows(rows, now_ms)
            t0 = time.perf_counter()
            self._retry(name, functools.partial(self.backend.insert_arrow, f"{self.db}.{name}", data,
                                                f"{self.version}:{name}:{digest}"))
            col = data.column(table.event_time) if table.event_time else None
            self._observe(name, data.num_rows, time.perf_counter() - t0,
                          lambda c=col: None if c is None else c[-1].value)  # type: ignore[misc]
            if first:
                first = False
                self.checkpoint("mid_batch")
        self.checkpoint("before_offsets")
        offsets = _offsets_table(batch.next_offsets(), now_ms)
        self._retry("sink_offsets", lambda: self.backend.insert_arrow(
            f"{self.db}.sink_offsets", offsets, f"{self.version}:offsets:{digest}"))

    @staticmethod
    def _observe(name: str, rows: int, seconds: float, last_event_time: Callable[[], int | None]) -> None:
        metrics.SINK_BATCH_SECONDS.labels(name).observe(seconds)
        metrics.SINK_BATCH_ROWS.labels(name).observe(rows)
        metrics.SINK_ROWS.labels(name).inc(rows)
        if TABLES[name].event_time:
            last = last_event_time()
            if last is not None:
                metrics.EVENT_LAG_SECONDS.labels(name).observe(max(0.0, time.time() - last / 1000))

    @staticmethod
    def _event_time(name: str, bulk: BulkAvro) -> int | None:
        """Event time of the bulk's last message (one per-message decode per batch)."""
        table = TABLES[name]
        if not table.event_time or not bulk.values:
            return None
        try:
            value = bulk.decode_row(bulk.values[-1])[table.fields.index(table.event_time)]
        except DecodeError:
            return None
        return value if isinstance(value, int) else None

    def _one_by_one(self, batch: Batch, name: str, bulk: BulkAvro) -> None:
        """The per-message path of a refused bulk: rows, and poison rows for what cannot decode."""
        rows = batch.rows.setdefault(name, [])
        for value, partition, offset, ts in zip(bulk.values, bulk.partitions, bulk.offsets,
                                                bulk.timestamps, strict=True):
            try:
                values = bulk.decode_row(value)
            except DecodeError as exc:
                row = poison_row(bulk.topic, partition, offset, value, exc.reason, ts, self.version)
                batch.rows.setdefault("rejected_events", []).append(  # already counted in the batch
                    (*(row[f] for f in TABLES["rejected_events"].fields), bulk.topic, partition, offset))
            else:
                rows.append((*values, bulk.topic, partition, offset))

    def _retry(self, table: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` until it succeeds: backoff 0.1 s doubling to ``max_backoff``."""
        delay, failed = 0.1, False
        while True:
            try:
                out = fn()
            except SinkError as exc:
                self.failures += 1
                metrics.SINK_INSERT_FAILURES.labels(table).inc()
                if not failed:
                    failed = True
                    self.on_failure()
                if self.give_up():
                    raise
                log.warning("ClickHouse write to %s failed (%s); retrying in %.1fs", table, exc, delay)
                time.sleep(delay)
                delay = min(self.max_backoff, delay * 2)
                continue
            if failed:
                log.warning("ClickHouse write to %s recovered", table)
                self.on_recover()
            return out
