"""The event-loop side of :class:`stream_processors.fast_source.FastSource` on a real Faust app's
consumer (no broker: batches are delivered as the consumer thread would, the thread never starts)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from kappa.settings import Settings
from stream_processors import faust_internals as fi
from stream_processors.base import Message
from stream_processors.fast_source import Batch, FastSource


def _source(tmp_path: Path) -> tuple[faust.App, FastSource]:
    fi.install()
    app = faust.App(f"fast-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:9", store="rocksdb://",
                    datadir=str(tmp_path), web_enabled=False, autodiscover=False)
    src = FastSource(app, Settings(home=tmp_path), "127.0.0.1:9", "g", {"orders": "a", "users": "a"}, 10, 0.1)
    return app, src


def _batch(src: FastSource, p: int, start: int, end: int, epoch: int | None = None) -> Batch:
    msgs = [Message("orders", p, o, None, b"v", 1.0) for o in range(start, end)]
    return Batch(src.epoch if epoch is None else epoch, msgs, {("orders", p): (start, end)})


def test_batches_run_in_order_and_their_ranges_become_faust_commits(tmp_path: Path) -> None:
    app, src = _source(tmp_path)
    tp = TP("orders", 0)

    async def main() -> list[list[int]]:
        src._loop = asyncio.get_running_loop()  # as if taken: no thread in this test
        ran: list[list[int]] = []

        async def run(msgs: list[Message]) -> None:
            ran.append([m.offset for m in msgs])

        task = asyncio.ensure_future(src.serve("a", run))
        src._room.acquire()
        src._room.acquire()
        src._deliver([_batch(src, 0, 5, 8)])
        src._deliver([_batch(src, 0, 8, 10)])
        await asyncio.sleep(0.01)
        task.cancel()
        return ran

    ran = asyncio.run(main())
    assert ran == [[5, 6, 7], [8, 9]]
    c = app.consumer
    c._committed_offset[tp] = 5
    assert c._filter_committable_offsets([tp]) == {tp: 10}


def test_a_revocation_drops_queued_batches_and_the_running_one_is_not_acked(tmp_path: Path) -> None:
    app, src = _source(tmp_path)
    c: Any = app.consumer

    async def main() -> tuple[list[int], bool]:
        src._loop = asyncio.get_running_loop()
        started, release = asyncio.Event(), asyncio.Event()
        ran: list[int] = []

        async def run(msgs: list[Message]) -> None:
            ran.append(msgs[0].offset)
            started.set()
            await release.wait()

        task = asyncio.ensure_future(src.serve("a", run))
        src._room.acquire()
        src._deliver([_batch(src, 0, 0, 3)])
        await started.wait()
        src._room.acquire()
        src._deliver([_batch(src, 0, 3, 6)])  # queued behind the running one
        src.revoke({TP("orders", 0)})
        drained = asyncio.ensure_future(src.drain())
        await asyncio.sleep(0.01)
        waited = not drained.done()  # the revocation waits for the running batch
        release.set()
        await drained
        src._room.acquire()
        src._deliver([_batch(src, 0, 3, 6, epoch=src.epoch - 1)])  # fetched before the revocation
        await asyncio.sleep(0.01)
        task.cancel()
        return ran, waited

    ran, waited = asyncio.run(main())
    assert ran == [0] and waited
    assert not c._acked.get(TP("orders", 0))
    assert src._room.acquire(blocking=False) and src._room.acquire(blocking=False)  # every permit back ...
    assert not src._room.acquire(blocking=False)  # ... and no more


def test_more_partitions_within_one_assignment_start_a_new_epoch(tmp_path: Path) -> None:
    _, src = _source(tmp_path)
    src._loop = asyncio.new_event_loop()
    try:
        src.take({TP("orders", 0)})
        first = src.epoch
        src.take({TP("orders", 0)})  # the same partitions again (a second resume): nothing changes
        assert src.epoch == first and src._want == (first, {TP("orders", 0)})
        src.take({TP("users", 0)})
        assert src.epoch == first + 1 and src._want == (first + 1, {TP("orders", 0), TP("users", 0)})
        src.revoke({TP("orders", 0), TP("users", 0)})
        assert src._want == (first + 2, set())
    finally:
        src._loop.close()
