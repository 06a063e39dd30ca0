"""The revenue windows of the e-commerce pipeline, recorded before the generic window operator.

``data/revenue_golden.json`` was written by the implementation that predates
``stream_processors/operators/windows.py`` (``python -m tests.unit.test_revenue_compat``, run at
that commit). For seeded random order streams over three partitions, with duplicates, late and
too-late orders, random batches, idle ticks and crashes (state written, outputs lost, re-delivery
from the last committed offset), it holds every RevenueWindow record both stages emitted, in
order. The current code must emit exactly the same records (fields, values to the last bit,
revisions, finals) — and must also resume from the state and partials that the old code left
halfway (``snapshot``), as an upgraded worker does with its table and the partials topic.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from kappa.pipeline import current
from schemas.serde import Decoder, Encoder, Registry
from stream_processors.base import Emitted, MemoryState, Message
from stream_processors.stream import StreamStage
from stream_processors.window_stage import TICK, WindowStage
from tests.support.ecommerce import revenue_spec
from tests.unit.memory_registry import MemoryRegistryClient

GOLDEN = Path(__file__).parent / "data" / "revenue_golden.json"
NOW = 1_700_000_000_000
T0 = NOW - 3_600_000 - (NOW % 60_000)
GRACE = 30_000
SEEDS = (1, 2, 3, 4)
PARTS = 3
"""Partitions of orders (and of stage 1's state)."""
QPARTS = 2
"""Partitions of the partials topic (and of stage 2's state)."""


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _orders(seed: int, registry: Registry) -> dict[int, list[Message]]:
    """A seeded random order log per partition (key user_id, as the contract partitions it)."""
    rnd = random.Random(seed)
    enc = Encoder(registry, "orders-value", "orders")
    logs: dict[int, list[Message]] = {p: [] for p in range(PARTS)}
    seen: list[tuple[str, int]] = []
    t = 0
    for i in range(160):
        t += rnd.randint(0, 4_000)
        uid = rnd.randint(1, 9)
        oid = f"o{i}"
        if seen and rnd.random() < 0.08:
            oid, uid = rnd.choice(seen)  # a duplicate (same user, so the same partition)
        seen.append((oid, uid))
        back = rnd.choice([0, 0, 0, rnd.randint(0, 20_000), rnd.randint(40_000, 150_000)])
        rec = {"order_id": oid, "user_id": uid, "amount": round(rnd.uniform(0.5, 500.0), 2),
               "currency": rnd.choice(["EUR", "USD"]), "category": rnd.choice(["books", "toys", "food"]),
               "payment_method": "card", "ip_country": "DE", "event_time": T0 + max(0, t - back)}
        if rnd.random() < 0.03:
            rec["amount"] = -1.0  # rejected: never in a window
        p = uid % PARTS
        logs[p].append(Message("orders", p, len(logs[p]), str(uid).encode(), enc.encode(rec), NOW / 1000))
    return logs


class _Sim:
    """Both stages over in-memory state, driven by a seeded schedule of batches, crashes and ticks."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed * 7919)
        self.clock = _Clock()
        registry = Registry("memory://", client=MemoryRegistryClient())  # type: ignore[arg-type]
        self.s1 = MemoryState()
        self.s2 = MemoryState()
        self.orders = StreamStage("v1", current(), "orders", {"users": Decoder(registry, "users"),
                                  "orders": Decoder(registry, "orders")}, self.s1, GRACE, clock=lambda: NOW / 1000)
        self.revenue = self._revenue()
        self.log = _orders(seed, registry)
        self.committed = {p: 0 for p in range(PARTS)}
        self.partials: dict[int, list[tuple[bytes | None, bytes]]] = {q: [] for q in range(QPARTS)}
        self.qcommitted = {q: 0 for q in range(QPARTS)}
        self.records: list[list[Any]] = []

    def _revenue(self) -> WindowStage:
        return WindowStage("v1", self.s2, GRACE, idle_s=1.0, clock=self.clock, spec=revenue_spec(GRACE))

    @staticmethod
    def _write(state: MemoryState, out: Emitted) -> None:
        for p, items in out.writes.items():
            state.write(p, items)

    def _crash(self) -> tuple[bool, bool]:
        """(outputs kept, state written) of a batch: a crash after it loses one or both."""
        r = self.rnd.random()
        if r < 0.75:
            return True, True
        return r < 0.85, r >= 0.8

    def stage1(self, p: int) -> None:
        start = self.committed[p]
        ms = self.log[p][start:start + self.rnd.randint(1, 12)]
        if not ms:
            return
        out = self.orders.process(ms)
        kept, written = self._crash()
        if kept:
            for key, value in out.partials:
                self.partials[zlib.crc32(key.encode()) % QPARTS].append((key.encode(), value))
        if written:
            self._write(self.s1, out)
        if kept and written:
            self.committed[p] = ms[-1].offset + 1

    def stage2(self, q: int) -> None:
        start = self.qcommitted[q]
        batch = self.partials[q][start:start + self.rnd.randint(1, 10)]
        if not batch:
            return
        ms = [Message("partials", q, start + i, k, v) for i, (k, v) in enumerate(batch)]
        out = self.revenue.process(ms)
        kept, written = self._crash()
        if kept:
            self.records += [[k, r["window_start"], r["category"], r["currency"], r["orders"],
                              r["revenue"], r["revision"], r["final"], r["pipeline_version"], sorted(r)]
                             for k, r in out.window_values]
        if written:
            self._write(self.s2, out)
        if kept and written:
            self.qcommitted[q] = ms[-1].offset + 1
        else:
            self.revenue = self._revenue()  # the restarted worker rebuilds its view from state

    def tick(self) -> None:
        self.clock.now += self.rnd.choice([0.2, 0.5, 3.0])
        for q in self.revenue.idle():
            self.partials[q].append((None, TICK))

    def step(self) -> bool:
        """One random action; False once every input is consumed and nothing is left open."""
        pending = [p for p in range(PARTS) if self.committed[p] < len(self.log[p])]
        qpending = [q for q in range(QPARTS) if self.qcommitted[q] < len(self.partials[q])]
        if not pending and not qpending:
            self.tick()
            return any(self.qcommitted[q] < len(self.partials[q]) for q in range(QPARTS))
        r = self.rnd.random()
        if pending and (r < 0.5 or not qpending):
            self.stage1(self.rnd.choice(pending))
        elif qpending and r < 0.9:
            self.stage2(self.rnd.choice(qpending))
        else:
            self.tick()
        return True

    def snapshot(self) -> dict[str, Any]:
        def dump(state: MemoryState) -> dict[str, dict[str, str]]:
            return {str(p): {base64.b64encode(k).decode(): base64.b64encode(v).decode() for k, v in items.items()}
                    for p, items in state.data.items()}

        return {"s1": dump(self.s1), "s2": dump(self.s2), "committed": dict(self.committed),
                "qcommitted": dict(self.qcommitted), "clock": self.clock.now, "rnd": list(self.rnd.getstate()[1]),
                "partials": {str(q): [[None if k is None else k.decode(), v.decode()] for k, v in log]
                             for q, log in self.partials.items()}}

    def restore(self, snap: dict[str, Any]) -> None:
        for state, name in ((self.s1, "s1"), (self.s2, "s2")):
            state.data = {int(p): {base64.b64decode(k): base64.b64decode(v) for k, v in items.items()}
                          for p, items in snap[name].items()}
        self.committed = {int(p): o for p, o in snap["committed"].items()}
        self.qcommitted = {int(q): o for q, o in snap["qcommitted"].items()}
        self.clock.now = snap["clock"]
        self.rnd.setstate((3, tuple(snap["rnd"]), None))
        self.partials = {int(q): [(None if k is None else k.encode(), v.encode()) for k, v in log]
                         for q, log in snap["partials"].items()}
        self.revenue = self._revenue()


HALF = 40
"""Steps the old code ran before its snapshot."""


def _record(seed: int) -> dict[str, Any]:
    sim = _Sim(seed)
    for _ in range(HALF):
        sim.step()
    snap, before = sim.snapshot(), len(sim.records)
    _finish(sim)
    return {"snapshot": snap, "before": before, "records": sim.records}


def _finish(sim: _Sim) -> None:
    for _ in range(20_000):
        if not sim.step():
            return
    raise AssertionError("windows still open after 20,000 steps")


def _golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("seed", SEEDS)
def test_revenue_windows_are_the_recorded_ones(seed: int) -> None:
    want = _golden()[str(seed)]
    got = _record(seed)
    assert len(want["records"]) > 50 and any(r[7] for r in want["records"])  # closes happened
    assert json.loads(json.dumps(got["records"])) == want["records"]


@pytest.mark.parametrize("seed", SEEDS)
def test_state_and_partials_left_by_the_old_code_resume_to_the_same_records(seed: int) -> None:
    want = _golden()[str(seed)]
    sim = _Sim(seed)
    sim.restore(want["snapshot"])
    _finish(sim)
    assert json.loads(json.dumps(sim.records)) == want["records"][want["before"]:]


if __name__ == "__main__":  # records the golden file (only meaningful with the reference implementation)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({str(s): _record(s) for s in SEEDS}, separators=(",", ":")) + "\n")
    sys.stdout.write(f"wrote {GOLDEN} ({GOLDEN.stat().st_size:,} bytes)\n")
