"""Re-reading a partition whose records Faust fetched and never delivered.

faust-streaming 0.15.3 (with aiokafka 0.14) sometimes loses the records of a fetch: the
consumer's position moves past them, yet they never reach the streams. Seen in a steady state,
with no rebalance: a 2-worker ``benchmarks/freshness.py`` warm-up landed 159 of 200 orders;
``orders[0]`` stayed committed at 57 with its end at 100 for minutes, and the worker log said
nothing. When a later record of the partition arrives, the stages notice the hole and read it
themselves (:func:`~stream_processors.dimensions.fill_gaps`); when none arrives — the end of a
backfill, a quiet stream — nothing would ever move the partition again, and ``kappa run
--until-drained`` would wait for its lag forever.

:class:`StallWatch` runs on the worker's event loop (a Faust timer). A source partition is
*stalled* when, for ``stall_s`` seconds, the flow is active, the partition is assigned and
not paused, its committed offset has not moved, Kafka holds records from that offset on, Faust
has not handed the streams the last of them (its read offset is behind the end) and none of
its records is in a batch (none unacked). Then the watch seeks the
partition back to its committed offset: Faust fetches and delivers those records again through
its normal path (acks, commits). A false alarm only costs a re-read: the stages drop offsets
they have already applied, and Faust's read offset drops records it has already delivered.
Counted in ``kappa_processor_stalls_reread_total`` with a warning in the worker log.

:func:`~stream_processors.faust_internals.inject_dropped_fetch` reproduces the fault on purpose
(tests, ``KAPPA_PROCESSOR_DROP_FETCH``): the worker drops the records of the first fetch that
holds any of one partition, as Faust does. The consumer's state is read through
:class:`~stream_processors.faust_internals.ConsumerView` (Faust keeps it private).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kappa.metrics import STALLS_REREAD
from stream_processors.faust_internals import ConsumerView

__all__ = ["STALL_S", "StallWatch"]

log = logging.getLogger(__name__)

STALL_S = 5.0
"""Seconds a partition must look stalled before it is read again."""


@dataclass
class StallWatch:
    """Watches the source partitions of ``topics`` in ``app``'s consumer; :meth:`tick` each second."""

    app: Any
    topics: set[str]
    stall_s: float = STALL_S
    clock: Callable[[], float] = time.monotonic
    _since: dict[Any, tuple[int | None, float]] = field(default_factory=dict)
    """Per partition: the committed offset seen stalled, and since when."""

    def stalled(self) -> list[tuple[Any, int]]:
        """Partitions stalled for ``stall_s`` now, with the offset to read them from again."""
        app, consumer = self.app, self.app.consumer
        if app.rebalancing or not consumer.flow_active:
            self._since.clear()
            return []
        now = self.clock()
        view = ConsumerView(consumer)
        active, buffered = view.active(), view.buffered()
        candidates: dict[Any, int | None] = {}
        for tp in consumer.assignment():
            if tp.topic not in self.topics or tp not in active or tp in buffered:
                continue
            committed = view.committed(tp)
            end = view.end(tp)  # None: unassigned meanwhile
            read = view.read(tp)  # the last record Faust handed to the streams
            if end is not None and end > (committed or 0) and (read is None or read + 1 < end):
                candidates[tp] = committed
        if candidates:  # records in the streams or in a batch: not stalled, only busy
            for tp in view.unacked():
                candidates.pop(tp, None)
        due: list[tuple[Any, int]] = []
        for tp, committed in candidates.items():
            seen = self._since.get(tp)
            if seen is None or seen[0] != committed:
                self._since[tp] = (committed, now)
            elif now - seen[1] >= self.stall_s:
                due.append((tp, committed or 0))
        for tp in set(self._since) - set(candidates):
            del self._since[tp]
        return due

    async def tick(self) -> None:
        """Seek every stalled partition back to its committed offset (Faust delivers it again)."""
        due = self.stalled()
        if not due:
            return
        for tp, offset in due:
            log.warning("%s[%d]: committed at %d, records after it in Kafka, none delivered for %.0fs; "
                        "reading it again from %d", tp.topic, tp.partition, offset, self.stall_s, offset)
            STALLS_REREAD.labels(tp.topic).inc()
            del self._since[tp]
        await self.app.consumer.seek_wait(dict(due))

