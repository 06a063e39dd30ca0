"""stream_processors.faust_internals.wait_first: Faust's per-message hand-off without mode's four tasks per message.

The consumer is a real mode Service with Faust's ``suspend_flow`` event; the "stream buffer"
is a real bounded asyncio queue, as in Faust, so a full buffer really suspends the callback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from stream_processors.faust_internals import MODE_WAIT_FIRST, wait_first


class FetcherLike(Service):
    """What ``wait_first`` needs of Faust's Consumer: a Service with its flow event."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()  # as in faust.transport.consumer


async def handoff(fn: Any, consumer: FetcherLike, queue: asyncio.Queue[int], item: int) -> Any:
    """Faust's call in ``Consumer._drain_messages``, with ``fn`` as the ``wait_first``."""
    async def callback() -> None:  # the conductor: put into the stream's buffer
        await queue.put(item)

    return await fn(consumer, callback(), consumer.suspend_flow.wait())


@pytest.mark.parametrize("fn", [wait_first, MODE_WAIT_FIRST], ids=["fast", "mode"])
def test_a_buffer_with_room_takes_the_record(fn: Any) -> None:
    async def main() -> tuple[Any, list[int], bool]:
        consumer, queue = FetcherLike(), asyncio.Queue[int](maxsize=10)
        other_ran = []
        asyncio.get_running_loop().call_soon(other_ran.append, 1)
        res = await handoff(fn, consumer, queue, 7)
        return res, [queue.get_nowait()], bool(other_ran)

    res, got, loop_turned = asyncio.run(main())
    assert got == [7] and res.stopped is False and res.results == [None]
    # the fast path hands the record over in place: no task, no turn of the event loop
    assert loop_turned is (fn is MODE_WAIT_FIRST)


@pytest.mark.parametrize("fn", [wait_first, MODE_WAIT_FIRST], ids=["fast", "mode"])
def test_a_full_buffer_takes_the_record_once_the_stream_reads(fn: Any) -> None:
    async def main() -> list[int]:
        consumer, queue = FetcherLike(), asyncio.Queue[int](maxsize=1)
        queue.put_nowait(1)

        async def stream() -> list[int]:
            await asyncio.sleep(0.05)
            return [queue.get_nowait()]

        reader = asyncio.ensure_future(stream())
        await handoff(fn, consumer, queue, 2)
        return [*(await reader), queue.get_nowait()]

    assert asyncio.run(main()) == [1, 2]


@pytest.mark.parametrize("fn", [wait_first, MODE_WAIT_FIRST], ids=["fast", "mode"])
def test_a_suspended_flow_abandons_a_blocked_record_and_cleans_up(fn: Any) -> None:
    async def main() -> tuple[Any, int, int]:
        consumer, queue = FetcherLike(), asyncio.Queue[int](maxsize=1)
        queue.put_nowait(1)
        asyncio.get_running_loop().call_later(0.05, consumer.suspend_flow.set)  # a rebalance
        res = await handoff(fn, consumer, queue, 2)
        await asyncio.sleep(0.01)  # let the cancellation settle
        return res, queue.qsize(), len(queue._putters)  # type: ignore[attr-defined]

    res, size, putters = asyncio.run(main())
    assert res.done == [] or res.results[0] is True  # the flow event won, not the put
    assert size == 1 and putters == 0  # the record was not put; the queue's waiter is gone


def test_a_failing_callback_raises_from_the_fast_path() -> None:
    async def main() -> None:
        consumer = FetcherLike()

        async def callback() -> None:
            raise KeyError("no stream for this partition")

        await wait_first(consumer, callback(), consumer.suspend_flow.wait())

    with pytest.raises(KeyError, match="no stream"):
        asyncio.run(main())


def test_other_calls_and_a_suspended_flow_keep_modes_method() -> None:
    async def main(fn: Any) -> list[Any]:
        consumer, queue = FetcherLike(), asyncio.Queue[int](maxsize=10)
        consumer.suspend_flow.set()  # flow stopped before the hand-off
        res = await handoff(fn, consumer, queue, 3)
        timed = await fn(consumer, asyncio.sleep(10), timeout=0.01)
        return [len(res.done), queue.qsize(), timed]

    assert asyncio.run(main(wait_first)) == asyncio.run(main(MODE_WAIT_FIRST))
    assert asyncio.run(main(wait_first))[2].stopped is True  # mode's timeout result
