"""The joined stage of examples/clickstream (page_views + signups in one agent: rules, dedupe,
sessions, the interval join) over a two-partition log, without a broker: any batching with crashes
(state written, outputs lost, re-delivery from the last acknowledged batch) gives the sessions and
joins of one in-order run, and the sessions are the 30-minute sessionisation of the views that
were not flagged late."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kappa.pipeline import load
from schemas.serde import Decoder, Encoder, Registry
from stream_processors.base import MemoryState, Message
from stream_processors.joined import JoinedStage
from stream_processors.stream import StreamStage
from tests.unit.memory_registry import MemoryRegistryClient

CLICK = Path(__file__).resolve().parents[2] / "examples" / "clickstream"
T0 = 1_700_000_000_000
MIN = 60_000
PIPE = load(CLICK)
REGISTRY = Registry("memory://", client=MemoryRegistryClient())  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAPPA_PIPELINE", str(CLICK))


def _log(seed: int, n: int) -> list[Message]:
    rng = random.Random(seed)
    enc_v = Encoder(REGISTRY, "page_views-value", "page_views")
    enc_s = Encoder(REGISTRY, "signups-value", "signups")
    out: list[Message] = []
    offsets: dict[tuple[str, int], int] = {}
    clock = T0
    sent: list[dict[str, Any]] = []

    def put(topic: str, visitor: str, value: bytes) -> None:
        p = int(visitor[1:]) % 2
        off = offsets.get((topic, p), 0)
        offsets[(topic, p)] = off + 1
        out.append(Message(topic, p, off, visitor.encode(), value, clock / 1000))

    for i in range(n):
        clock += rng.randrange(0, 6 * MIN)
        v = f"v{rng.randrange(6)}"
        r = rng.random()
        if r < 0.1:
            put("signups", v, enc_s.encode_one({"visitor_id": v, "plan": rng.choice(["free", "pro", "x"]),
                                                 "event_time": clock - rng.randrange(0, 3 * MIN), "converted": True}))
            continue
        if r < 0.18 and sent:
            rec = rng.choice(sent)
        else:
            late = rng.random() < 0.08
            rec = {"view_id": f"pv{i}", "visitor_id": v, "url": rng.choice(["/", "/pricing", "bad url"]),
                   "referrer": "direct",
                   "event_time": clock - (rng.randrange(60, 240) * MIN if late else rng.randrange(0, 4 * MIN))}
            sent.append(rec)
        put("page_views", rec["visitor_id"], enc_v.encode_one(rec))
    return out


def _stage(state: dict[str, MemoryState]) -> JoinedStage:
    decoders = {n: Decoder(REGISTRY, n) for n in ("page_views", "signups")}
    stages = {n: StreamStage("v1", PIPE, n, decoders, state[n], 300_000, clock=lambda: T0 / 1000)
              for n in ("page_views", "signups")}
    return JoinedStage("v1", PIPE, stages, state["page_views"], 300_000, clock=lambda: T0 / 1000)


def _run(log: list[Message], cuts: list[int], crashes: set[int]) -> tuple[dict[str, Any], dict[str, Any],
                                                                          dict[str, Any]]:
    """Batches cut at ``cuts``; a batch in ``crashes`` writes its state, loses its outputs, and the
    next batch re-delivers from the first unacknowledged message."""
    state = {"page_views": MemoryState(), "signups": MemoryState()}
    rows: dict[str, dict[str, Any]] = {"sessions": {}, "conversions": {}, "page_views": {}}
    i, b = 0, 0
    bounds = sorted({c for c in cuts if 0 < c < len(log)} | {len(log)})
    while i < len(log):
        end = next(c for c in bounds if c > i)
        stage = _stage(state)  # a fresh worker each batch: nothing but the state carries over
        parts = stage.process(log[i:end])
        for name, out in parts:
            for p, items in out.writes.items():
                state[name].write(p, items)
        if b in crashes:
            b += 1
            crashes = crashes - {b - 1}
            continue  # outputs lost, nothing acked: the same batch again
        for _, out in parts:
            for output, emitted in out.rows.items():
                for k, r in emitted:
                    old = rows[output].get(k)
                    assert old is None or old["revision"] <= r["revision"], (k, old, r)
                    rows[output][k] = r
        for k, r in parts[0][1].enriched:
            rows["page_views"][k] = r
        i, b = end, b + 1
    live = {n: {k: r for k, r in rows[n].items() if not r.get("retracted")} for n in ("sessions", "conversions")}
    return live["sessions"], live["conversions"], rows["page_views"]


def _sessionise(views: dict[str, Any], gap: int = 30 * MIN) -> set[tuple[str, int, int, int]]:
    by: dict[str, list[int]] = {}
    for r in views.values():
        if not r["late"]:
            by.setdefault(r["visitor_id"], []).append(r["event_time"])
    out = set()
    for v, ts in by.items():
        ts.sort()
        start = prev = ts[0]
        n = 1
        for t in ts[1:]:
            if t - prev >= gap:
                out.add((v, start, prev, n))
                start, n = t, 0
            prev, n = t, n + 1
        out.add((v, start, prev, n))
    return out


def test_in_order_sessions_are_the_sessionised_not_late_views() -> None:
    log = _log(3, 400)
    sessions, joins, views = _run(log, list(range(0, len(log), 37)), set())
    assert {(r["visitor_id"], r["session_start"], r["session_end"], r["page_views"]) for r in sessions.values()} \
        == _sessionise(views)
    assert any(r["late"] for r in views.values())
    assert any(r["matched"] for r in joins.values()) and any(not r["matched"] for r in joins.values())
    for r in joins.values():  # a pair lies within the hour after its view
        if r["matched"]:
            assert 0 <= r["right_time"] - r["left_time"] <= 60 * MIN


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.lists(st.integers(1, 399), max_size=12), st.sets(st.integers(0, 12), max_size=4))
def test_any_batching_and_crash_gives_the_in_order_results(seed: int, cuts: list[int], crashes: set[int]) -> None:
    log = _log(seed, 250)
    want = _run(log, [len(log)], set())
    got = _run(log, cuts, crashes)
    assert got[0] == want[0]
    assert {k: {**r, "final": None} for k, r in got[1].items()} == {k: {**r, "final": None} for k, r in want[1].items()}
    assert {k: r["late"] for k, r in got[2].items()} == {k: r["late"] for k, r in want[2].items()}
