"""Direct reads of an input partition: the ``users`` catch-up, so the orders-users join does not
depend on timing, and the orders Faust skipped.

Faust consumes ``users`` and ``orders`` in one stream, but how far each topic's fetches run
ahead of the other is a matter of timing: on a replay the orders of a partition can arrive
before the user records published long before them. Before it enriches the orders of
partition ``p``, the order stage therefore reads ``users`` partition ``p`` up to its current
end offset (only what it has not applied yet). Every user record published before an order
is then applied before that order is joined — on a live run and on a replay alike.

The same reader fills holes in the orders: around a rebalance Faust can deliver a partition's
records with offsets missing (a record fetched before the rebalance counts as read, or a gap is
taken for compaction) and then commit past them. The order stage knows the last offset it
applied per partition, so it reads any missing offsets itself before going on.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kappa.kafka import client_config
from kappa.metrics import SKIPPED_REFETCHED
from kappa.settings import Settings
from stream_processors.base import Message

__all__ = ["fill_gaps", "partition_reader"]

log = logging.getLogger(__name__)


def partition_reader(settings: Settings, bootstrap: str, topic: str,
                     stall_s: float = 30.0) -> Callable[..., list[Message]]:
    """``fetch(partition, from_offset[, until])`` -> the records of ``topic`` from there to its
    end now (or to offset ``until``, exclusive). A read that gets no record for ``stall_s``
    re-reads the partition's end, and after ``4 * stall_s`` raises (the worker exits loudly and
    is restarted, instead of hanging: a broker restart the consumer does not recover from).

    Also used for the orders: Faust can skip records around a rebalance, and the order stage
    reads the offsets it did not get (:meth:`~stream_processors.stream.StreamStage.process`).
    """
    consumer = Consumer(client_config(settings, bootstrap, **{
        "group.id": f"kappa-catchup-{uuid.uuid4().hex[:8]}",  # never commits: assign() only
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        # it reads up to an end it knows, never waits for new records: with the default 500 ms
        # the fetch still waiting at the broker for the previous read's partition held every
        # next read ~0.5 s (a users catch-up per batch: 16 -> 6k orders/s, benchmarks/scaling.py)
        "fetch.wait.max.ms": 10,
    }))

    def watermarks(partition: int) -> tuple[int, int]:
        # A broker restart must not kill the worker: wait for the broker like the Faust consumer does.
        deadline = time.monotonic() + 600
        while True:
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10,
                                                           cached=False)
                return int(low), int(high)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def fetch(partition: int, start: int, until: int | None = None) -> list[Message]:
        low, high = watermarks(partition)
        start, high = max(start, low), high if until is None else min(high, until)
        if start >= high:
            return []
        consumer.assign([TopicPartition(topic, partition, start)])
        out: list[Message] = []
        progress = time.monotonic()
        try:
            while True:
                done = False
                # consume() returns once it holds num_messages or after its timeout, and the
                # end-of-partition event does not end it early: asking for 5000 records with a
                # 1 s timeout cost a second per read of a partition with fewer records left (the
                # users catch-up, when Faust delivers a partition's orders before its users).
                # At most what is left, in short waits.
                got = consumer.consume(num_messages=max(1, min(5000, high - start - len(out))), timeout=0.1)
                for m in got:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done = True
                            continue
                        raise RuntimeError(f"reading {topic}[{partition}] from offset {start}: {err}")
                    offset = int(m.offset() or 0)
                    if start <= offset < high:
                        ts_type, ts_ms = m.timestamp()
                        out.append(Message(topic, partition, offset, m.key(), m.value(),
                                           ts_ms / 1000.0 if ts_type and ts_ms >= 0 else None))
                    done = done or offset >= high - 1
                if done:
                    return out
                if got:
                    progress = time.monotonic()
                    continue
                # Nothing came: the last offsets of the range may hold no record (compacted away,
                # a control record), which no record and not always an end-of-partition event
                # report — the consumer's position does. Or the partition's leader moved (a broker
                # restart): wait, re-reading the end, and fail loudly rather than hang the worker
                # (its supervisor restarts it; the reads are repeated from the stored offsets).
                pos = consumer.position([TopicPartition(topic, partition)])[0].offset
                if pos >= high:
                    return out
                waited = time.monotonic() - progress
                if waited > stall_s:
                    low, end = watermarks(partition)
                    if end < high:  # a new leader's end, behind the one read before: read to it
                        log.warning("%s[%d]: end offset %d, was %d when the read began; reading to it",
                                    topic, partition, end, high)
                        high = max(start, end)
                        if pos >= high:
                            return out
                    if waited > 4 * stall_s:
                        raise RuntimeError(
                            f"reading {topic}[{partition}] offsets {start}..{high - 1} from {bootstrap}: "
                            f"no record for {waited:.0f}s at position {pos} (end {end}); giving up")
        finally:
            consumer.unassign()

    return fetch


def fill_gaps(ms: list[Message], applied: int | None, read: Callable[..., list[Message]],
              what: str) -> list[Message]:
    """``ms`` (one partition, sorted) with the offsets after ``applied`` (the last one applied;
    None or < 0: nothing yet, a replay may start anywhere) up to the batch's last that Faust did
    not deliver, read from Kafka with ``read(partition, start, until)``. Offsets are contiguous
    in these topics (idempotent, non-transactional producers): a hole means Faust dropped records
    it will never deliver again. Counted in ``kappa_processor_skipped_refetched_total``."""
    if applied is None or applied < 0:
        return ms
    lo, hi = applied + 1, ms[-1].offset
    fresh = {m.offset for m in ms if m.offset >= lo}
    if hi < lo or len(fresh) == hi - lo + 1:
        return ms
    p = ms[-1].partition
    got = read(p, lo, hi + 1)
    log.warning("%s[%d]: %d of offsets %d..%d missing from the batch; read them from Kafka",
                what, p, hi - lo + 1 - len(fresh), lo, hi)
    if got:
        SKIPPED_REFETCHED.labels(got[0].topic).inc(len({m.offset for m in got} - fresh))
    return [m for m in ms if m.offset < lo] + got
