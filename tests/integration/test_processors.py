"""Stream processors on the real broker + registry: hand-computed results, and kill -9 crash tests.

Workers run as real subprocesses (``python -m stream_processors worker``) so a crash is a real
SIGKILL; every test has its own topic prefix, version (group, changelog, outputs) and KAPPA_HOME.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from kappa import topics
from kappa.kafka import client_config, ensure_topics
from kappa.lag import wait_group_stable
from schemas.serde import Decoder, Encoder, Registry
from stream_processors.app import app_id
from tests.conftest import REPO, Stack

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)
T0 = NOW - 20 * 60_000 - NOW % 60_000  # a minute boundary 20 minutes ago
ORDER = {"order_id": "", "user_id": 1, "amount": 1.0, "currency": "EUR", "category": "books",
         "payment_method": "card", "ip_country": "DE", "event_time": T0}


@dataclass
class Run:
    """Inputs of one test (prefix) and helpers to run workers of a version over them."""

    stack: Stack
    home: Path
    prefix: str
    partitions: int
    grace_s: float
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = self.stack.settings(home=self.home, topic_prefix=self.prefix,
                                            partitions=self.partitions)
        self.inputs = topics.input_topics(self.prefix)
        ensure_topics(self.settings, self.stack.kafka_bootstrap,
                      topics.input_specs(self.partitions, self.prefix))
        self.registry = Registry(self.stack.schema_registry_url)
        self.enc_o = Encoder(self.registry, f"{self.inputs.topic('orders')}-value", "orders")
        self.enc_u = Encoder(self.registry, f"{self.inputs.topic('users')}-value", "users")
        self.producer = Producer(client_config(self.settings, self.stack.kafka_bootstrap, **{
            "partitioner": "murmur2_random", "enable.idempotence": True}))

    # -- inputs -----------------------------------------------------------------------------
    def user(self, uid: int, updated: int, country: str) -> None:
        rec = {"user_id": uid, "country": country, "segment": "vip", "signup_time": T0 - 10**9,
               "updated_at": T0 + updated}
        self.producer.produce(self.inputs.topic("users"), self.enc_u.encode(rec), str(uid))

    def order(self, oid: str, uid: int = 1, amount: float = 1.0, dt: int = 0, **over: Any) -> None:
        rec = {**ORDER, "order_id": oid, "user_id": uid, "amount": amount, "event_time": T0 + dt, **over}
        self.producer.produce(self.inputs.topic("orders"), self.enc_o.encode(rec), str(uid))

    def raw_order(self, value: bytes, uid: int = 1) -> None:
        self.producer.produce(self.inputs.topic("orders"), value, str(uid))

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    # -- workers ----------------------------------------------------------------------------
    def start(self, version: str, worker: int = 0, loglevel: str = "WARNING",
              **extra_env: str) -> subprocess.Popen[bytes]:
        env = self.stack.env(self.home)
        env.update(KAPPA_TOPIC_PREFIX=self.prefix, KAPPA_PARTITIONS=str(self.partitions),
                   KAPPA_WINDOW_GRACE_SECONDS=str(self.grace_s), **extra_env)
        log = open(self.home / f"worker-{version}-{worker}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "stream_processors", "worker", "--version",
                                 version, "--worker", str(worker), "--no-learning", "--loglevel", loglevel],
                                cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    # -- outputs ----------------------------------------------------------------------------
    def read(self, topic: str, schema: str) -> list[tuple[str, dict[str, Any]]]:
        """Every record currently in ``topic`` (key, decoded value), in partition order."""
        dec = Decoder(self.registry, schema)
        c = Consumer(client_config(self.settings, self.stack.kafka_bootstrap,
                                   **{"group.id": f"read-{uuid.uuid4().hex}", "enable.auto.commit": False}))
        try:
            meta = c.list_topics(topic, timeout=10).topics[topic]
            ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in meta.partitions}
            out: list[tuple[str, dict[str, Any]]] = []
            want = {p: e for p, e in ends.items() if e > 0}
            if not want:
                return out
            c.assign([TopicPartition(topic, p, 0) for p in want])
            pos = dict.fromkeys(want, 0)
            deadline = time.time() + 30
            while any(pos[p] < want[p] for p in want) and time.time() < deadline:
                for m in c.consume(1000, timeout=1.0):
                    if m.error():
                        continue
                    pos[m.partition()] = m.offset() + 1
                    out.append(((m.key() or b"").decode(), dec.decode(m.value())))
            return out
        finally:
            c.close()

    def results(self, version: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Final per-key values: enriched orders by order_id, windows by key (highest revision)."""
        out = topics.output_topics(version)
        enriched = {k: {f: v for f, v in r.items() if f != "pipeline_version"}
                    for k, r in self.read(out.enriched, "enriched_order")}
        windows: dict[str, dict[str, Any]] = {}
        for k, r in self.read(out.window, "revenue_window"):
            if k not in windows or r["revision"] > windows[k]["revision"]:
                windows[k] = r
        return enriched, windows

    def wait_for(self, version: str, done: Callable[[dict, dict], bool], timeout: float = 120) -> tuple[dict, dict]:
        deadline = time.time() + timeout
        while True:
            enriched, windows = self.results(version)
            if done(enriched, windows):
                return enriched, windows
            if time.time() > deadline:
                logs = "\n".join(p.read_text()[-3000:] for p in self.home.glob("worker-*.log"))
                raise AssertionError(f"not done after {timeout}s: {len(enriched)} enriched, "
                                     f"{len(windows)} windows\n{logs}")
            for proc in self.procs:
                assert proc.poll() in (None, -9), f"worker exited with {proc.returncode}"
            time.sleep(1.0)


@pytest.fixture
def make_run(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def make(partitions: int = 2, grace_s: float = 2.0) -> Run:
        run = Run(stack, tmp_path / f"home-{len(runs)}", f"t{uuid.uuid4().hex[:8]}.", partitions, grace_s)
        run.home.mkdir(parents=True)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.stop_all()


def _same_inputs(enriched: dict[str, dict[str, Any]], run: Run) -> dict[str, dict[str, Any]]:
    """``enriched`` with the input topic's name (the run's prefix) taken out of its lineage."""
    return {k: {**r, "source_topic": r["source_topic"].removeprefix(run.prefix)} for k, r in enriched.items()}


def _values(w: dict[str, dict[str, Any]]) -> dict[str, tuple[int, float, bool]]:
    return {k: (r["orders"], r["revenue"], r["final"]) for k, r in w.items()}


def test_hand_computed_dlq_dedupe_enrichment_windows_and_idle_flush(make_run: Callable[..., Run]) -> None:
    run = make_run(partitions=2, grace_s=2.0)
    version = f"it{uuid.uuid4().hex[:8]}"
    run.user(1, -1000, "DE")
    run.user(1, 30_000, "FR")  # a later profile: orders from T0+30 s on see FR
    run.flush()
    run.start(version)
    group = app_id(version)
    # users first, so the join has them (the join is as-of event time, not as-of arrival)
    c = Consumer(client_config(run.settings, run.stack.kafka_bootstrap, **{"group.id": group}))
    deadline = time.time() + 60
    while True:
        tps = c.committed([TopicPartition(run.inputs.topic("users"), p) for p in range(2)], timeout=10)
        ends = [c.get_watermark_offsets(TopicPartition(run.inputs.topic("users"), p))[1] for p in range(2)]
        if sum(max(tp.offset, 0) for tp in tps) >= sum(ends):
            break
        assert time.time() < deadline, "users never consumed"
        time.sleep(0.5)
    c.close()
    run.order("o1", 1, 10.0, dt=1_000)
    run.order("o2", 1, 5.0, dt=40_000)
    run.order("o1", 1, 99.0, dt=2_000)            # duplicate of o1: dropped
    run.order("o3", 999, 1.0, dt=3_000)           # unknown user: still emitted, null attributes
    run.order("bad1", 1, -1.0, dt=4_000)          # bad_amount
    run.order("bad2", 1, 1.0, dt=4_000, currency="XXX")
    run.raw_order(b"\x00\x00\x00\x00\x00 definitely not avro")
    run.order("o6", 1, 3.0, dt=61_000)            # window T0+60 s; watermark -> T0+61 s
    run.order("o7", 1, 2.0, dt=59_000)            # window T0 ended at 60 s, 61 < 60+2: within grace
    run.order("o4", 1, 7.0, dt=130_000)           # watermark -> T0+130 s
    run.order("o5", 1, 100.0, dt=50_000)          # window T0 closed at 62 s: too late
    run.flush()

    def done(enriched: dict, windows: dict) -> bool:
        return len(enriched) == 7 and len(windows) == 3 and all(w["final"] for w in windows.values())

    enriched, windows = run.wait_for(version, done, timeout=90)
    assert {k: r["user_country"] for k, r in enriched.items()} == {
        "o1": "DE", "o2": "FR", "o3": None, "o6": "FR", "o7": "FR", "o4": "FR", "o5": "FR"}
    assert enriched["o1"]["amount"] == 10.0 and enriched["o3"]["user_segment"] is None
    assert {k for k, r in enriched.items() if r["late"]} == {"o5"}
    assert _values(windows) == {
        f"{T0}|books|EUR": (4, 18.0, True),
        f"{T0 + 60_000}|books|EUR": (1, 3.0, True),
        f"{T0 + 120_000}|books|EUR": (1, 7.0, True),
    }
    rejected = run.read(topics.output_topics(version).rejected, "rejected_event")
    reasons = sorted(r["reason"].split(":")[0] for _, r in rejected)
    assert reasons == ["bad_amount", "bad_currency", "undecodable"]
    assert all(r["source"].startswith(run.inputs.topic("orders") + "/") and r["stage"] == "processor"
               for _, r in rejected)
    assert any(r["payload"] == b"\x00\x00\x00\x00\x00 definitely not avro" for _, r in rejected)


def test_records_faust_fetched_and_never_delivered_are_read_again(make_run: Callable[..., Run]) -> None:
    """faust-streaming can lose the records of a fetch (position moved on, nothing delivered).
    With no later record in that partition to reveal the hole, only the stall watch gets them."""
    run = make_run(partitions=2)
    version = f"it{uuid.uuid4().hex[:8]}"
    for i in range(40):
        run.order(f"o{i}", uid=i + 1, dt=i * 1000)
    run.flush()
    # Faust's own fetch path (the fault is Faust's; KAPPA_FAST_CONSUMER reads orders outside it)
    run.start(version, KAPPA_FAST_CONSUMER="0", KAPPA_PROCESSOR_DROP_FETCH=f"{run.inputs.topic('orders')}:0")
    enriched, _ = run.wait_for(version, lambda e, _w: len(e) == 40, timeout=90)
    assert set(enriched) == {f"o{i}" for i in range(40)}
    log = (run.home / f"worker-{version}-0.log").read_text()
    assert "fault injection: dropped" in log and f"{run.inputs.topic('orders')}[0] (offsets 0.." in log
    assert f"{run.inputs.topic('orders')}[0]: committed at 0" in log and "reading it again from 0" in log


def test_a_worker_killed_after_writing_the_state_of_closing_windows_still_lands_them(
        make_run: Callable[..., Run]) -> None:
    """kill -9 between a revenue batch's state write (RocksDB first) and its outputs: the
    restarted worker's re-delivered partials must emit those windows again (before: the closes
    of that batch were never emitted; after a broker restart, make reliability lost 1,164 of
    1,168 windows this way)."""
    run = make_run(partitions=2, grace_s=5.0)
    version = f"rc{uuid.uuid4().hex[:8]}"
    expected: dict[str, list[Any]] = {}
    for i in range(240):  # 8 minutes of event time in order: every window closes on the watermark
        dt, amount = i * 2_000, float(i % 7 + 1)
        run.order(f"o{i}", uid=i % 20 + 1, amount=amount, dt=dt)
        key = f"{T0 + dt - dt % 60_000}|books|EUR"
        expected.setdefault(key, [0, 0.0])
        expected[key][0] += 1
        expected[key][1] += amount
    run.flush()
    proc = run.start(version, KAPPA_PROCESSOR_CRASH_ON_CLOSE="true")
    assert proc.wait(120) == -signal.SIGKILL
    assert "crash injection: SIGKILL after the state of a closing window batch" in (
        run.home / f"worker-{version}-0.log").read_text()
    run.start(version)

    def done(enriched: dict, windows: dict) -> bool:
        return len(enriched) == 240 and len(windows) == len(expected) and all(w["final"] for w in windows.values())

    try:
        _, windows = run.wait_for(version, done, timeout=90)
    except AssertionError as exc:
        raise AssertionError(f"windows lost with the killed worker's outputs: {exc}") from None
    assert {k: (r["orders"], r["revenue"]) for k, r in windows.items()} == {
        k: (n, pytest.approx(rev)) for k, (n, rev) in expected.items()}


def _stream(run: Run, n: int, seed: int = 7) -> tuple[int, int]:
    """``n`` orders over 40 users and ~15 minutes, with duplicates and disorder; returns (unique, users)."""
    rng = random.Random(seed)
    for uid in range(1, 31):  # 30 known users, 10 unknown
        run.user(uid, -60_000, rng.choice(["DE", "FR", "IT"]))
    ids: list[tuple[str, int]] = []
    for i in range(n):
        if ids and rng.random() < 0.05:
            oid, uid = rng.choice(ids)  # a duplicate: same order, so same user (same partition)
        else:
            oid, uid = f"o{i}", rng.randint(1, 40)
            ids.append((oid, uid))
        dt = i * 900_000 // n + rng.randint(-90_000, 0)  # some within grace, some too late
        run.order(oid, uid, round(rng.uniform(1, 100), 2), dt=max(dt, 0),
                  category=rng.choice(["books", "toys", "food"]), currency=rng.choice(["EUR", "USD"]))
        if i % 5000 == 0:
            run.producer.poll(0)
    run.flush()
    return len(ids), 40


def _complete(unique: int) -> Callable[[dict, dict], bool]:
    def done(enriched: dict, windows: dict) -> bool:
        return len(enriched) == unique and bool(windows) and all(w["final"] for w in windows.values())

    return done


@pytest.mark.reliability
def test_kill9_single_worker_and_two_workers_give_the_results_of_a_clean_run(
        make_run: Callable[..., Run]) -> None:
    run = make_run(partitions=4, grace_s=30.0)
    unique, _ = _stream(run, 40_000)
    done = _complete(unique)

    clean = f"clean{uuid.uuid4().hex[:6]}"
    run.start(clean, KAPPA_FAST_CONSUMER="0")  # the reference: Faust's own path, whatever the suite runs
    ref_enriched, ref_windows = run.wait_for(clean, done, timeout=240)
    run.stop_all()
    assert sum(r["orders"] for r in ref_windows.values()) + sum(
        r["late"] for r in ref_enriched.values()) == unique

    # one worker, kill -9 mid-stream (after its 3rd batch's outputs, before that batch's ack:
    # the worst point for duplicates; a kill from here once came after the last batch), restart
    crashed = f"crash{uuid.uuid4().hex[:6]}"
    proc = run.start(crashed, worker=0, KAPPA_PROCESSOR_CRASH_AFTER_BATCHES="3")
    assert proc.wait(120) == -signal.SIGKILL
    partial, _ = run.results(crashed)
    assert 0 < len(partial) < unique, "the kill came too late to test anything"
    run.start(crashed, worker=0)
    enriched, windows = run.wait_for(crashed, done, timeout=240)
    assert enriched == ref_enriched
    assert _values(windows) == _values(ref_windows)
    run.stop_all()

    # two workers in one group, kill -9 one of them mid-stream; the other takes its partitions
    # over. The same stream on new input topics, published once both workers hold partitions:
    # with it already in Kafka, the first worker to join processed all of it before the second
    # one's join completed (seen on a fast machine), and the kill tested nothing.
    pair_run = make_run(partitions=4, grace_s=30.0)
    pair = f"pair{uuid.uuid4().hex[:6]}"
    first = pair_run.start(pair, worker=0, loglevel="INFO", KAPPA_PROCESSOR_CRASH_AFTER_BATCHES="2")
    pair_run.start(pair, worker=1, loglevel="INFO")
    wait_group_stable(AdminClient(client_config(pair_run.settings, pair_run.stack.kafka_bootstrap)),
                      app_id(pair), members=2, timeout=120)
    assert _stream(pair_run, 40_000)[0] == unique
    try:
        assert first.wait(180) == -signal.SIGKILL
    except subprocess.TimeoutExpired:
        logs = "\n".join(p.read_text()[-4000:] for p in sorted(pair_run.home.glob(f"worker-{pair}-*.log")))
        raise AssertionError(f"worker 0 did not reach its 2nd orders batch in 180 s\n{logs}") from None
    enriched, windows = pair_run.wait_for(pair, done, timeout=240)
    assert _same_inputs(enriched, pair_run) == _same_inputs(ref_enriched, run)
    assert _values(windows) == _values(ref_windows)
