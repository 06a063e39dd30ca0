"""The interval join operator: declarations, matched pairs at the interval's bounds, unmatched at the
interval's end + grace, too late, idle rows retracted by a late pair, re-delivery, bounded state;
properties over any interleaving of the two streams, batching, idle ticks and crashes (state
restored from a pickled snapshot, re-delivery from the last committed offsets)."""

from __future__ import annotations

import itertools
import pickle
import random
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kappa.errors import KappaError
from stream_processors.operators.joins import JoinSpec, JoinSpecError, PartitionJoin, parse_join

MIN = 60_000
HOUR = 60 * MIN
Table = dict[str, dict[str, Any]]


def spec_of(lower: str = "0s", upper: str = "1h", grace: str = "0s", how: str = "left") -> JoinSpec:
    return parse_join("conv", {"left": "views", "right": "signups", "on": "visitor", "lower": lower,
                               "upper": upper, "grace": grace, "how": how,
                               "fields": {"url": "views.url", "plan": "signups.plan"}})


def land(table: Table, rows: dict[str, dict[str, Any]]) -> None:
    """The highest revision per key (a revision always names one content: asserted)."""
    for key, row in rows.items():
        old = table.get(key)
        if old is not None and old["revision"] == row["revision"]:
            assert old == row, f"revision {row['revision']} of {key} with two contents"
        if old is None or row["revision"] >= old["revision"]:
            table[key] = row


def live(table: Table) -> Table:
    return {k: r for k, r in table.items() if not r["retracted"]}


Event = tuple[str, int, str, dict[str, Any]]  # side, time, id, record


def view(i: str, visitor: str, t: int) -> Event:
    return ("left", t, i, {"visitor": visitor, "url": f"/{i}"})


def signup(i: str, visitor: str, t: int) -> Event:
    return ("right", t, i, {"visitor": visitor, "plan": f"plan-{i}"})


def run(spec: JoinSpec, events: list[Event], batch: int = 1) -> tuple[Table, PartitionJoin]:
    """One partition; events in the given order, offsets per stream in that order."""
    j, table, offsets = PartitionJoin(spec), Table(), {"left": 0, "right": 0}
    for n, (side, t, i, rec) in enumerate(events, 1):
        j.observe(side, offsets[side], i, rec, t)
        offsets[side] += 1
        if n % batch == 0:
            land(table, j.end_batch())
    land(table, j.end_batch())
    return table, j


def pairs(table: Table) -> set[tuple[str, str | None]]:
    return {(r["left_id"], r["right_id"]) for r in live(table).values()}


# -- declarations -------------------------------------------------------------------------------
def test_declaration() -> None:
    spec = parse_join("j", {"left": "a", "right": "b", "on": "k", "lower": "-5m", "upper": "10m"}, grace_ms=7)
    assert (spec.lower_ms, spec.upper_ms, spec.grace_ms, spec.how, dict(spec.fields)) == (-5 * MIN, 10 * MIN, 7,
                                                                                         "inner", {})
    assert spec_of().projection("right") == (("plan", "plan"),)


@pytest.mark.parametrize(("decl", "message"), [
    ({"right": "b", "on": "k", "upper": "1h"}, "joins.j.left: missing"),
    ({"left": "a", "right": "a", "on": "k", "upper": "1h"}, "joins.j: left and right are both 'a'"),
    ({"left": "a", "right": "b", "on": "k"}, "joins.j.upper: missing"),
    ({"left": "a", "right": "b", "on": "k", "upper": "an hour"}, "joins.j.upper: 'an hour' is not a duration"),
    ({"left": "a", "right": "b", "on": "k", "lower": "2h", "upper": "1h"}, "joins.j: lower 7200000ms is above upper"),
    ({"left": "a", "right": "b", "on": "k", "upper": "1h", "how": "outer"}, "joins.j.how: 'outer' is not a join"),
    ({"left": "a", "right": "b", "on": "k", "upper": "1h", "within": "1h"}, "joins.j: unknown setting(s) within"),
    ({"left": "a", "right": "b", "on": "k", "upper": "1h", "fields": {"x": "y"}}, "joins.j.fields.x: 'y' is not"),
    ({"left": "a", "right": "b", "on": "k", "upper": "1h", "fields": {"matched": "a.m"}},
     "joins.j.fields: output name(s) matched reserved"),
])
def test_a_bad_declaration_names_the_entry_in_one_line(decl: dict[str, Any], message: str) -> None:
    with pytest.raises(JoinSpecError) as err:
        parse_join("j", decl)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert isinstance(err.value, KappaError)


# -- by hand ------------------------------------------------------------------------------------
def test_matched_at_both_bounds_of_the_interval_and_not_outside() -> None:
    spec = spec_of("-5m", "1h", how="inner")
    table, _ = run(spec, [view("v", "a", 10 * HOUR),
                          signup("lo-1", "a", 10 * HOUR - 5 * MIN - 1), signup("lo", "a", 10 * HOUR - 5 * MIN),
                          signup("hi", "a", 11 * HOUR), signup("hi+1", "a", 11 * HOUR + 1),
                          signup("other", "b", 10 * HOUR)])
    assert pairs(table) == {("v", "lo"), ("v", "hi")}
    assert table["v|hi"] == {"visitor": "a", "left_id": "v", "right_id": "hi", "left_time": 10 * HOUR,
                             "right_time": 11 * HOUR, "url": "/v", "plan": "plan-hi", "matched": True,
                             "revision": 1, "final": True, "retracted": False}


def test_left_unmatched_once_the_right_watermark_passes_interval_end_plus_grace() -> None:
    spec = spec_of("0s", "1h", grace="10m")
    j = PartitionJoin(spec)
    j.observe("left", 0, "v1", {"visitor": "a", "url": "/1"}, 0)
    j.observe("left", 1, "v2", {"visitor": "b", "url": "/2"}, 0)
    j.observe("right", 0, "s1", {"visitor": "a", "plan": "pro"}, 30 * MIN)
    j.observe("right", 1, "s2", {"visitor": "c", "plan": "pro"}, HOUR + 10 * MIN)  # = end + grace: not passed
    assert list(j.end_batch()) == ["v1|s1"]
    j.observe("right", 2, "s3", {"visitor": "c", "plan": "pro"}, HOUR + 10 * MIN + 1)  # passed
    rows = j.end_batch()
    assert list(rows) == ["v2|"]
    assert rows["v2|"] == {"visitor": "b", "left_id": "v2", "right_id": None, "left_time": 0, "right_time": None,
                           "url": "/2", "plan": None, "matched": False, "revision": 1, "final": True,
                           "retracted": False}
    assert j.store["left"] == {}  # both views expired: state bounded by the interval + grace
    j.observe("right", 3, "late", {"visitor": "b", "plan": "pro"}, 50 * MIN)  # more than grace behind: too late
    assert j.end_batch() == {} and j.late == {"right_too_late": 1}


def test_inner_join_emits_no_unmatched_and_forgets_expired_events() -> None:
    table, j = run(spec_of(how="inner"), [view("v1", "a", 0), signup("s1", "b", 2 * HOUR), view("v2", "b", 5 * HOUR)])
    assert table == {}
    assert j.store == {"left": {"b": j.store["left"]["b"]}, "right": {}}  # s1 expired by v2's watermark
    assert [e[2] for e in j.store["left"]["b"]] == ["v2"]


def test_any_interleaving_of_the_two_streams_gives_the_same_rows() -> None:
    spec = spec_of("0s", "1h", grace="2h")
    left = [view("v1", "a", 0), view("v2", "a", 50 * MIN), view("v3", "b", 10 * MIN)]
    right = [signup("s1", "a", 55 * MIN), signup("s2", "b", 3 * HOUR)]
    seen = set()
    for slots in itertools.combinations(range(5), 3):  # where the views go among the five deliveries
        li, ri = iter(left), iter(right)
        order = [next(li) if n in slots else next(ri) for n in range(5)]
        for batch in (1, 2, 5):
            table, _ = run(spec, order, batch)
            seen.add(frozenset(live(table)))
    assert seen == {frozenset({"v1|s1", "v2|s1"})}  # v3: s2 is 2h50m after it, v3 not expired yet (grace 2h)


def test_an_unmatched_row_shown_on_idle_is_retracted_by_a_later_pair() -> None:
    spec = spec_of("0s", "1h")
    j, table = PartitionJoin(spec), Table()
    j.observe("left", 0, "v1", {"visitor": "a", "url": "/1"}, 0)
    land(table, j.end_batch(now=100.0))
    assert j.idle(100.5, idle_s=1.0) == {}
    assert j.idle(100.0 + 59 * 60, idle_s=1.0) == {}  # 0 + 59 min: within the hour
    shown = j.idle(100.0 + 61 * 60, idle_s=1.0)
    assert [(k, r["matched"]) for k, r in shown.items()] == [("v1|", False)]
    assert j.idle(100.0 + 120 * 60, idle_s=1.0) == {}  # shown once
    land(table, shown)
    j.observe("right", 0, "s1", {"visitor": "a", "plan": "pro"}, 20 * MIN)  # the log had a signup after all
    land(table, j.end_batch(now=9000.0))
    assert table["v1|"]["retracted"] and table["v1|"]["revision"] == 2
    assert pairs(table) == {("v1", "s1")}


def test_redelivery_after_a_crash_re_emits_the_lost_rows_and_joins_nothing_twice() -> None:
    j = PartitionJoin(spec_of())
    j.observe("left", 0, "v1", {"visitor": "a", "url": "/1"}, 0)
    j.observe("right", 0, "s1", {"visitor": "a", "plan": "pro"}, MIN)
    lost = j.end_batch()  # state written, the rows not flushed: the worker dies
    again = pickle.loads(pickle.dumps(j))
    assert again == j and list(lost) == ["v1|s1"]
    assert again.observe("right", 0, "s1", {"visitor": "a", "plan": "pro"}, MIN) == ("on_time", False)
    assert again.end_batch() == lost  # re-delivered from the right's offset 0: emitted again
    again.observe("left", 1, "v2", {"visitor": "a", "url": "/2"}, 2 * MIN)
    assert again.end_batch() == {}  # a left batch after offset 0: v1|s1 was flushed (v2: s1 is before it)
    assert again.pending == {}
    assert again.store["right"] == {}  # s1 expired: no left event to come can be at or before it


# -- properties ---------------------------------------------------------------------------------
PARTS = 2
KEYS = ["a", "b", "c"]


def partition(key: str) -> int:
    return zlib.crc32(key.encode()) % PARTS


Logs = dict[int, dict[str, list[Event]]]


def logs_of(drawn: list[tuple[str, str, int, int]]) -> Logs:
    """Per partition (by key) and stream, events whose times advance and come back late now and then."""
    logs: Logs = {p: {"left": [], "right": []} for p in range(PARTS)}
    now = {"left": 10 * HOUR, "right": 10 * HOUR}
    for i, (side, k, step, back) in enumerate(drawn):
        now[side] += step
        ev = view(f"v{i}", k, now[side] - back) if side == "left" else signup(f"s{i}", k, now[side] - back)
        logs[partition(k)][side].append(ev)
    return logs


def by_definition(spec: JoinSpec, logs: Logs) -> tuple[set[tuple[str, str | None]], dict[tuple[int, str, int], str]]:
    """Pairs of events not too late (each judged against its own stream's watermark before it), and
    in a left join the left events without a pair; the verdicts by (partition, stream, offset)."""
    kinds: dict[tuple[int, str, int], str] = {}
    accepted: dict[str, list[Event]] = {"left": [], "right": []}
    for p, streams in logs.items():
        for side, events in streams.items():
            wm: int | None = None
            for o, e in enumerate(events):
                t = e[1]
                kind = ("on_time" if wm is None or t >= wm else
                        "too_late" if t < wm - spec.grace_ms else "within_grace")
                kinds[p, side, o] = kind
                if kind != "too_late":
                    accepted[side].append(e)
                wm = t if wm is None else max(wm, t)
    out: set[tuple[str, str | None]] = set()
    for left in accepted["left"]:
        found = {(left[2], r[2]) for r in accepted["right"] if r[3]["visitor"] == left[3]["visitor"]
                 and left[1] + spec.lower_ms <= r[1] <= left[1] + spec.upper_ms}
        out |= found or ({(left[2], None)} if spec.how == "left" else set())
    return out, kinds


class Sim:
    """A worker over both partitions driven by ``rnd``: batches of random size that interleave the two
    streams of a partition (each in its offset order), offsets committed now and then, crashes before
    the state, after it, or after the rows (memory gone, state from the pickled snapshots, re-delivery
    from the committed offsets), and idle ticks (state written, then rows, as a caller must)."""

    def __init__(self, spec: JoinSpec, logs: Logs, rnd: random.Random, crashes: int) -> None:
        self.spec, self.logs, self.rnd, self.crashes = spec, logs, rnd, crashes
        self.snapshots = {p: pickle.dumps(PartitionJoin(spec)) for p in logs}
        self.committed = {(p, s): 0 for p in logs for s in ("left", "right")}
        self.table: Table = {}
        self.kinds: dict[tuple[int, str, int], str] = {}
        self.now = 0.0
        self.restart()

    def restart(self) -> None:
        self.live = {p: pickle.loads(raw) for p, raw in self.snapshots.items()}
        self.pos = dict(self.committed)

    def batch(self, p: int) -> None:
        j, taken, judged = self.live[p], dict(self.pos), []
        for _ in range(self.rnd.randint(1, 6)):
            open_ = [s for s in ("left", "right") if taken[p, s] < len(self.logs[p][s])]
            if not open_:
                break
            side = self.rnd.choice(open_)
            o = taken[p, side]
            _, t, i, rec = self.logs[p][side][o]
            kind, fresh = j.observe(side, o, i, rec, t)
            if fresh:
                assert (p, side, o) not in self.kinds
                self.kinds[p, side, o] = kind
                judged.append((p, side, o))
            taken[p, side] = o + 1
        rows = j.end_batch(now=self.now)
        fate = "ok" if not self.crashes or self.rnd.random() < 0.7 else self.rnd.choice(
            ["before state", "before rows", "before commit"])
        if fate != "ok":
            self.crashes -= 1
        if fate != "before state":
            self.snapshots[p] = pickle.dumps(j)
        if fate in ("ok", "before commit"):
            land(self.table, rows)
        if fate == "ok":
            self.pos = taken
            if self.rnd.random() < 0.5:
                self.committed.update({k: v for k, v in taken.items() if k[0] == p})
        else:
            if fate == "before state":
                for key in judged:
                    del self.kinds[key]
            self.restart()

    def tick(self, now: float) -> None:
        for p, j in self.live.items():
            rows = j.idle(now, idle_s=1.0)
            self.snapshots[p] = pickle.dumps(j)
            land(self.table, rows)

    def run(self) -> None:
        while True:
            todo = [p for p in self.logs if any(self.pos[p, s] < len(self.logs[p][s]) for s in ("left", "right"))]
            if not todo:
                break
            if self.rnd.random() < 0.15:
                self.now += self.rnd.choice([0.5, 5.0, 3000.0, 30000.0])
                self.tick(self.now)
                continue
            self.batch(self.rnd.choice(todo))
        self.tick(1e12)
        self.tick(2e12)  # a worker restarted without a batch since counts idle from its first tick


specs = st.sampled_from([("0s", "1h", "0s", "left"), ("0s", "1h", "30m", "left"), ("-10m", "20m", "5m", "inner"),
                         ("5m", "40m", "1h", "left"), ("0s", "0s", "0s", "inner")])
events = st.lists(st.tuples(st.sampled_from(["left", "right"]), st.sampled_from(KEYS),
                            st.sampled_from([0, 0, MIN, 5 * MIN, 20 * MIN, 70 * MIN]),
                            st.sampled_from([0, 0, 0, 10 * MIN, 45 * MIN, 3 * HOUR])), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs, events, st.integers(0, 2**32))
def test_any_interleaving_batching_and_crashes_give_the_joins_by_definition(
        decl: tuple[str, str, str, str], drawn: list[Any], schedule: int) -> None:
    spec = spec_of(*decl)
    logs = logs_of(drawn)
    want, kinds = by_definition(spec, logs)
    sim = Sim(spec, logs, random.Random(schedule), crashes=6)
    sim.run()
    assert sim.kinds == kinds  # every event judged once, by its own stream alone
    assert pairs(sim.table) == want
    rows = live(sim.table)
    for key, row in rows.items():
        assert key == f"{row['left_id']}|{row['right_id'] or ''}" and row["matched"] == (row["right_id"] is not None)
    for j in sim.live.values():  # bounded: nothing is kept that no event to come could join
        wm_left, wm_right = j.watermark["left"], j.watermark["right"]
        assert wm_right is None or all(e[0] + spec.upper_ms + spec.grace_ms >= wm_right
                                       for es in j.store["left"].values() for e in es)
        assert wm_left is None or all(e[0] - spec.lower_ms + spec.grace_ms >= wm_left
                                      for es in j.store["right"].values() for e in es)


@settings(max_examples=60, deadline=None)
@given(specs, events, st.integers(0, 2**32), st.integers(0, 2**32))
def test_two_schedules_without_idle_land_the_same_table_row_for_row(
        decl: tuple[str, str, str, str], drawn: list[Any], one: int, two: int) -> None:
    """Without the wall clock, the landed table itself (not only its live view) is a function of the log."""
    spec = spec_of(*decl)
    logs = logs_of(drawn)
    tables = []
    for seed, crashes in ((one, 6), (two, 0)):
        sim = Sim(spec, logs, random.Random(seed), crashes)
        sim.tick = lambda now: None  # type: ignore[method-assign]
        sim.run()
        tables.append(sim.table)
    assert tables[0] == tables[1]
