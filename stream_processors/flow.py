"""Faust's per-message hand-off to the streams, without four asyncio tasks per message.

faust-streaming 0.15.3 hands every fetched record to its streams with
``await self.wait_first(callback(message), self.suspend_flow.wait())`` (``Consumer.
_drain_messages``): mode's ``Service.wait_first`` wraps the callback, the flow event, the
service's stopped and crashed events in four tasks, waits for the first, then cancels three.
The callback (the conductor putting the record into the stream buffers) almost never
suspends, yet this costs more than the whole order stage: 17 % of a worker's CPU samples at a
steady 5k orders/s (py-spy, ``benchmarks/freshness.py``).

:func:`wait_first` keeps mode's method for every call but that one, and even there only takes a
fast path when the flow is not suspended and the service neither stopped nor crashed: it runs
the callback in place. When the callback completes without suspending (the buffers have
room), that is the whole hand-off, as in Faust but for the tasks. When it suspends (a full
buffer), the suspended callback is finished by mode's ``wait_first`` against the flow event,
exactly as before: a rebalance that suspends the flow cancels it (the cancellation reaches
the callback at the point where it waits, so the buffer's waiter is cleaned up as usual).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from faust.transport.consumer import Consumer
from mode.services import WaitResults

__all__ = ["MODE_WAIT_FIRST", "install", "wait_first"]

MODE_WAIT_FIRST = Consumer.wait_first
"""mode's ``Service.wait_first`` as imported (what every other call still uses)."""


def _waits_on(coro: Any, event: Any) -> bool:
    """True when ``coro`` is ``event.wait()`` (not started yet)."""
    frame = getattr(coro, "cr_frame", None)
    return frame is not None and frame.f_locals.get("self") is event


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Finish ``coro``, which suspended on ``yielded``, driving it the way a Task would."""
    while True:
        if yielded is None:  # a bare yield (asyncio.sleep(0))
            await asyncio.sleep(0)
        else:  # a future the coroutine awaits
            yielded._asyncio_future_blocking = False
            try:
                await asyncio.wait([yielded])
            except asyncio.CancelledError as exc:
                try:  # into the coroutine, where it waits: its own cleanup runs
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value


async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> WaitResults:
    """mode's ``Service.wait_first``, with the fast path above for the per-message hand-off."""
    if (timeout is None and len(coros) == 2 and asyncio.iscoroutine(coros[0])
            and _waits_on(coros[1], self.suspend_flow)
            and not self.suspend_flow.is_set() and not self._stopped.is_set()
            and not self._crashed.is_set()):
        callback, flow = coros
        try:
            yielded = callback.send(None)
        except StopIteration as stop:
            flow.close()  # never started
            return WaitResults([callback], [stop.value], False)
        except BaseException:
            flow.close()
            raise
        return await MODE_WAIT_FIRST(self, _resume(callback, yielded), flow)
    return await MODE_WAIT_FIRST(self, *coros, timeout=timeout)


def install() -> None:
    """Use :func:`wait_first` in every Faust consumer of this process (idempotent)."""
    Consumer.wait_first = wait_first  # type: ignore[method-assign]
