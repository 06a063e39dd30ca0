"""The session window operator: declarations, gap boundaries, merging by a late event (any arrival
order), idle close, too late, re-delivery; properties over random batching, idle ticks and crashes
(state restored from a pickled snapshot, re-delivery from the last committed offset)."""

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
from stream_processors.operators.sessions import PartitionSessions, SessionSpec, SessionSpecError, parse_session

MIN = 60_000
AGGS = {"views": "count", "landing": "first(url)", "exit": "last(url)", "total": "sum(v)", "low": "min(v)",
        "high": "max(v)", "mean": "avg(v)", "valued": "count(v)"}


def spec_of(gap: str = "30m", grace: str = "0s", aggs: dict[str, str] = AGGS) -> SessionSpec:
    return parse_session("s", {"gap": gap, "grace": grace, "keys": ["k"], "aggregations": aggs})


def ev(k: str, url: str = "/", v: float | None = 1.0) -> dict[str, Any]:
    return {"k": k, "url": url, "v": v}


Table = dict[str, dict[str, Any]]


def land(table: Table, rows: dict[str, dict[str, Any]]) -> None:
    """What ``ReplacingMergeTree(revision)`` keeps: the highest revision per key (a revision
    always names the same content: asserted)."""
    for key, row in rows.items():
        old = table.get(key)
        if old is not None and old["revision"] == row["revision"]:
            assert old == row, f"revision {row['revision']} of {key} with two contents"
        if old is None or row["revision"] >= old["revision"]:
            table[key] = row


def live(table: Table) -> Table:
    """The serving view: the rows that are not retracted."""
    return {k: r for k, r in table.items() if not r["retracted"]}


def run(spec: SessionSpec, events: list[tuple[int, dict[str, Any]]]) -> tuple[Table, list[str], PartitionSessions]:
    """One partition, one batch per event (offset order); the landed table and the verdicts."""
    s, table, kinds = PartitionSessions(spec), Table(), list[str]()
    for offset, (t, e) in enumerate(events):
        kinds.append(s.observe(offset, e, t)[0])
        land(table, s.end_batch(offset))
    return table, kinds, s


# -- declarations -------------------------------------------------------------------------------
def test_declaration() -> None:
    spec = parse_session("visits", {"stream": "page_views", "gap": "30m", "keys": ["visitor_id"],
                                    "aggregations": {"page_views": "count", "landing_url": "first(url)"}},
                         grace_ms=5_000)
    assert (spec.gap_ms, spec.grace_ms, spec.keys, spec.stream) == (30 * MIN, 5_000, ("visitor_id",), "page_views")
    assert spec.slots == (("count", None), ("first", "url"))
    assert parse_session("v", {"gap": "1m", "keys": ["k"]}).aggregations[0].name == "events"


@pytest.mark.parametrize(("decl", "message"), [
    ({"keys": ["k"]}, "sessions.s: gap is missing"),
    ({"gap": "30 minutes", "keys": ["k"]}, "sessions.s.gap: '30 minutes' is not a duration"),
    ({"gap": "0s", "keys": ["k"]}, "sessions.s: gap must be a positive duration"),
    ({"gap": "1m", "grace": "-1s", "keys": ["k"]}, "sessions.s.grace: '-1s' is not a duration"),
    ({"gap": "1m"}, "sessions.s.keys: sessions are per key"),
    ({"gap": "1m", "keys": "k"}, "sessions.s.keys: write a list of field names"),
    ({"gap": "1m", "keys": ["k"], "size": "1m"}, "sessions.s: unknown setting(s) size"),
    ({"gap": "1m", "keys": ["k"], "aggregations": {"x": "first()"}}, "sessions.s.aggregations.x: first needs a field"),
    ({"gap": "1m", "keys": ["k"], "aggregations": {"x": "p50(v)"}}, "sessions.s.aggregations.x: unknown function"),
    ({"gap": "1m", "keys": ["k"], "aggregations": {}}, "sessions.s.aggregations: declare at least one"),
    ({"gap": "1m", "keys": ["k"], "aggregations": {"session_start": "count"}},
     "sessions.s: output name(s) session_start used twice or reserved"),
])
def test_a_bad_declaration_names_the_entry_in_one_line(decl: dict[str, Any], message: str) -> None:
    with pytest.raises(SessionSpecError) as err:
        parse_session("s", decl)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert isinstance(err.value, KappaError)


# -- by hand ------------------------------------------------------------------------------------
def test_gap_boundaries_less_than_the_gap_joins_the_gap_itself_splits() -> None:
    table, kinds, _ = run(spec_of("30m"), [(0, ev("a", "/1")), (30 * MIN - 1, ev("a", "/2")),   # same session
                                           (60 * MIN - 1, ev("a", "/3")),                        # exactly 30 min later
                                           (0, ev("b", "/x"))])
    assert kinds == ["on_time", "on_time", "on_time", "too_late"]  # b at 0: its session alone would be closed
    assert {k: (r["session_start"], r["session_end"], r["views"], r["landing"], r["exit"], r["final"])
            for k, r in live(table).items()} == {
        "a|0": (0, 30 * MIN - 1, 2, "/1", "/2", True),  # closed: 30 min - 1 + 30 min <= 60 min - 1
        f"a|{60 * MIN - 1}": (60 * MIN - 1, 60 * MIN - 1, 1, "/3", "/3", False)}


def test_every_aggregation_by_hand() -> None:
    table, _, s = run(spec_of("10m"), [(5 * MIN, ev("a", "/b", 2.0)), (1 * MIN, ev("a", "/a", None)),
                                       (9 * MIN, ev("a", "/c", -1.5)), (9 * MIN, ev("a", "/d", 4.0))])
    assert table[f"a|{5 * MIN}"]["retracted"]  # the start moved from 5 to 1 min
    (row,) = live(table).values()
    assert row == {"k": "a", "session_start": MIN, "session_end": 9 * MIN, "views": 4, "landing": "/a",
                   "exit": "/d",  # same time as /c, later offset
                   "total": 4.5, "low": -1.5, "high": 4.0, "mean": 1.5, "valued": 3,
                   "revision": 8, "final": False, "retracted": False}
    assert s.late == {"within_grace": 1}  # 1 min; 9 min is at the watermark, not behind it


def test_a_late_event_bridging_two_sessions_merges_them_in_any_arrival_order() -> None:
    """gap 30 min, grace 30 min: views at 0:00 and 0:50 are two sessions; one at 0:25 is less
    than 30 min from both. Every order of the three gives one session [0:00, 0:50] of 3 views,
    and the rows of starts that went away are retracted."""
    spec = spec_of("30m", "30m")
    views = [(0, ev("v", "/home")), (50 * MIN, ev("v", "/pricing")), (25 * MIN, ev("v", "/blog"))]
    for order in itertools.permutations(views):
        table, kinds, _ = run(spec, list(order))
        assert "too_late" not in kinds
        assert {k: (r["session_start"], r["session_end"], r["views"], r["landing"], r["exit"], r["revision"])
                for k, r in live(table).items()} == {"v|0": (0, 50 * MIN, 3, "/home", "/pricing", 6)}
    table, _, _ = run(spec, views)  # the order of the docstring: 0:50 had a row, merged away
    assert table[f"v|{50 * MIN}"] == {"k": "v", "session_start": 50 * MIN, "session_end": 50 * MIN, "views": 1,
                                       "landing": "/pricing", "exit": "/pricing", "total": 1.0, "low": 1.0,
                                       "high": 1.0, "mean": 1.0, "valued": 1, "revision": 6, "final": True,
                                       "retracted": True}
    table, _, _ = run(spec, [views[1], views[2], views[0]])  # the start moves from 0:50 to 0:25, then to 0:00
    assert sorted(table) == ["v|0", f"v|{25 * MIN}", f"v|{50 * MIN}"]
    assert [table[k]["retracted"] for k in sorted(table)] == [False, True, True]
    assert (table[f"v|{25 * MIN}"]["revision"], table[f"v|{50 * MIN}"]["revision"]) == (6, 4)


def test_without_grace_the_bridging_event_is_too_late_and_counted() -> None:
    """grace 0: the 0:00 session closed when the watermark reached 0:50 (0:00 + 30 min <= 0:50),
    so 0:25, which would join it, is too late: counted, added nowhere."""
    table, kinds, s = run(spec_of("30m"), [(0, ev("v")), (50 * MIN, ev("v")), (25 * MIN, ev("v"))])
    assert kinds == ["on_time", "on_time", "too_late"]
    assert s.late == {"too_late": 1}
    assert {k: (r["views"], r["final"]) for k, r in live(table).items()} == {"v|0": (1, True),
                                                                            f"v|{50 * MIN}": (1, False)}


def test_too_late_by_a_closed_session_within_the_same_batch() -> None:
    """The watermark closes a session mid-batch: a later event of that batch that would join it
    is too late as it would be in batches of one (verdicts do not depend on the batching)."""
    events = [(0, ev("a")), (40 * MIN, ev("b")), (29 * MIN, ev("a"))]  # a's [0, 0] closed at 30 min
    s = PartitionSessions(spec_of("30m", "5m"))  # closes at 0 + 35 min <= 40 min
    assert [s.observe(o, e, t)[0] for o, (t, e) in enumerate(events)] == ["on_time", "on_time", "too_late"]
    assert run(spec_of("30m", "5m"), events)[1] == ["on_time", "on_time", "too_late"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0


def test_idle_close_shows_sessions_final_without_changing_them() -> None:
    spec = spec_of("30m", "1m")
    s, table = PartitionSessions(spec), Table()
    s.observe(0, ev("a"), 10 * MIN)
    land(table, s.end_batch(0, now=1000.0))
    assert s.idle(1001.0, idle_s=2.0) == {}  # not idle yet
    assert s.idle(1000.0 + 30 * 60 + 59, idle_s=2.0) == {}  # 10 min + 30 min 59 s < end + gap + grace
    shown = s.idle(1000.0 + 31 * 60, idle_s=2.0)
    assert [(r["revision"], r["final"]) for r in shown.values()] == [(3, True)]
    assert s.idle(1000.0 + 40 * 60, idle_s=2.0) == {}  # shown once
    land(table, shown)
    assert list(s.open) == ["a"]  # the state is a function of the log: still open
    s.observe(1, ev("a"), 20 * MIN)  # the log goes on: the session grows, a new revision, open again
    land(table, s.end_batch(1, now=5000.0))
    assert [(r["views"], r["revision"], r["final"]) for r in table.values()] == [(2, 4, False)]


def test_redelivery_after_a_crash_re_emits_the_lost_rows_and_counts_nothing_twice() -> None:
    spec = spec_of("30m")
    s = PartitionSessions(spec)
    for o, t in enumerate((0, 10 * MIN, 50 * MIN)):
        s.observe(o, ev("a"), t)
    lost = s.end_batch(2)  # the state is written, the worker dies before these rows are flushed
    snapshot = pickle.dumps(s)
    again = pickle.loads(snapshot)
    assert again == s and again.seen is None
    assert again.observe(1, ev("a"), 10 * MIN) == ("on_time", False)  # re-delivered from offset 1
    assert again.observe(2, ev("a"), 50 * MIN) == ("on_time", False)
    assert again.end_batch(2) == lost
    assert again.observe(3, ev("a"), 51 * MIN) == ("on_time", True)
    rows = again.end_batch(3)  # a batch after offset 2: those rows were flushed, not emitted again
    assert list(rows) == [f"a|{50 * MIN}"] and rows[f"a|{50 * MIN}"]["views"] == 2
    assert list(again.pending) == [f"a|{50 * MIN}"]


# -- properties ---------------------------------------------------------------------------------
PARTS = 2
KEYS = ["a", "b", "c", "d"]
VALUES = [0.5, 1.0, 2.0, -3.0, None]


def partition(key: str) -> int:
    return zlib.crc32(key.encode()) % PARTS


def logs_of(drawn: list[tuple[str, int, int, float | None]]) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """Per partition (by key), events whose times advance by ``step`` and come ``back`` late now and then."""
    logs: dict[int, list[tuple[int, dict[str, Any]]]] = {p: [] for p in range(PARTS)}
    now = 100 * MIN
    for i, (k, step, back, v) in enumerate(drawn):
        now += step
        logs[partition(k)].append((now - back, {"k": k, "url": f"/{i}", "v": v}))
    return logs


def in_order(spec: SessionSpec, logs: dict[int, list[tuple[int, dict[str, Any]]]]) -> tuple[Table, list[Any]]:
    """One in-order run: each partition in one batch, then shown final as an idle stream would."""
    table: Table = {}
    kinds: list[Any] = []
    for p, events in logs.items():
        s = PartitionSessions(spec)
        kinds += [(p, o, s.observe(o, e, t)[0]) for o, (t, e) in enumerate(events)]
        land(table, s.end_batch(len(events) - 1 if events else None, now=0.0))
        land(table, s.idle(1e12, idle_s=1.0))
    return table, kinds


def sessionise(spec: SessionSpec, logs: dict[int, list[tuple[int, dict[str, Any]]]],
               kinds: list[Any]) -> dict[str, tuple[Any, ...]]:
    """Sessions by definition, independently of the operator: per key, the accepted events sorted by
    (time, offset), split where consecutive times differ by ``gap`` or more."""
    accepted: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    for p, o, kind in kinds:
        if kind != "too_late":
            t, e = logs[p][o]
            accepted.setdefault(e["k"], []).append((t, o, e))
    out = {}
    for k, evs in accepted.items():
        evs.sort(key=lambda x: x[:2])
        groups: list[list[tuple[int, int, dict[str, Any]]]] = []
        for x in evs:
            if groups and x[0] - groups[-1][-1][0] < spec.gap_ms:
                groups[-1].append(x)
            else:
                groups.append([x])
        for g in groups:
            vs = [e["v"] for _, _, e in g if e["v"] is not None]
            out[f"{k}|{g[0][0]}"] = (g[0][0], g[-1][0], len(g), g[0][2]["url"], g[-1][2]["url"],
                                     min(vs, default=None), max(vs, default=None), len(vs), sum(vs))
    return out


def summary(table: Table) -> dict[str, tuple[Any, ...]]:
    return {k: (r["session_start"], r["session_end"], r["views"], r["landing"], r["exit"], r["low"], r["high"],
                r["valued"], r["total"]) for k, r in live(table).items()}


class Sim:
    """A worker over both partitions driven by ``rnd``: random batch sizes and partitions, offsets
    committed now and then (re-delivery starts at the last commit), crashes before the state is
    written, after it, or after the rows (the worker's memory gone, state restored from the pickled
    snapshot), and idle ticks of a wall clock."""

    def __init__(self, spec: SessionSpec, logs: dict[int, list[tuple[int, dict[str, Any]]]],
                 rnd: random.Random, crashes: int) -> None:
        self.spec, self.logs, self.rnd, self.crashes = spec, logs, rnd, crashes
        self.snapshots: dict[int, bytes] = {p: pickle.dumps(PartitionSessions(spec)) for p in logs}
        self.committed = dict.fromkeys(logs, 0)
        self.table: Table = {}
        self.kinds: dict[tuple[int, int], str] = {}
        self.now = 0.0
        self.restart()

    def restart(self) -> None:
        self.live = {p: pickle.loads(raw) for p, raw in self.snapshots.items()}
        self.pos = dict(self.committed)

    def batch(self, p: int) -> None:
        start = self.pos[p]
        events = self.logs[p][start:start + self.rnd.randint(1, 5)]
        s = self.live[p]
        judged = []
        for o, (t, e) in enumerate(events, start):
            kind, fresh = s.observe(o, e, t)
            if fresh:
                assert (p, o) not in self.kinds
                self.kinds[p, o] = kind
                judged.append((p, o))
        rows = s.end_batch(start + len(events) - 1, now=self.now)
        fate = "ok" if not self.crashes or self.rnd.random() < 0.7 else self.rnd.choice(
            ["before state", "before rows", "before commit"])
        if fate != "ok":
            self.crashes -= 1
        if fate != "before state":
            self.snapshots[p] = pickle.dumps(s)
        if fate in ("ok", "before commit"):
            land(self.table, rows)
        if fate == "ok":
            self.pos[p] = start + len(events)
            if self.rnd.random() < 0.5:
                self.committed[p] = self.pos[p]
        else:
            if fate == "before state":  # judged again after the restart
                for po in judged:
                    del self.kinds[po]
            self.restart()

    def run(self) -> None:
        while True:
            todo = [p for p in self.logs if self.pos[p] < len(self.logs[p])]
            if not todo:
                break
            if self.rnd.random() < 0.15:
                self.now += self.rnd.choice([0.5, 5.0, 3000.0])
                for s in self.live.values():
                    land(self.table, s.idle(self.now, idle_s=1.0))
                continue
            self.batch(self.rnd.choice(todo))
        for s in self.live.values():  # drained: the stream goes idle, every session is shown final
            for now in (1e12, 2e12):  # a worker restarted without a batch since counts idle from its first tick
                land(self.table, s.idle(now, idle_s=1.0))


specs = st.sampled_from([("30m", "0s"), ("30m", "10m"), ("10m", "30m"), ("5m", "0s"), ("20m", "1h")])
events = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from([0, 0, MIN, 4 * MIN, 12 * MIN, 40 * MIN]),
                            st.sampled_from([0, 0, 0, 3 * MIN, 15 * MIN, 45 * MIN, 3 * 60 * MIN]),
                            st.sampled_from(VALUES)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs, events, st.integers(0, 2**32))
def test_any_batching_and_crashes_give_the_sessions_of_one_in_order_run(
        decl: tuple[str, str], drawn: list[Any], schedule: int) -> None:
    spec = spec_of(*decl)
    logs = logs_of(drawn)
    want, kinds = in_order(spec, logs)
    assert summary(want) == sessionise(spec, logs, kinds)  # the in-order run: sessions by definition
    assert all(r["final"] for r in want.values())
    sim = Sim(spec, logs, random.Random(schedule), crashes=6)
    sim.run()
    assert sim.kinds == {(p, o): k for p, o, k in kinds}  # every event judged once, as in order
    assert sim.table == want  # every row, tombstones and revisions included


@settings(max_examples=100, deadline=None)
@given(specs, st.lists(st.tuples(st.sampled_from([0, MIN, 9 * MIN, 25 * MIN, 31 * MIN, 70 * MIN]),
                                 st.sampled_from(VALUES)), min_size=1, max_size=8), st.randoms())
def test_events_not_too_late_give_the_same_sessions_in_any_arrival_order(
        decl: tuple[str, str], drawn: list[tuple[int, float | None]], rnd: random.Random) -> None:
    """One key, the same events in two offset orders: whichever were not too late in either order
    are sessionised alike (the arrival order changes only which events are too late)."""
    spec = spec_of(decl[0], "1d")  # a grace that admits every event: nothing is too late
    one = [(t, {"k": "a", "url": f"/{i}", "v": v}) for i, (t, v) in enumerate(drawn)]
    two = list(one)
    rnd.shuffle(two)
    a, b = run(spec, one), run(spec, two)
    assert "too_late" not in a[1] + b[1]

    def by_content(table: Table) -> set[tuple[Any, ...]]:
        return {(r["session_start"], r["session_end"], r["views"], r["low"], r["high"], r["valued"])
                for r in live(table).values()}
    assert by_content(a[0]) == by_content(b[0])
