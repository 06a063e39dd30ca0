"""Every use of faust-streaming, mode and aiokafka internals, and the versions it was written for.

Kappa patches or reads private parts of Faust's consumer, tables and worker. Those parts change
without notice between releases, so they live here only, next to :data:`SUPPORTED`:
:func:`install` (called when a worker's app is built) refuses any other installed version in one
line, and ``tests/unit/test_faust_internals.py`` checks every attribute and method used here on
real Faust, mode and aiokafka objects. Moving to a new release means: change the pins in
``pyproject.toml`` and :data:`SUPPORTED`, run those contract tests, and fix what they name.

What is used, and why:

- **Committable offset** (:func:`new_offset` replaces ``Consumer._new_offset``). faust-streaming
  commits, per partition, the end of the first run of consecutive offsets in
  ``Consumer._acked[tp]`` (acked offsets plus the "gaps" it registers when fetched offsets
  jump). After a seek (a restart, a rebalance) a registered gap can cover offsets that are then
  delivered and acked again, so the list holds duplicates (``[100, 101, 101, 102, 102, ...]``)
  and every run stops at one: the committed offset then moves one offset per commit while the
  records were processed long ago (robinhood/faust#559 and #625, faust-streaming/faust#606).
  :func:`new_offset` is Faust's method with two changes: the acked offsets are deduplicated
  before the run is taken, and a gap only counts up to the highest acked offset (never past a
  record still being processed). Faust's tolerance of one missing offset at the head, which a
  compacted ``users`` topic needs, is kept. Results do not depend on it (offsets only move
  forward, after a batch's outputs are flushed), only how far back a restart re-reads.
- **Per-message hand-off** (:func:`wait_first` replaces ``Consumer.wait_first``, which is mode's
  ``Service.wait_first``). ``Consumer._drain_messages`` hands every record to the streams with
  ``await self.wait_first(callback(message), self.suspend_flow.wait())``: mode wraps the
  callback, the flow event and the service's stopped and crashed events in four tasks, waits
  for the first and cancels three — 17 % of a worker's CPU at 5k orders/s, though the callback
  almost never suspends. :func:`wait_first` keeps mode's method for every other call, and for
  this one runs the callback in place when the flow is not suspended and the service neither
  stopped nor crashed. When the callback suspends (a full stream buffer) it is finished by
  mode's ``wait_first`` against the flow event, exactly as before: a rebalance that suspends
  the flow cancels it where it waits, so the buffer's waiter is cleaned up as usual.
- **Consumer bookkeeping, read only** (:class:`ConsumerView`): the read, committed and end
  offsets, active, paused and buffered partitions and unacked records, for
  :class:`~stream_processors.stalls.StallWatch` and the SIGUSR1 report
  (:mod:`stream_processors.diagnose`).
- **Table stores** (:func:`partition_db`): the RocksDB (rocksdict) database of a table
  partition, which :class:`~stream_processors.io.TableState` writes in bulk.
- **Worker signal** (:class:`Worker`): a hook on mode's SIGUSR1 handler (its task dump).
- **Sensor hooks** (:class:`LeanMonitor`): Faust's Monitor without its per-message hooks.
- **Partitions read outside Faust** (:func:`read_outside`, :func:`ack_range`; the
  ``KAPPA_FAST_CONSUMER`` path, :mod:`stream_processors.fast_source`): ``Consumer.resume_partitions``
  is Faust's method except that the source partitions of an app registered with
  :func:`read_outside` stay paused in Faust and are handed to that app's taker instead. Faust
  resumes a partition only once its tables are recovered and the rebalance is over
  (``Recovery._resume_streams``), so that is the moment the partition may be read. What such a
  reader has processed is acked by appending the offset range to ``Consumer._acked[tp]``:
  Faust's own commit loop (and its commit inside a revocation) then commits it through the
  group member, with its generation, as for the records Faust delivers itself.
- **Fault injection** (:func:`inject_dropped_fetch`, tests only): drops one fetch in
  ``ThreadDelegateConsumer._getmany``, as faust-streaming sometimes does.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import faust
from faust.sensors import Monitor, Sensor
from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.transport.drivers import aiokafka as _driver
from faust.types import TP
from faust.utils.functional import consecutive_numbers
from mode.services import WaitResults

from kappa.errors import ConfigError, UnsupportedDependency

__all__ = [
    "FAUST_NEW_OFFSET",
    "FAUST_RESUME_PARTITIONS",
    "FAUST_SETTINGS_EXTRA",
    "MODE_WAIT_FIRST",
    "SUPPORTED",
    "ConsumerView",
    "LeanMonitor",
    "Worker",
    "ack_range",
    "check_versions",
    "inject_dropped_fetch",
    "install",
    "new_offset",
    "partition_db",
    "producer_settings_extra",
    "read_outside",
    "resume_partitions",
    "wait_first",
]

log = logging.getLogger(__name__)

SUPPORTED: dict[str, str] = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}
"""Distribution -> the exact version this module was written and contract-tested against
(pinned in ``pyproject.toml``)."""

FAUST_NEW_OFFSET = Consumer._new_offset
"""Faust's own ``Consumer._new_offset``, as imported (tests compare with it)."""
MODE_WAIT_FIRST = Consumer.wait_first
"""mode's ``Service.wait_first`` as imported (what every other call still uses)."""
FAUST_RESUME_PARTITIONS = Consumer.resume_partitions
"""Faust's own ``Consumer.resume_partitions``, as imported."""


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_versions(installed: Callable[[str], str | None] = _installed) -> None:
    """Raise :class:`~kappa.errors.UnsupportedDependency` (one line) unless :data:`SUPPORTED` is installed.

    >>> check_versions(lambda dist: SUPPORTED[dist])
    >>> check_versions(lambda dist: "0.16.0" if dist == "faust-streaming" else SUPPORTED[dist])
    Traceback (most recent call last):
    ...
    kappa.errors.UnsupportedDependency: faust-streaming 0.16.0 is installed, ...
    """
    wrong = [f"{dist} {installed(dist) or 'missing'} is installed, Kappa needs {dist}=={want}"
             for dist, want in SUPPORTED.items() if installed(dist) != want]
    if wrong:
        raise UnsupportedDependency(
            f"{'; '.join(wrong)}: Kappa patches internals of faust-streaming, mode and aiokafka and runs only "
            "on the versions it pins (reinstall them: pip install -e .)")


def install(drop_fetch: str = "") -> None:
    """Check the versions, then put :func:`new_offset` and :func:`wait_first` in place (idempotent).

    ``drop_fetch`` (``KAPPA_PROCESSOR_DROP_FETCH``, tests): also :func:`inject_dropped_fetch`.
    """
    check_versions()
    Consumer._new_offset = new_offset  # type: ignore[method-assign]
    Consumer.wait_first = wait_first  # type: ignore[method-assign]
    Consumer.resume_partitions = resume_partitions  # type: ignore[method-assign]
    _driver.Producer._settings_extra = producer_settings_extra  # type: ignore[method-assign]
    if drop_fetch:
        inject_dropped_fetch(drop_fetch)


# -- Faust's own producer: acks=all + idempotence -------------------------------------------
# Kappa's records (outputs, partials, changelog) go through librdkafka with
# kappa.kafka.producer_config; what Faust sends itself (a table write outside TableState, an
# agent's send) goes through aiokafka. faust-streaming 0.15.3 asks aiokafka for idempotence only
# inside a transaction (Producer._settings_extra), so a retried send after a leader election
# could be written twice: install() makes it ask always, keeping Faust's transactional settings.
FAUST_SETTINGS_EXTRA = _driver.Producer._settings_extra
"""Faust's own method, as imported."""


def producer_settings_extra(self: Any) -> Any:
    """Faust's extra producer settings, plus ``acks=all`` and idempotence in every case."""
    return {**FAUST_SETTINGS_EXTRA(self), "acks": "all", "enable_idempotence": True}


# -- committable offset ------------------------------------------------------------------
def new_offset(self: Any, tp: Any) -> int | None:
    """The offset to commit for ``tp`` now (None: nothing new), consuming what it covers."""
    acked: list[int] = self._acked[tp]
    if not acked:
        return None
    top = max(acked)
    gaps = self._gap[tp]
    if gaps:
        covered = [o for iv in sorted(gaps.overlap(0, top), key=lambda iv: iv.begin)
                   for o in range(iv.begin, min(iv.end, top))]
        if covered:
            acked.extend(covered)
            gaps.chop(0, top)
    acked[:] = sorted(set(acked))
    committed = self._committed_offset[tp]
    if committed and acked[0] - committed > 1:
        return None  # the head has not been acked yet
    run = next(consecutive_numbers(acked))
    del acked[:len(run)]
    self._acked_index[tp].difference_update(run)
    return int(run[-1]) + 1


# -- per-message hand-off ----------------------------------------------------------------
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


# -- partitions read outside Faust -----------------------------------------------------------
@dataclass(frozen=True)
class _Outside:
    topics: frozenset[str]
    take: Callable[[set[TP]], None]
    revoke: Callable[[set[TP]], None]


_OUTSIDE: weakref.WeakKeyDictionary[Any, _Outside] = weakref.WeakKeyDictionary()
"""App -> the topics it reads outside Faust, their taker and the revocation hook."""
_WRAPPED: weakref.WeakSet[Any] = weakref.WeakSet()
"""Consumers whose revocation callback calls the hook first."""


def read_outside(app: Any, topics: set[str], take: Callable[[set[TP]], None],
                 revoke: Callable[[set[TP]], None]) -> None:
    """From now on, ``app``'s consumer keeps the partitions of ``topics`` paused and calls
    ``take(partitions)`` where it would resume them (tables recovered, rebalance over), and
    ``revoke(partitions)`` first thing in every revocation: before Faust's own handler runs (and
    with no await in between since ``Consumer.on_partitions_revoked`` dropped its acked offsets)."""
    _OUTSIDE[app] = _Outside(frozenset(topics), take, revoke)


def _wrap_revocation(consumer: Any, hook: Callable[[set[TP]], None]) -> None:
    faust_handler = consumer._on_partitions_revoked  # App._on_partitions_revoked

    async def on_revoked(revoked: set[TP]) -> None:
        hook(revoked)
        await faust_handler(revoked)

    consumer._on_partitions_revoked = on_revoked
    _WRAPPED.add(consumer)


def resume_partitions(self: Any, tps: Any) -> None:
    """Faust's ``Consumer.resume_partitions``; the partitions an app reads outside Faust
    (:func:`read_outside`) stay paused and go to its taker."""
    outside = _OUTSIDE.get(self.app)
    if outside is None:
        FAUST_RESUME_PARTITIONS(self, tps)
        return
    if self not in _WRAPPED:  # the first resume comes before any revocation of what it resumes
        _wrap_revocation(self, outside.revoke)
    tps = set(tps)
    mine = {tp for tp in tps if tp.topic in outside.topics}
    FAUST_RESUME_PARTITIONS(self, tps - mine)
    if mine:
        outside.take(mine)


def ack_range(consumer: Any, tp: TP, start: int, end: int) -> None:
    """Offsets ``start``..``end - 1`` of ``tp`` processed outside Faust: committable by Faust's
    commit loop (``Consumer._acked``, read by :func:`new_offset`) once they follow its committed offset."""
    if end > start:
        consumer._acked[tp].extend(range(start, end))


# -- consumer bookkeeping (read only) ----------------------------------------------------
@dataclass(frozen=True)
class ConsumerView:
    """What a Faust consumer knows of its partitions, from the attributes Faust keeps private."""

    consumer: Any

    def active(self) -> set[TP]:
        """Partitions assigned, not paused: the ones Faust fetches."""
        return set(self.consumer._get_active_partitions())

    def paused(self) -> set[TP]:
        return set(self.consumer._paused_partitions)

    def buffered(self) -> set[TP]:
        """Partitions paused because their stream buffers are full."""
        return set(self.consumer._buffered_partitions)

    def read(self, tp: TP) -> int | None:
        """Offset of the last record Faust handed to the streams."""
        return self.consumer._read_offset.get(tp)

    def committed(self, tp: TP) -> int | None:
        return self.consumer._committed_offset.get(tp)

    def end(self, tp: TP) -> int | None:
        """The partition's end offset; None when it is not assigned (any more)."""
        try:
            return self.consumer.highwater(tp)
        except AssertionError:  # aiokafka asserts that the partition is assigned
            return None

    def unacked(self) -> list[TP]:
        """The partition of each record in a stream or a batch, not acked yet."""
        return [message.tp for message in list(self.consumer._unacked_messages)]

    def unacked_count(self) -> int:
        """Records in a stream or a batch, not acked yet."""
        return len(self.consumer._unacked_messages)


# -- table stores ------------------------------------------------------------------------
def partition_db(table: Any, partition: int) -> Any:
    """The rocksdict database of ``table``'s ``partition`` (opened on first use)."""
    return table.data._db_for_partition(partition)


# -- worker signal and sensors -------------------------------------------------------------
class Worker(faust.Worker):
    """Faust's worker; :meth:`on_sigusr1` runs before mode's SIGUSR1 task dump."""

    def on_sigusr1(self) -> None:
        """Hook for subclasses: runs on the event loop's thread when the worker gets SIGUSR1."""

    def _on_sigusr1(self) -> None:
        self.on_sigusr1()
        super()._on_sigusr1()


class LeanMonitor(Monitor):
    """Faust's Monitor without its per-message bookkeeping.

    The Monitor's statistics are only served by Faust's web server, which Kappa turns off
    (metrics are Prometheus, :mod:`kappa.metrics`); its four per-message hooks still ran for
    every event. The rest of the Monitor (commits, rebalances, tables) is kept.
    """

    on_message_in = Sensor.on_message_in
    on_stream_event_in = Sensor.on_stream_event_in
    on_stream_event_out = Sensor.on_stream_event_out
    on_message_out = Sensor.on_message_out


# -- fault injection (tests) ---------------------------------------------------------------
def inject_dropped_fetch(spec: str) -> None:
    """Failure injection (tests): ``<topic>:<partition>`` — drop the records of the first fetch
    that holds any of that partition, in this process, as faust-streaming does."""
    topic, _, partition = spec.rpartition(":")
    if not topic or not partition.isdigit():
        raise ConfigError(f"KAPPA_PROCESSOR_DROP_FETCH={spec!r}: expected <topic>:<partition>")
    target = (topic, int(partition))
    getmany = ThreadDelegateConsumer._getmany
    done = False

    async def _getmany(self: Any, active_partitions: Any, timeout: float) -> Mapping[Any, Any]:
        nonlocal done
        records: Any = await getmany(self, active_partitions, timeout)  # a dict (aiokafka's)
        if not done and records.get(target):  # keys are (topic, partition) named tuples
            done = True
            lost = records.pop(target)
            log.warning("fault injection: dropped %d fetched records of %s[%d] (offsets %d..%d)",
                        len(lost), *target, lost[0].offset, lost[-1].offset)
        return records

    ThreadDelegateConsumer._getmany = _getmany  # type: ignore[method-assign]
