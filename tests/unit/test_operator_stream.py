"""The stream stage (rules, dedupe, as-of enrichment, windows) as an operator, on a pipeline that is
not the default one (examples/iot): for any delivery — batches interleaving the partitions, crashes
after a batch's state or after its outputs, re-delivery from the last acknowledged offset — the last
emitted record of every event and the rejections are those of one in-order run over the same log."""

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
from stream_processors.stream import StreamStage
from tests.unit.memory_registry import MemoryRegistryClient

IOT = Path(__file__).resolve().parents[2] / "examples" / "iot"
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
PIPE = load(IOT)
REGISTRY = Registry("memory://", client=MemoryRegistryClient())  # type: ignore[arg-type]
"""One registry for the log's writers and the stage's readers (the schema ids in the records)."""


@pytest.fixture(autouse=True)
def _iot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAPPA_PIPELINE", str(IOT))  # schemas resolve in the selected pipeline


def _log(seed: int, n: int) -> dict[int, list[Message]]:
    """Two partitions, each holding its devices' versions and readings in publish order."""
    rng = random.Random(seed)
    enc_d = Encoder(REGISTRY, "devices-value", "devices")
    enc_r = Encoder(REGISTRY, "readings-value", "readings")
    log: dict[int, list[Message]] = {0: [], 1: []}
    offsets: dict[tuple[str, int], int] = {}
    clock = T0

    def put(topic: str, p: int, value: bytes) -> None:
        nonlocal clock
        clock += rng.randrange(1, 3000)
        off = offsets.get((topic, p), 0)
        offsets[(topic, p)] = off + 1
        log[p].append(Message(topic, p, off, None, value, clock / 1000))

    devices = {f"d{i}": i % 2 for i in range(4)}
    for d, p in devices.items():
        put("devices", p, enc_d.encode_one({"device_id": d, "site": "berlin", "kind": "thermometer",
                                            "installed_at": T0 - 10**9, "updated_at": T0 - 10**8}))
    sent: list[dict[str, Any]] = []
    for i in range(n):
        d = rng.choice(sorted(devices))
        r = rng.random()
        if r < 0.05:  # the device moves, valid from a time around now
            put("devices", devices[d], enc_d.encode_one({
                "device_id": d, "site": rng.choice(["lyon", "porto"]), "kind": "thermometer",
                "installed_at": T0 - 10**9, "updated_at": clock - rng.randrange(-60_000, 60_000)}))
            continue
        if r < 0.12 and sent:
            rec = rng.choice(sent)  # re-sent: a duplicate
        else:
            late = rng.random() < 0.05
            rec = {"reading_id": f"r{i}", "device_id": d, "metric": "temperature",
                   "value": round(rng.uniform(-80, 100), 1), "unit": "celsius",
                   "event_time": clock - (20 * 60_000 if late else rng.randrange(0, 30_000))}
            sent.append(rec)
        put("readings", devices[rec["device_id"]], enc_r.encode_one(rec))
    return log


def _stage(state: MemoryState, log: dict[int, list[Message]]) -> StreamStage:
    decoders = {"devices": Decoder(REGISTRY, "devices"), "readings": Decoder(REGISTRY, "readings")}
    stage = StreamStage("v1", PIPE, "readings", decoders, state, 30_000, clock=lambda: T0 / 1000)
    stage.table_source = lambda p, start, until=None: [
        m for m in log[p] if m.topic == "devices" and m.offset >= start and (until is None or m.offset < until)]
    stage.stream_source = lambda p, start, until=None: [
        m for m in log[p] if m.topic == "readings" and m.offset >= start and (until is None or m.offset < until)]
    return stage


def _final(outs: list[Any]) -> tuple[dict[str, Any], set[str]]:
    last: dict[str, Any] = {}
    rejected: set[str] = set()
    for out in outs:
        for key, rec in out.enriched:
            last[key] = {k: v for k, v in rec.items()}
        rejected |= {r["source"] + " " + r["reason"] for r in out.rejected}
    return last, rejected


def _in_order(log: dict[int, list[Message]]) -> tuple[dict[str, Any], set[str]]:
    state = MemoryState()
    stage = _stage(state, log)
    outs = []
    for p in (0, 1):
        out = stage.process(log[p])
        for part, items in out.writes.items():
            state.write(part, items)
        outs.append(out)
    return _final(outs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), schedule=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 9)),
                                                      min_size=1, max_size=40))
def test_any_delivery_with_crashes_gives_the_results_of_one_in_order_run(
        seed: int, schedule: list[tuple[int, int]]) -> None:
    log = _log(seed, 60)
    want = _in_order(log)
    state = MemoryState()
    stage = _stage(state, log)
    acked = {0: 0, 1: 0}  # next offset to deliver, per partition (index into its log)
    outs: list[Any] = []
    rng = random.Random(seed)
    steps = iter(schedule)
    while any(acked[p] < len(log[p]) for p in (0, 1)):
        size, crash = next(steps, (50, 0))
        batch: list[Message] = []
        taken = dict(acked)
        for _ in range(size):  # interleave the partitions, each in offset order
            open_ = [p for p in (0, 1) if taken[p] < len(log[p])]
            if not open_:
                break
            p = rng.choice(open_)
            batch.append(log[p][taken[p]])
            taken[p] += 1
        out = stage.process(batch)
        if crash == 1:  # killed before the state was written: nothing of the batch survives
            stage = _stage(state, log)
            continue
        for part, items in out.writes.items():
            state.write(part, items)
        if crash == 2:  # killed after the state, before the outputs: they are lost
            stage = _stage(state, log)
            continue
        outs.append(out)
        if crash == 3:  # killed after the outputs, before the ack: delivered again
            stage = _stage(state, log)
            continue
        acked = taken
    got = _final(outs)
    assert len(want[0]) > 20 and want[1], "the log must hold valid and invalid events"
    assert got[1] == want[1]
    assert got[0] == want[0]
