"""``kill -USR1 <worker pid>``: the worker's consumer state in its log, beside mode's task dump.

mode's worker answers SIGUSR1 with every thread's and asyncio task's stack (``logging.cry``);
for a worker that looks idle with records waiting, :func:`report` adds what Faust's consumer
thinks: rebalancing, flow suspended, partitions paused or buffered, records unacked, and per
partition the read, committed and end offsets. Read-only; the handler runs on the event loop's
thread between two callbacks, so it sees a consistent state.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import faust

__all__ = ["Worker", "report"]

log = logging.getLogger(__name__)


def report(app: Any) -> str:
    """The consumer state of ``app`` (a Faust app), as text."""
    out = io.StringIO()
    consumer = app.consumer
    out.write(f"rebalancing={app.rebalancing} flow_active={consumer.flow_active} "
              f"generation={app.consumer_generation_id} unacked={len(consumer._unacked_messages)}\n")
    active = consumer._get_active_partitions()
    for tp in sorted(consumer.assignment()):
        try:
            end = consumer.highwater(tp)
        except AssertionError:
            end = None
        state = ("paused" if tp in consumer._paused_partitions else
                 "buffered" if tp in consumer._buffered_partitions else
                 "active" if tp in active else "inactive")
        out.write(f"  {tp.topic}[{tp.partition}] {state} read={consumer._read_offset.get(tp)} "
                  f"committed={consumer._committed_offset.get(tp)} end={end}\n")
    return out.getvalue()


class Worker(faust.Worker):
    """Faust's worker, whose SIGUSR1 dump also logs :func:`report` (at WARNING)."""

    def _on_sigusr1(self) -> None:
        try:
            log.warning("consumer state on SIGUSR1:\n%s", report(self.app))
        except Exception:  # a diagnostic must never kill the worker
            log.exception("consumer state on SIGUSR1 failed")
        super()._on_sigusr1()
