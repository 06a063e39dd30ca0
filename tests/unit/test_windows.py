"""The revenue windows on the generic operator: assignment, lateness, both stages, idle close — pure logic."""

from __future__ import annotations

import json

from stream_processors.base import MemoryState, Message
from stream_processors.operators.windows import PartitionWindows, WindowTotal
from stream_processors.window_stage import TICK, WindowStage
from stream_processors.windows import upgrade_legacy
from tests.support.ecommerce import revenue_spec

GRACE = 30_000
SPEC = revenue_spec(GRACE)


def _order(amount: float, category: str = "books") -> dict:
    return {"category": category, "currency": "EUR", "amount": amount}


def test_revenue_windows_are_minute_aligned() -> None:
    assert [list(SPEC.starts(t)) for t in (0, 59_999, 60_000, 119_999)] == [[0], [0], [60_000], [60_000]]


def test_classify_boundaries() -> None:
    # window [60 s, 120 s): end 120 s; grace 30 s -> too late once the watermark reaches 150 s
    assert SPEC.classify(61_000, 119_999) == "on_time"
    assert SPEC.classify(61_000, 120_000) == "within_grace"
    assert SPEC.classify(61_000, 149_999) == "within_grace"
    assert SPEC.classify(61_000, 150_000) == "too_late"


def test_partition_windows_sums_late_within_grace_and_skips_too_late() -> None:
    pw = PartitionWindows(SPEC)
    kinds = [
        pw.add(0, _order(10.0), 61_000),
        pw.add(1, _order(2.5), 130_000),   # watermark -> 130 s
        pw.add(2, _order(1.0), 70_000),    # within grace of [60,120)
        pw.add(3, _order(5.0), 160_000),   # watermark -> 160 s
        pw.add(4, _order(100.0), 65_000),  # 120+30 <= 160: too late
    ]
    assert kinds == ["on_time", "on_time", "within_grace", "on_time", "too_late"]
    assert pw.windows["60000|books|EUR"] == [60_000, "books", "EUR", 2, 11.0]  # the stored layout
    assert pw.windows["120000|books|EUR"][3:] == [2, 7.5]
    assert pw.applied(4) and not pw.applied(5)
    assert pw.prune() == ["60000|books|EUR"]
    assert PartitionWindows.from_json(json.loads(json.dumps(pw.to_json())), SPEC) == pw


def test_window_total_ignores_replayed_partials_and_sums_partitions() -> None:
    w = WindowTotal(SPEC, 0, ["a", "EUR"])
    assert w.apply(1, [1, 1.5], offset=10)
    assert w.apply(0, [2, 3.0], offset=4)
    assert not w.apply(1, [1, 1.5], offset=10)  # re-delivered partial
    assert not w.apply(1, [0, 0.0], offset=9)   # older partial
    assert w.apply(1, [3, 6.0], offset=12)
    assert (w.values(), w.revision) == ({"orders": 5, "revenue": 9.0}, 3)
    assert w.close() and not w.close()
    assert w.record("v9") == {"window_start": 0, "category": "a", "currency": "EUR", "orders": 5,
                              "revenue": 9.0, "revision": 4, "final": True, "pipeline_version": "v9"}


def test_a_total_stored_before_the_operator_loads() -> None:
    old = {"s": 0, "c": "a", "u": "EUR", "p": {"1": [3, 6.0, 12]}, "r": 3, "f": False, "a": 5}
    w = WindowTotal.from_json(upgrade_legacy(old), SPEC)
    assert (w.key, w.values(), w.revision, w.final, w.at) == ("0|a|EUR", {"orders": 3, "revenue": 6.0}, 3, False, 5)
    assert upgrade_legacy(w.to_json()) == w.to_json()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _partial(p: int, offset: int, start: int, n: int, rev: float, wm: int, q: int = 0) -> Message:
    key = f"{start}|books|EUR"
    value = {"s": start, "k": ["books", "EUR"], "p": p, "a": [n, rev], "o": offset, "wm": wm}
    return Message("partials", q, offset, key.encode(), json.dumps(value).encode())


def _apply(stage: WindowStage, state: MemoryState, msgs: list[Message]) -> list[dict]:
    out = stage.process(msgs)
    for p, items in out.writes.items():
        state.write(p, items)
    return [r for _, r in out.window_values]


def test_revenue_stage_merges_closes_on_watermark_and_on_idle() -> None:
    state, clock = MemoryState(), _Clock()
    stage = WindowStage("v1", state, GRACE, idle_s=1.0, clock=clock, spec=SPEC)
    out = _apply(stage, state, [_partial(0, 5, 0, 2, 20.0, 50_000), _partial(1, 7, 0, 1, 5.0, 55_000)])
    assert [(r["orders"], r["revenue"], r["final"]) for r in out] == [(3, 25.0, False)]
    # watermark 90 s = end 60 s + grace 30 s: closes window 0, opens window 60 s
    out = _apply(stage, state, [_partial(0, 9, 60_000, 1, 1.0, 90_000)])
    assert {(r["window_start"], r["final"]) for r in out} == {(0, True), (60_000, False)}
    assert stage.idle() == []
    clock.now += 0.5
    assert stage.idle() == []
    clock.now += 100.0  # idle long enough: event time is assumed to advance with the wall clock
    assert stage.idle() == [0]
    out = _apply(stage, state, [Message("partials", 0, 10, None, TICK)])
    assert [(r["window_start"], r["orders"], r["final"]) for r in out] == [(60_000, 1, True)]
    assert stage.idle() == []
    # a restarted stage rebuilds its open set from state: nothing open any more
    again = WindowStage("v1", state, GRACE, clock=clock, spec=SPEC)
    assert again.open_windows(0) == set()


def test_revenue_stage_reads_partials_faust_skipped() -> None:
    state, clock = MemoryState(), _Clock()
    stage = WindowStage("v1", state, GRACE, clock=clock, spec=SPEC)
    log = [Message("partials", 0, i, m.key, m.value) for i, m in enumerate([
        _partial(0, 1, 0, 1, 10.0, 1_000), _partial(1, 1, 0, 1, 5.0, 1_000),
        _partial(0, 2, 0, 2, 30.0, 2_000), _partial(1, 2, 0, 2, 7.0, 2_000)])]
    reads: list[tuple[int, int, int | None]] = []

    def source(p: int, start: int, until: int | None = None) -> list[Message]:
        reads.append((p, start, until))
        return [m for m in log if start <= m.offset < (until or 10**9)]

    stage.partials_source = source
    assert [r["revenue"] for r in _apply(stage, state, log[:1])] == [10.0]
    out = _apply(stage, state, [log[3]])  # a rebalance lost offsets 1 and 2
    assert reads == [(0, 1, 4)]
    assert [(r["orders"], r["revenue"]) for r in out] == [(4, 37.0)]
    # re-delivered: nothing changes, the current value is emitted again (same revision)
    assert [(r["orders"], r["revenue"], r["revision"]) for r in _apply(stage, state, [log[2]])] == [(4, 37.0, 4)]
    assert len(reads) == 1


def test_revenue_outputs_lost_with_a_dying_worker_come_back_on_redelivery() -> None:
    """A worker writes a batch's state, then dies before its outputs are acknowledged (kill -9,
    or another agent of the worker failing): the re-delivered batch must emit them again —
    closes decided by an idle tick included — else the windows never reach ClickHouse."""
    state, clock = MemoryState(), _Clock()
    stage = WindowStage("v1", state, GRACE, idle_s=1.0, clock=clock, spec=SPEC)
    log = [_partial(0, 0, 0, 2, 20.0, 50_000), _partial(1, 1, 0, 1, 5.0, 55_000),
           _partial(0, 2, 60_000, 1, 1.0, 90_000)]
    delivered = _apply(stage, state, log[:2])
    assert [(r["orders"], r["final"]) for r in delivered] == [(3, False)]
    lost = _apply(stage, state, log[2:])  # state written, outputs lost with the worker
    assert {(r["window_start"], r["final"]) for r in lost} == {(0, True), (60_000, False)}
    clock.now += 100.0
    lost_tick = _apply(stage, state, [Message("partials", 0, 3, None, TICK)])
    assert [(r["window_start"], r["final"]) for r in lost_tick] == [(60_000, True)]
    # the restarted worker's consumer resumes from the last committed offset, 2
    again = WindowStage("v1", state, GRACE, idle_s=1.0, clock=clock, spec=SPEC)
    out = _apply(again, state, [*log[2:], Message("partials", 0, 3, None, TICK)])
    def rows(records: list[dict]) -> list[tuple]:
        return sorted((r["window_start"], r["orders"], r["revenue"], r["revision"], r["final"]) for r in records)

    # every window as the lost outputs had it last: window 0 final, window 60 s closed by the tick
    assert rows(out) == rows([next(r for r in lost if r["final"]), *lost_tick])
