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
from sinks.base import Backend
from sinks.bulk import BulkAvro
from sinks.migrate import database
from sinks.rows import TABLES

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
    arrow: dict[str, pa.Table] = field(default_factory=dict)
    """Rows per table already in Arrow (bulk-decoded), inserted with :attr:`rows`."""
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

    def add_raw(self, table: str, topic: str, schema: dict[str, Any], value: bytes, partition: int,
                offset: int, timestamp_ms: int) -> bool:
        """Queue one message for the bulk decode of ``table``; False when it must go per message."""
        bulk = self.bulk.get(table)
        if bulk is None:
            bulk = self.bulk[table] = BulkAvro(topic, schema)
        elif bulk.topic != topic or bulk.schema is not schema:
            return False
        if self.size == 0:
            self.started = time.monotonic()
        bulk.add(value, partition, offset, timestamp_ms)
        key = (topic, partition)
        r = self.ranges.get(key)
        self.ranges[key] = (offset if r is None else r[0], offset)
        self.size += 1
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
        if batch.bulk:  # their offsets are in the batch: writing without them would lose them
            raise SinkError("batch still holds raw messages; decode them first (SinkService._decode_bulk)")
        self.batches += 1
        digest = batch.digest()
        now_ms = int(time.time() * 1000)
        for i, name in enumerate(sorted(set(batch.rows) | set(batch.arrow))):
            table = TABLES[name]
            parts = [table.arrow_rows(batch.rows[name], now_ms)] if batch.rows.get(name) else []
            if name in batch.arrow:
                parts.append(batch.arrow[name])
            if not parts:
                continue
            data = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
            t0 = time.perf_counter()
            self._retry(name, functools.partial(self.backend.insert_arrow, f"{self.db}.{name}", data,
                                                f"{self.version}:{name}:{digest}"))
            metrics.SINK_BATCH_SECONDS.labels(name).observe(time.perf_counter() - t0)
            metrics.SINK_BATCH_ROWS.labels(name).observe(data.num_rows)
            metrics.SINK_ROWS.labels(name).inc(data.num_rows)
            if table.event_time:
                last = data.column(table.event_time)[-1].value
                if last is not None:
                    metrics.EVENT_LAG_SECONDS.labels(name).observe(max(0.0, time.time() - last / 1000))
            if i == 0:
                self.checkpoint("mid_batch")
        self.checkpoint("before_offsets")
        offsets = TABLES["sink_offsets"].arrow([
            {"topic": t, "partition": p, "next_offset": o, "updated_at": now_ms}
            for (t, p), o in sorted(batch.next_offsets().items())
        ])
        self._retry("sink_offsets", lambda: self.backend.insert_arrow(
            f"{self.db}.sink_offsets", offsets, f"{self.version}:offsets:{digest}"))

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
