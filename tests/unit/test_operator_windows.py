"""The generic window operator: declarations, tumbling and hopping values by hand, every
aggregation, grace and lateness, idle close, and properties over random delivery and crashes."""

from __future__ import annotations

import random
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kappa.errors import KappaError
from stream_processors.base import MemoryState, Message, dumps, loads
from stream_processors.operators.windows import (
    TICK,
    Aggregation,
    PartitionWindows,
    WindowMerge,
    WindowSpec,
    WindowSpecError,
    parse_window,
)

MIN = 60_000
AGGS = {"n": "count", "total": "sum(v)", "low": "min(v)", "high": "max(v)", "mean": "avg(v)", "valued": "count(v)"}


def spec_of(size: str, hop: str | None = None, grace: str = "0s", aggs: dict[str, str] = AGGS) -> WindowSpec:
    decl: dict[str, Any] = {"size": size, "grace": grace, "keys": ["k"], "aggregations": aggs}
    if hop:
        decl["hop"] = hop
    return parse_window("w", decl)


# -- declarations -------------------------------------------------------------------------------
def test_declaration_of_the_revenue_and_iot_windows() -> None:
    rev = parse_window("revenue_per_minute", {"stream": "orders", "size": "1m", "hop": "1m",
                                              "keys": ["category", "currency"],
                                              "aggregations": {"orders": "count", "revenue": "sum(amount)"}})
    assert (rev.size_ms, rev.hop_ms, rev.grace_ms, rev.keys) == (MIN, MIN, 0, ("category", "currency"))
    assert rev.aggregations == (Aggregation("orders", "count"), Aggregation("revenue", "sum", "amount"))
    iot = parse_window("readings", {"size": "5m", "hop": "1m", "keys": ["site", "metric"], "aggregations": {
        "n": "count", "mean": "avg(value)", "low": "min(value)", "high": "max(value)"}}, grace_ms=5_000)
    assert (iot.size_ms, iot.hop_ms, iot.grace_ms) == (5 * MIN, MIN, 5_000)
    assert iot.slots == (("count", None), ("sum", "value"), ("count", "value"), ("min", "value"), ("max", "value"))
    assert parse_window("t", {"size": "30s", "grace": "1h", "aggregations": {"n": "count"}}).hop_ms == 30_000
    assert parse_window("t", {"size": "30s", "grace": "1h", "aggregations": {"n": "count"}}).grace_ms == 3_600_000


@pytest.mark.parametrize(("decl", "message"), [
    ({"size": "1m", "aggregations": {"p50": "median(v)"}}, "windows.w.aggregations.p50: unknown function 'median'"),
    ({"size": "1m", "aggregations": {"s": "sum"}}, "windows.w.aggregations.s: sum needs a field"),
    ({"size": "1m", "aggregations": {"s": "sum(v"}}, "windows.w.aggregations.s: 'sum(v' is not an aggregation"),
    ({"size": "1m", "aggregations": {}}, "windows.w.aggregations: declare at least one"),
    ({"size": "5m", "hop": "2m", "aggregations": {"n": "count"}}, "windows.w: hop 2m does not divide size 5m"),
    ({"size": "1 minute", "aggregations": {"n": "count"}}, "windows.w.size: '1 minute' is not a duration"),
    ({"size": 60, "aggregations": {"n": "count"}}, "windows.w.size: 60 is not a duration"),
    ({"size": "1m", "grace": "-1s", "aggregations": {"n": "count"}}, "windows.w.grace: '-1s' is not a duration"),
    ({"aggregations": {"n": "count"}}, "windows.w: size is missing"),
    ({"size": "1m", "window": "1m", "aggregations": {"n": "count"}}, "windows.w: unknown setting(s) window"),
    ({"size": "1m", "keys": ["n"], "aggregations": {"n": "count"}}, "windows.w: output name(s) n used twice"),
    ({"size": "1m", "aggregations": {"final": "count"}}, "windows.w: output name(s) final used twice or reserved"),
])
def test_a_bad_declaration_names_the_entry_in_one_line(decl: dict[str, Any], message: str) -> None:
    with pytest.raises(WindowSpecError) as err:
        parse_window("w", decl)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert isinstance(err.value, KappaError)


# -- stage 1 and 2 by hand ----------------------------------------------------------------------
def run_once(spec: WindowSpec, logs: dict[int, list[tuple[int, Any]]]) -> dict[str, dict[str, Any]]:
    """Every partition in one batch (offset order), every partial merged: the final records by key."""
    merge = WindowMerge(spec, "v1", MemoryState(), clock=lambda: 0.0)
    msgs: list[Message] = []
    for p, events in sorted(logs.items()):
        pw = PartitionWindows(spec)
        for offset, (t, ev) in enumerate(events):
            pw.observe(offset, ev, t)
        msgs += [Message("partials", 0, len(msgs) + i, k.encode(), v)
                 for i, (k, v) in enumerate(pw.end_batch(p, len(events) - 1))]
    return {k: r for k, r in merge.merge(msgs, {})}


def ev(k: str, v: float | None) -> dict[str, Any]:
    return {"k": k, "v": v}


def test_tumbling_values_by_hand_with_every_aggregation() -> None:
    spec = spec_of("1m")
    got = run_once(spec, {
        0: [(1_000, ev("a", 2.0)), (30_000, ev("b", -1.5)), (59_999, ev("a", None)), (60_000, ev("a", 7.0))],
        1: [(5_000, ev("a", 4.0)), (10_000, ev("a", 0.5))],
    })
    assert got == {
        "0|a": {"window_start": 0, "k": "a", "n": 4, "total": 6.5, "low": 0.5, "high": 4.0, "mean": 6.5 / 3,
                "valued": 3, "revision": 3, "final": True, "pipeline_version": "v1"},  # 2 partials, closed
        "0|b": {"window_start": 0, "k": "b", "n": 1, "total": -1.5, "low": -1.5, "high": -1.5, "mean": -1.5,
                "valued": 1, "revision": 2, "final": True, "pipeline_version": "v1"},
        "60000|a": {"window_start": 60_000, "k": "a", "n": 1, "total": 7.0, "low": 7.0, "high": 7.0, "mean": 7.0,
                    "valued": 1, "revision": 1, "final": False, "pipeline_version": "v1"},
    }


def test_min_max_avg_of_a_window_without_values_are_none_and_empty_windows_never_appear() -> None:
    got = run_once(spec_of("1m"), {0: [(1_000, ev("a", None)), (200_000, ev("a", None))]})
    assert sorted(got) == ["0|a", "180000|a"]  # nothing for the empty minutes between
    assert {k: (r["n"], r["total"], r["low"], r["high"], r["mean"], r["valued"]) for k, r in got.items()} == {
        "0|a": (1, 0.0, None, None, None, 0), "180000|a": (1, 0.0, None, None, None, 0)}


def test_hopping_values_by_hand() -> None:
    """size 3 min, hop 1 min: 70 s is in [-60 s, 120 s), [0, 180 s) and [60 s, 240 s)."""
    spec = spec_of("3m", "1m", aggs={"n": "count", "total": "sum(v)"})
    assert list(spec.starts(70_000)) == [-60_000, 0, 60_000]
    got = run_once(spec, {0: [(70_000, ev("a", 1.0)), (130_000, ev("a", 2.0))],
                          1: [(10_000, ev("a", 4.0)), (200_000, ev("a", 8.0))]})
    assert {r["window_start"]: (r["n"], r["total"]) for r in got.values()} == {
        -120_000: (1, 4.0),          # 10 s
        -60_000: (2, 5.0),           # 10 s, 70 s
        0: (3, 7.0),                 # 10, 70, 130 s
        60_000: (3, 11.0),           # 70, 130, 200 s
        120_000: (2, 10.0),          # 130, 200 s
        180_000: (1, 8.0),           # 200 s
    }


def test_hopping_lateness_adds_to_open_windows_only_and_counts_too_late() -> None:
    """size 3 min, hop 1 min, grace 30 s. After the watermark reaches 250 s, [0,180) is closed
    (180+30 <= 250) but [60,240) and [120,300) are not: an event at 150 s goes to those two."""
    spec = spec_of("3m", "1m", grace="30s", aggs={"n": "count"})
    pw = PartitionWindows(spec)
    assert pw.add(0, ev("a", 1.0), 10_000) == "on_time"       # [-120,60) [-60,120) [0,180)
    assert pw.add(1, ev("a", 1.0), 250_000) == "on_time"
    before = {k: list(w) for k, w in pw.windows.items()}
    assert pw.add(2, ev("a", 1.0), 150_000) == "within_grace"  # its earliest window ended
    changed = {k for k, w in pw.windows.items() if before.get(k) != w}
    assert changed == {"60000|a", "120000|a"}                  # not [0,180): closed
    assert pw.add(3, ev("a", 1.0), 20_000) == "too_late"       # every window holding it closed
    assert pw.add(4, ev("a", 1.0), 500_000) == "on_time"
    assert pw.add(5, ev("a", 1.0), 200_000) == "too_late"      # [180,360) closed at 390 <= 500
    assert pw.late == {"within_grace": 1, "too_late": 2}
    assert sum(w[-1] for w in pw.windows.values()) == 3 + 3 + 2 + 3  # 4 of 6 events, never the too-late
    assert sorted(pw.prune(), key=lambda k: int(k.split("|")[0])) == [
        f"{s}|a" for s in (-120_000, -60_000, 0, 60_000, 120_000, 180_000, 240_000)]  # 240+180+30 <= 500 s
    assert PartitionWindows.from_json(loads(dumps(pw.to_json())), spec) == pw


def test_redelivered_events_are_skipped_and_their_windows_emitted_again() -> None:
    spec = spec_of("1m", aggs={"n": "count"})
    state = MemoryState()
    pw = PartitionWindows(spec)
    assert pw.observe(0, ev("a", 1.0), 1_000) == ("on_time", True)
    assert pw.observe(1, ev("a", 1.0), 61_000) == ("on_time", True)
    first = pw.end_batch(0, 1)
    state.write(0, {b"p": dumps(pw.to_json())})
    again = PartitionWindows.from_json(loads(state.get(0, b"p")), spec)
    assert again.observe(1, ev("a", 1.0), 61_000) == ("on_time", False)  # counted already
    assert again.end_batch(0, 1) == [first[1]]  # the same partial, byte for byte
    assert again.windows["60000|a"][-1] == 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_close_flushes_windows_without_a_later_event() -> None:
    spec = spec_of("1m", grace="10s", aggs={"n": "count"})
    clock, state = Clock(), MemoryState()
    merge = WindowMerge(spec, "v1", state, idle_s=2.0, clock=clock)
    pw = PartitionWindows(spec)
    pw.observe(0, ev("a", 1.0), 50_000)
    (key, value), = pw.end_batch(0, 0)

    def apply(msgs: list[Message]) -> list[tuple[int, bool]]:
        writes: dict[int, dict[bytes, bytes | None]] = {}
        out = merge.merge(msgs, writes)
        for p, items in writes.items():
            state.write(p, items)
        return [(r["revision"], r["final"]) for _, r in out]

    assert apply([Message("partials", 0, 0, key.encode(), value)]) == [(1, False)]
    clock.now += 1.0
    assert merge.idle() == []
    assert apply([Message("partials", 0, 1, None, TICK)]) == []  # idle 1 s < 2 s: still open
    clock.now += 20.0  # 21 s idle: the watermark 50 s is taken to be 71 s >= end 60 s + grace 10 s
    assert merge.idle() == [0]
    assert apply([Message("partials", 0, 2, None, TICK)]) == [(2, True)]
    assert merge.idle() == []


# -- properties over random delivery orders and crashes ------------------------------------------
PARTS, QPARTS = 3, 2
VALUES = [0.1, 0.2, 0.3, 1e16, -1e16, 3.0, 2.5, None]
"""Values whose float sum depends on the order of addition (0.1 + 0.2 + 0.3, 1e16 + 1 - 1e16)."""


def oracle(spec: WindowSpec, logs: dict[int, list[tuple[int, dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """The windows by definition: per partition in offset order, an event goes to each window
    holding it that is not closed (``end + grace <= watermark``); merged in partition order."""
    parts: dict[str, dict[int, list[Any]]] = {}
    for p in sorted(logs):
        wm: int | None = None
        for t, e in logs[p]:
            start = t - t % spec.hop_ms
            while start > t - spec.size_ms:
                if wm is None or start + spec.size_ms + spec.grace_ms > wm:
                    parts.setdefault(f"{start}|{e['k']}", {}).setdefault(p, []).append(e["v"])
                start -= spec.hop_ms
            wm = t if wm is None else max(wm, t)
    out = {}
    for key, by_part in parts.items():
        total: float = 0
        for p in sorted(by_part):
            s = 0.0
            for v in by_part[p]:
                if v is not None:
                    s += v
            total += s
        values = [v for p in sorted(by_part) for v in by_part[p] if v is not None]
        first, k = key.split("|")
        out[key] = {"window_start": int(first), "k": k, "n": sum(len(vs) for vs in by_part.values()),
                    "total": total, "low": min(values, default=None), "high": max(values, default=None),
                    "mean": total / len(values) if values else None, "valued": len(values)}
    return out


class Sim:
    """Stage 1 per partition and stage 2 per partials partition over in-memory state, driven by
    ``rnd`` (a seeded schedule): batch sizes, interleaving, crashes (outputs lost and/or state not written, then
    re-delivery from the last committed offset, the worker's memory gone; at most ``crashes``)
    and idle ticks."""

    def __init__(self, spec: WindowSpec, logs: dict[int, list[tuple[int, dict[str, Any]]]],
                 rnd: random.Random, crashes: int) -> None:
        self.spec, self.logs, self.rnd, self.crashes = spec, logs, rnd, crashes
        self.clock = Clock()
        self.s1, self.s2 = MemoryState(), MemoryState()
        self.committed = dict.fromkeys(logs, 0)
        self.partials: dict[int, list[tuple[bytes | None, bytes]]] = {q: [] for q in range(QPARTS)}
        self.qcommitted = dict.fromkeys(range(QPARTS), 0)
        self.merge = self._merge()
        self.records: list[tuple[str, dict[str, Any]]] = []

    def _merge(self) -> WindowMerge:
        return WindowMerge(self.spec, "v1", self.s2, idle_s=1.0, clock=self.clock)

    def _fate(self) -> tuple[bool, bool]:
        """(outputs kept, state written)."""
        if not self.crashes or self.rnd.random() < 0.7:
            return True, True
        self.crashes -= 1
        return self.rnd.choice([(True, False), (False, True), (False, False)])

    def stage1(self, p: int) -> None:
        start = self.committed[p]
        batch = self.logs[p][start:start + self.rnd.randint(1, 6)]
        pw = PartitionWindows.from_json(loads(self.s1.get(p, b"p")), self.spec)
        for offset, (t, e) in enumerate(batch, start):
            pw.observe(offset, e, t)
        partials = pw.end_batch(p, start + len(batch) - 1)
        kept, written = self._fate()
        if kept:
            for key, value in partials:
                self.partials[zlib.crc32(key.encode()) % QPARTS].append((key.encode(), value))
        if written:
            self.s1.write(p, {b"p": dumps(pw.to_json())})
        if kept and written:
            self.committed[p] = start + len(batch)

    def stage2(self, q: int) -> None:
        start = self.qcommitted[q]
        batch = self.partials[q][start:start + self.rnd.randint(1, 6)]
        msgs = [Message("partials", q, start + i, k, v) for i, (k, v) in enumerate(batch)]
        writes: dict[int, dict[bytes, bytes | None]] = {}
        out = self.merge.merge(msgs, writes)
        kept, written = self._fate()
        if kept:
            self.records += out
        if written:
            for part, items in writes.items():
                self.s2.write(part, items)
        if kept and written:
            self.qcommitted[q] = start + len(batch)
        else:
            self.merge = self._merge()
            for part in range(QPARTS):  # the restarted worker loads the open windows it was assigned
                self.merge.open_windows(part)

    def run(self) -> None:
        for _ in range(20_000):
            todo = [("1", p) for p in self.logs if self.committed[p] < len(self.logs[p])]
            todo += [("2", q) for q in range(QPARTS) if self.qcommitted[q] < len(self.partials[q])]
            if not todo or self.rnd.random() < 0.1:
                self.clock.now += self.rnd.choice([0.3, 2.0, 30.0])
                idle = self.merge.idle()
                for q in idle:
                    self.partials[q].append((None, TICK))
                if not todo and not any(self.merge.open_windows(q) for q in range(QPARTS)):
                    return
                continue
            stage, part = self.rnd.choice(todo)
            (self.stage1 if stage == "1" else self.stage2)(part)
        raise AssertionError("did not drain")

    def final(self) -> dict[str, dict[str, Any]]:
        """The record with the highest revision per key (what an update-style sink keeps)."""
        best: dict[str, dict[str, Any]] = {}
        for key, rec in self.records:
            if key not in best or rec["revision"] > best[key]["revision"]:
                best[key] = rec
        return best


def strip(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {f: v for f, v in r.items() if f not in ("revision", "final", "pipeline_version")}
            for k, r in records.items()}


specs = st.sampled_from([("1m", None, "0s"), ("1m", None, "30s"), ("2m", "1m", "0s"), ("3m", "1m", "20s"),
                         ("5m", "1m", "1m"), ("2m", "30s", "10s")])
events = st.lists(st.tuples(st.integers(0, PARTS - 1), st.sampled_from(["a", "b"]), st.sampled_from(VALUES),
                            st.integers(0, 30_000), st.sampled_from([0, 0, 0, 20_000, 90_000, 400_000])),
                  min_size=1, max_size=40)


def logs_of(drawn: list[tuple[int, str, float | None, int, int]]) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """Per partition, events whose times advance with ``step`` and come ``back`` late now and then."""
    logs: dict[int, list[tuple[int, dict[str, Any]]]] = {p: [] for p in range(PARTS)}
    now = 10 * MIN
    for p, k, v, step, back in drawn:
        now += step
        logs[p].append((now - back, {"k": k, "v": v}))
    return logs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs, events, st.integers(0, 2**32))
def test_any_delivery_order_and_crashes_give_the_windows_of_one_in_order_run(
        decl: tuple[str, str | None, str], drawn: list[Any], schedule: int) -> None:
    spec = spec_of(*decl)
    logs = logs_of(drawn)
    want = oracle(spec, logs)
    assert strip(run_once(spec, logs)) == want  # one in-order run: the windows by definition
    sim = Sim(spec, logs, random.Random(schedule), crashes=8)
    sim.run()
    final = sim.final()
    assert strip(final) == want
    assert all(r["final"] for r in final.values())  # the highest revision is the closed value
    assert set(sim.merge.open_windows(0)) | set(sim.merge.open_windows(1)) == set()


@settings(max_examples=50, deadline=None)
@given(specs, events, st.integers(0, 2**32), st.integers(0, 2**32))
def test_two_schedules_of_the_same_log_agree_to_the_last_bit(
        decl: tuple[str, str | None, str], drawn: list[Any], one: int, two: int) -> None:
    spec = spec_of(*decl)
    logs = logs_of(drawn)
    a, b = Sim(spec, logs, random.Random(one), crashes=8), Sim(spec, logs, random.Random(two), crashes=0)
    a.run()
    b.run()
    assert repr(sorted(strip(a.final()).items())) == repr(sorted(strip(b.final()).items()))  # repr: every bit
