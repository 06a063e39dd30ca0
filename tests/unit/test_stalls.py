"""StallWatch decisions: only a partition with records in Kafka, none in flight and a committed
offset that does not move for ``stall_s`` is read again (the integration test drives a real worker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from stream_processors.stalls import StallWatch

A, B, OTHER = TP("orders", 0), TP("orders", 1), TP("changelog", 0)


@dataclass(frozen=True)
class _Msg:
    tp: TP


@dataclass
class _Consumer:
    ends: dict[TP, int]
    _committed_offset: dict[TP, int | None] = field(default_factory=dict)
    _read_offset: dict[TP, int | None] = field(default_factory=dict)
    _unacked_messages: set[Any] = field(default_factory=set)
    _buffered_partitions: set[TP] = field(default_factory=set)
    paused: set[TP] = field(default_factory=set)
    flow_active: bool = True

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def _get_active_partitions(self) -> set[TP]:
        return set(self.ends) - self.paused

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]


@dataclass
class _App:
    consumer: _Consumer
    rebalancing: bool = False


def _watch(consumer: _Consumer) -> tuple[StallWatch, list[float]]:
    now = [0.0]
    return StallWatch(_App(consumer), {"orders"}, stall_s=5.0, clock=lambda: now[0]), now


def test_a_quiet_partition_with_records_after_its_commit_is_read_again_after_stall_s() -> None:
    c = _Consumer({A: 100, B: 50, OTHER: 9}, {A: 57, B: 50}, {A: 56, B: 49})
    watch, now = _watch(c)
    assert watch.stalled() == []
    now[0] = 4.9
    assert watch.stalled() == []
    now[0] = 5.0
    assert watch.stalled() == [(A, 57)]  # B is caught up; the changelog is not watched


def test_records_in_flight_a_moving_commit_a_pause_or_a_rebalance_are_not_a_stall() -> None:
    c = _Consumer({A: 100}, {A: 57}, {A: 99})
    watch, now = _watch(c)
    watch.stalled()
    now[0] = 6.0
    assert watch.stalled() == []  # all handed to the streams (queued there): busy, not stalled
    c._read_offset[A] = 56
    now[0] = 0.0
    watch.stalled()
    c._unacked_messages.add(_Msg(A))  # in a stream or a batch: busy, not stalled
    now[0] = 6.0
    assert watch.stalled() == []
    c._unacked_messages.clear()
    c._committed_offset[A] = 80  # moving: the clock starts again
    now[0] = 7.0
    assert watch.stalled() == []
    now[0] = 11.0
    assert watch.stalled() == []
    c.paused.add(A)
    now[0] = 20.0
    assert watch.stalled() == []
    c.paused.clear()
    watch.app.rebalancing = True
    assert watch.stalled() == []
    watch.app.rebalancing = False
    assert watch.stalled() == []  # the clock starts again after the rebalance
    now[0] = 25.0
    assert watch.stalled() == [(A, 80)]


def test_a_partition_never_committed_is_read_again_from_its_start() -> None:
    c = _Consumer({A: 3})
    watch, now = _watch(c)
    watch.stalled()
    now[0] = 5.0
    assert watch.stalled() == [(A, 0)]
