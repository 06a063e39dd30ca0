"""The stream agents' source partitions read by confluent-kafka in whole fetches (``KAPPA_FAST_CONSUMER``).

Faust hands every record to the agents one at a time (a Faust message, an event, a stream
buffer hop and an ack per record): on one core that layer costs more than the stages
themselves. With this path on, a worker's Faust app stays what it is — the same agents,
subscriptions, group membership, assignor, tables (changelogs, recovery, standbys) and
commits — but the stream agents' source topics (each stream and its enrichment table) are
read by one confluent-kafka consumer thread per worker, in batches of up to
``batch_events`` records, and reach the agents' batch code
(:meth:`~stream_processors.app.Pipeline.run_batch`) through one asyncio queue per agent.

How it follows Faust (:func:`~stream_processors.faust_internals.read_outside`):

- *assignment*: Faust keeps those partitions paused and, where it would resume them (their
  tables recovered, the rebalance over), hands them to :meth:`FastSource.take`; the thread
  ``assign()``-s them (no group of its own) at the offset Faust's group committed (earliest
  when none, as Faust's ``auto_offset_reset``).
- *acks and commits*: a batch counts once its outputs and state are flushed; then its offset
  ranges go into Faust's acked offsets (:func:`~stream_processors.faust_internals.ack_range`),
  and Faust's commit loop commits them through its group member: a commit after the group
  moved on is refused by the broker (generation), never written by a stale reader.
- *revocation*: first thing in Faust's revocation, :meth:`FastSource.revoke` starts a new epoch:
  the thread unassigns, queued batches are dropped, and a batch still running finishes but is
  not acked; the app's ``on_partitions_revoked`` signal (the end of Faust's revocation) awaits
  it (:meth:`FastSource.drain`), so no batch of a revoked partition writes state or outputs
  after the revocation. What was not acked is read again by the next owner, from the
  committed offset; the stages recognise re-delivered offsets.

Records are :class:`~stream_processors.base.Message` objects built in the thread, with the
timestamp Faust would give them. Off by default; the ticks, window partials and learning
topics stay on Faust's own path either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from faust.types import TP

from kappa.kafka import ClientErrorLog, client_config
from kappa.settings import Settings
from stream_processors import faust_internals
from stream_processors.base import Message

__all__ = ["Batch", "FastSource"]

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Records of one agent from one fetch, and the offset range of each partition they cover."""

    epoch: int
    messages: list[Message]
    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    """(topic, partition) -> (first offset covered, last offset + 1): contiguous with the previous batch."""


class FastSource:
    """One confluent-kafka consumer thread feeding the agents of ``routes`` (topic -> agent)."""

    def __init__(self, app: Any, settings: Settings, bootstrap: str, group: str, routes: dict[str, str],
                 batch_events: int, batch_within: float, max_pending: int = 2) -> None:
        self.app = app
        self.routes = routes
        self.batch_events, self.batch_within = batch_events, batch_within
        self.consumer = Consumer(client_config(settings, bootstrap, **{
            "group.id": group,  # only to read the group's committed offsets: assign() only, never commits
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "queued.min.messages": 4 * batch_events,  # prefetch: a few batches, not librdkafka's 100k records
            "error_cb": ClientErrorLog(log, "fast source consumer")}))
        self.queues: dict[str, asyncio.Queue[Batch]] = {a: asyncio.Queue() for a in set(routes.values())}
        self.locks: dict[str, asyncio.Lock] = {a: asyncio.Lock() for a in self.queues}
        self.epoch = 0
        self._room = threading.Semaphore(max_pending)
        self._cond = threading.Condition()
        self._want: tuple[int, set[TP]] = (0, set())
        """(epoch, partitions) the thread should read: set on the loop, applied by the thread."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        faust_internals.read_outside(app, set(routes), self.take, self.revoke)

    # -- on the event loop ----------------------------------------------------------------
    def take(self, tps: set[TP]) -> None:
        """Faust resumes ``tps`` (recovered): read them from the group's committed offsets."""
        if self._loop is None:
            self._loop = asyncio.get_event_loop()
            self._thread = threading.Thread(target=self._run, name="kappa-fast-source", daemon=True)
            self._thread.start()
        with self._cond:
            epoch, current = self._want
            current = current if epoch == self.epoch else set()
            if current and not set(tps) <= current:
                # more partitions within one assignment: every one is read again from its
                # committed offset, in a new epoch (what was read before is not acked)
                self._new_epoch()
            self._want = (self.epoch, current | set(tps))
            self._cond.notify()
        log.info("fast source: reading %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))

    def revoke(self, tps: set[TP]) -> None:
        """Faust starts revoking: a new epoch (nothing read before it is processed or acked)."""
        with self._cond:
            self._new_epoch()
            self._want = (self.epoch, set())
            self._cond.notify()

    def _new_epoch(self) -> None:
        self.epoch += 1
        for q in self.queues.values():
            while not q.empty():
                q.get_nowait()
                self._room.release()

    async def drain(self) -> None:
        """Wait for the batch each agent may still be running (the end of a revocation)."""
        for lock in self.locks.values():
            async with lock:
                pass

    async def serve(self, agent: str, run: Callable[[list[Message]], Awaitable[None]]) -> None:
        """The agent's loop: run each batch of the current epoch, then ack it."""
        q, lock = self.queues[agent], self.locks[agent]
        consumer = self.app.consumer
        while True:
            batch = await q.get()
            self._room.release()
            if batch.epoch != self.epoch:
                continue
            async with lock:  # shared with the agent's Faust-delivered batches (ticks)
                if batch.epoch != self.epoch:  # revoked while a Faust batch ran
                    continue
                await run(batch.messages)
                if batch.epoch == self.epoch:
                    for (topic, partition), (start, end) in batch.ranges.items():
                        faust_internals.ack_range(consumer, TP(topic, partition), start, end)

    def _deliver(self, batches: list[Batch]) -> None:
        for b in batches:
            if b.epoch != self.epoch:
                self._room.release()
                continue
            agent = self.routes[b.messages[0].topic]
            self.queues[agent].put_nowait(b)

    # -- the consumer thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop_forever()
        except Exception:
            log.critical("fast source consumer failed; exiting so the supervisor restarts this worker",
                         exc_info=True)
            logging.shutdown()
            os._exit(70)

    def _loop_forever(self) -> None:
        consumer, routes = self.consumer, self.routes
        epoch, assigned = -1, set[TP]()
        nxt: dict[tuple[str, int], int] = {}
        while True:
            with self._cond:  # never held across a broker call: the event loop takes it
                want_epoch, want = self._want
                changed = (want_epoch, want) != (epoch, assigned)
                if not changed and not assigned:
                    self._cond.wait(0.5)
                    continue
            if changed:
                epoch, assigned = want_epoch, set(want)
                nxt = self._assign(assigned)
                continue
            if not self._room.acquire(timeout=0.1):
                continue
            msgs = consumer.consume(self.batch_events, self.batch_within)
            per_agent: dict[str, Batch] = {}
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("fast source consumer: %s", err)
                    continue
                topic, partition, offset = str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)
                ts_type, ts_ms = m.timestamp()
                agent = routes[topic]
                b = per_agent.get(agent)
                if b is None:
                    b = per_agent[agent] = Batch(epoch, [])
                b.messages.append(Message(topic, partition, offset, m.key(), m.value(),
                                          ts_ms / 1000.0 if ts_type else None))
                key = (topic, partition)
                r = b.ranges.get(key)
                b.ranges[key] = (nxt.get(key, offset) if r is None else r[0], offset + 1)
                nxt[key] = offset + 1
            if not per_agent:
                self._room.release()
                continue
            batches = list(per_agent.values())
            for _ in batches[1:]:  # one permit per batch queued
                self._room.acquire()
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._deliver, batches)

    def _assign(self, tps: set[TP]) -> dict[tuple[str, int], int]:
        """Assign ``tps`` at the group's committed offsets; their next offsets."""
        if not tps:
            self.consumer.unassign()
            return {}
        parts = [TopicPartition(tp.topic, tp.partition) for tp in sorted(tps)]
        committed = self.consumer.committed(parts, timeout=30)
        start = [TopicPartition(c.topic, c.partition, c.offset if c.offset >= 0 else OFFSET_BEGINNING)
                 for c in committed]
        self.consumer.assign(start)
        log.info("fast source: assigned %s", ", ".join(f"{c.topic}[{c.partition}]@{c.offset}" for c in start))
        return {(c.topic, c.partition): c.offset for c in start if c.offset >= 0}
