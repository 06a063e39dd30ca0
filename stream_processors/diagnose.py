"""``kill -USR1 <worker pid>``: the worker's consumer state in its log, beside mode's task dump.

mode's worker answers SIGUSR1 with every thread's and asyncio task's stack (``logging.cry``);
for a worker that looks idle with records waiting, :func:`report` adds what Faust's consumer
thinks: rebalancing, flow suspended, partitions paused or buffered, records unacked, and per
partition the read, committed and end offsets (through
:class:`~stream_processors.faust_internals.ConsumerView`). Read-only; the handler runs on the
event loop's thread between two callbacks, so it sees a consistent state.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from stream_processors import faust_internals

__all__ = ["Worker", "report"]

log = logging.getLogger(__name__)


def report(app: Any) -> str:
    """The consumer state of ``app`` (a Faust app), as text."""
    out = io.StringIO()
    consumer = app.consumer
    view = faust_internals.ConsumerView(consumer)
    out.write(f"rebalancing={app.rebalancing} flow_active={consumer.flow_active} "
              f"generation={app.consumer_generation_id} unacked={view.unacked_count()}\n")
    active, paused, buffered = view.active(), view.paused(), view.buffered()
    for tp in sorted(consumer.assignment()):
        state = ("paused" if tp in paused else "buffered" if tp in buffered else
                 "active" if tp in active else "inactive")
        out.write(f"  {tp.topic}[{tp.partition}] {state} read={view.read(tp)} "
                  f"committed={view.committed(tp)} end={view.end(tp)}\n")
    return out.getvalue()


class Worker(faust_internals.Worker):
    """Faust's worker, whose SIGUSR1 dump also logs :func:`report` (at WARNING)."""

    def on_sigusr1(self) -> None:
        try:
            log.warning("consumer state on SIGUSR1:\n%s", report(self.app))
        except Exception:  # a diagnostic must never kill the worker
            log.exception("consumer state on SIGUSR1 failed")
