"""The sink against the real broker, registry and chdb: exact views, poison, outage, crash.

Each test uses its own pipeline version ``t<uuid>`` (own output topics, group, tables) and
its own KAPPA_HOME (own chdb directory).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from kappa.kafka import TopicSpec, client_config, ensure_topics
from kappa.lag import group_lag, matching_topics
from kappa.settings import Settings
from kappa.topics import dlq, input_topics, output_topics
from schemas.serde import Encoder, Registry
from sinks import migrate
from sinks.backends import open_backend
from sinks.base import Backend
from sinks.embedded import EmbeddedBackend
from sinks.query import query_rows
from sinks.service import SinkService, sink_group
from tests.conftest import REPO, Stack

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_123  # epoch ms with a non-zero millisecond part: DateTime64(3) must keep it


@dataclass
class Expected:
    """What the serving views must show for the produced outputs."""

    version: str
    prefix: str
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    revenue: dict[tuple[int, str, str], tuple[int, float]] = field(default_factory=dict)
    quality: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    messages: int = 0


def produce_outputs(stack: Stack, version: str, n_orders: int = 600, seed: int = 0) -> Expected:
    """Publish encoded outputs of ``version`` (with re-deliveries and poison); return the truth."""
    prefix = f"{version}."
    settings = stack.settings(version=version, topic_prefix=prefix)
    o = output_topics(version)
    orders_dlq = dlq(input_topics(prefix).topic("orders"))
    ensure_topics(settings, stack.kafka_bootstrap,
                  [*o.specs(2), TopicSpec(orders_dlq, 1)])
    reg = Registry(stack.schema_registry_url)
    enc = {name: Encoder(reg, f"{topic}-value", name) for name, topic in (
        ("enriched_order", o.enriched), ("fraud_score", o.scores), ("revenue_window", o.window),
        ("model_quality", o.model_quality), ("drift_event", o.drift), ("rejected_event", o.rejected))}
    prod = Producer(client_config(settings, stack.kafka_bootstrap, **{
        "partitioner": "murmur2_random", "enable.idempotence": True, "linger.ms": 5}))
    exp = Expected(version, prefix)

    def send(topic: str, key: str, value: bytes) -> None:
        prod.produce(topic, key=key.encode(), value=value)
        exp.messages += 1

    cats = ["books", "games", "tools"]
    totals: dict[tuple[int, str, str], tuple[int, float]] = {}
    revisions: dict[tuple[int, str, str], int] = {}
    for i in range(n_orders):
        oid = f"o{seed}-{i}"
        cur = "EUR" if i % 3 else "USD"
        cat = cats[i % 3]
        event_time = T0 + i * 1_000
        rec = dict(order_id=oid, user_id=i + 1, amount=round(1 + i * 0.25, 2), currency=cur,
                   category=cat, payment_method="card", ip_country="DE", event_time=event_time,
                   user_country="DE" if i % 5 else None, user_segment="vip" if i % 5 else None,
                   user_signup_time=T0 - 86_400_000 if i % 5 else None, fraud_score=None,
                   late=False, source_topic=f"{prefix}orders", source_partition=i % 4,
                   source_offset=i, pipeline_version=version)
        send(o.enriched, oid, enc["enriched_order"].encode(rec))
        if i % 50 == 7:  # a processor re-emits after a crash: same order again
            send(o.enriched, oid, enc["enriched_order"].encode(rec))
        exp.orders[oid] = rec
        if i % 2 == 0:
            score = (i % 100) / 100
            send(o.scores, oid, enc["fraud_score"].encode(dict(
                order_id=oid, fraud_score=score, model="fraud", labelled_before=i,
                event_time=event_time, pipeline_version=version)))
            exp.scores[oid] = score
        window = event_time - event_time % 60_000
        key = (window, cat, cur)
        n, total = totals.get(key, (0, 0.0))
        totals[key] = (n + 1, total + rec["amount"])
        revisions[key] = revisions.get(key, 0) + 1
        send(o.window, f"{window}|{cat}|{cur}", enc["revenue_window"].encode(dict(
            window_start=window, category=cat, currency=cur, orders=totals[key][0],
            revenue=totals[key][1], revision=revisions[key], final=False, pipeline_version=version)))
    exp.revenue = dict(totals)
    for bucket in range(5):
        for step in range(3):
            labelled = bucket * 100 + step * 10 + 10
            acc = 0.5 + bucket / 20 + step / 100
            minute = T0 - T0 % 60_000 + bucket * 60_000
            send(o.model_quality, f"fraud|{minute}", enc["model_quality"].encode(dict(
                model="fraud", bucket=minute, labelled=labelled, accuracy=acc, roc_auc=acc,
                log_loss=1 - acc, drift_detections=0, pipeline_version=version, bucket_index=minute)))
            exp.quality[("fraud", minute)] = (labelled, acc)
    for bucket in range(3):  # a samples stream published in bulk: three buckets in one millisecond
        send(o.model_quality, f"phishing|{bucket}", enc["model_quality"].encode(dict(
            model="phishing", bucket=T0, labelled=100 * bucket + 100, accuracy=0.7, roc_auc=0.7,
            log_loss=0.5, drift_detections=0, pipeline_version=version, bucket_index=bucket)))
        exp.quality[("phishing", bucket)] = (100 * bucket + 100, 0.7)
    send(o.drift, "fraud", enc["drift_event"].encode(dict(
        model="fraud", detector="ADWIN", labelled=120, event_time=T0 + 90_000, action="reset",
        pipeline_version=version)))
    for i in range(3):
        send(o.rejected, f"r{i}", enc["rejected_event"].encode(dict(
            source=f"{prefix}orders/0/{i}", topic=f"{prefix}orders", reason="amount_out_of_range",
            payload=b'{"amount": -1}', rejected_at=T0 + i, stage="processor")))
        exp.rejected[("processor", "amount_out_of_range")] += 1
    dlq_enc = Encoder(reg, f"{orders_dlq}-value", "rejected_event")
    for i in range(2):
        send(orders_dlq, f"l{i}", dlq_enc.encode(dict(
            source=f"orders.jsonl:{i + 1}", topic=f"{prefix}orders", reason="invalid JSON",
            payload=b"{not json", rejected_at=T0 + i, stage="producer")))
        exp.rejected[("producer", "invalid JSON")] += 1
    for i, garbage in enumerate([b"garbage", b"\x00\x00\x00\x00"]):  # poison: not decodable
        send(o.scores, f"p{i}", garbage)
        exp.rejected[("sink", "poison")] += 1
    prod.flush(30)
    return exp


def check_views(rows: Any, exp: Expected) -> None:
    """The serving views (or a version's tables through them) equal ``exp`` exactly."""
    got = rows("SELECT count(), uniqExact(order_id), sum(toUnixTimestamp64Milli(event_time)), "
               "countIf(fraud_score IS NOT NULL), round(sum(amount), 2), countIf(user_country IS NULL) "
               "FROM kappa.orders")[0]
    orders = exp.orders.values()
    assert got == [len(exp.orders), len(exp.orders), sum(r["event_time"] for r in orders),
                   len(exp.scores), round(sum(r["amount"] for r in orders), 2),
                   sum(1 for r in orders if r["user_country"] is None)]
    scored = dict(map(tuple, rows("SELECT order_id, fraud_score FROM kappa.orders "
                                  "WHERE fraud_score IS NOT NULL")))
    assert scored == exp.scores
    rev = {(w, c, cur): (n, round(r, 6)) for w, c, cur, n, r in rows(
        "SELECT toUnixTimestamp64Milli(window_start), category, currency, orders, revenue "
        "FROM kappa.revenue_per_minute")}
    assert rev == {k: (n, round(r, 6)) for k, (n, r) in exp.revenue.items()}
    quality = {(m, b): (n, a) for m, b, n, a in rows(
        "SELECT model, bucket_index, labelled, accuracy FROM kappa.model_quality")}
    assert quality == exp.quality
    # bucket is a time like every other time column: the minute start for fraud
    assert rows("SELECT DISTINCT toTypeName(bucket) FROM kappa.model_quality") == [["DateTime64(3, 'UTC')"]]
    times = {(m, b): t for m, b, t in rows(
        "SELECT model, bucket_index, toUnixTimestamp64Milli(bucket) FROM kappa.model_quality")}
    assert times == {k: (k[1] if k[0] == "fraud" else T0) for k in exp.quality}
    rejected: Counter[tuple[str, str]] = Counter()
    for stage, reason, n in rows("SELECT stage, reason, count() FROM kappa.rejected_events "
                                 "GROUP BY stage, reason"):
        rejected[(stage, "poison" if stage == "sink" else reason)] += n
    assert rejected == exp.rejected


def backend_rows(backend: Backend) -> Any:
    return backend.rows


def _output_names(version: str) -> list[str]:
    o = output_topics(version)
    return [o.enriched, o.scores, o.window, o.model_quality, o.drift, o.rejected,
            dlq(input_topics(f"{version}.").topic("orders"))]


def end_offsets(stack: Stack, version: str) -> dict[tuple[str, int], int]:
    """End offset of every non-empty output partition of ``version``."""
    admin = AdminClient(client_config(stack.settings(), stack.kafka_bootstrap))
    lag = group_lag(admin, sink_group(version), matching_topics(admin, _output_names(version)))
    return {k: end for k, (_, end) in lag.per_partition.items() if end > 0}


def wait_landed(stack: Stack, version: str, timeout: float = 90.0) -> None:
    """Until the sink group's committed offsets reach the end of every output topic."""
    settings = stack.settings()
    admin = AdminClient(client_config(settings, stack.kafka_bootstrap))
    names = _output_names(version)
    deadline = time.monotonic() + timeout
    while True:
        lag = group_lag(admin, sink_group(version), matching_topics(admin, names))
        if lag.end > 0 and lag.total == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"sink did not land everything: lag {lag.by_topic()}")
        time.sleep(0.5)


@dataclass
class InProcess:
    """A SinkService running in a thread of the test process."""

    service: SinkService
    thread: threading.Thread

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()


def start_in_process(settings: Settings, version: str) -> InProcess:
    service = SinkService(settings, version)
    service.start()
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return InProcess(service, thread)


def sink_process(stack: Stack, home: Path, version: str, **env: str) -> subprocess.Popen[bytes]:
    """``python -m sinks serve --version V`` as the lead runs it, with extra KAPPA_* env."""
    full = stack.env(home)
    full.update(KAPPA_TOPIC_PREFIX=f"{version}.", KAPPA_SINK_BATCH_ROWS="200", **env)
    log = open(home / f"sink-{uuid.uuid4().hex[:6]}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "sinks", "serve", "--version", version],
                            cwd=REPO, env=full, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def version() -> str:
    return "t" + uuid.uuid4().hex[:10]


def test_sink_lands_views_exactly(stack: Stack, tmp_path: Path, version: str) -> None:
    """Clean run: every view equals the produced truth; duplicates and poison handled."""
    exp = produce_outputs(stack, version)
    settings = stack.settings(home=tmp_path, version=version, topic_prefix=exp.prefix)
    sink = start_in_process(settings, version)
    try:
        wait_landed(stack, version)
        check_views(lambda sql: [list(r.values()) for r in query_rows(settings, sql)], exp)
    finally:
        sink.stop()
    with open_backend(settings, readonly=True) as backend:
        check_views(backend.rows, exp)
        db = migrate.database(version)
        lineage = backend.rows(f"SELECT countIf(kafka_topic = '') + countIf(pipeline_version != "
                               f"'{version}') FROM {db}.orders")
        assert lineage == [[0]]


def test_outage_injected_inserts_no_loss_no_duplicates(stack: Stack, tmp_path: Path,
                                                       version: str) -> None:
    """The next 4 inserts fail: the sink pauses, retries with backoff, then lands exactly once."""
    exp = produce_outputs(stack, version, n_orders=300)
    settings = stack.settings(home=tmp_path, version=version, topic_prefix=exp.prefix,
                              sink_fail_inserts=4, sink_batch_rows=150)
    sink = start_in_process(settings, version)
    try:
        wait_landed(stack, version)
        assert sink.service.writer is not None and sink.service.writer.failures == 4
    finally:
        sink.stop()
    with open_backend(settings, readonly=True) as backend:
        check_views(backend.rows, exp)


@pytest.mark.reliability
@pytest.mark.parametrize("point", ["mid_batch", "before_offsets", "before_commit"])
def test_kill_9_then_restart_equals_clean_run(stack: Stack, tmp_path: Path, version: str,
                                              point: str) -> None:
    """SIGKILL the sink process at ``point`` of its 2nd batch, restart: views equal the truth."""
    exp = produce_outputs(stack, version, n_orders=400)
    crashed = sink_process(stack, tmp_path, version, KAPPA_SINK_CRASH_AT=f"{point}:2")
    assert crashed.wait(90) == -signal.SIGKILL
    proc = sink_process(stack, tmp_path, version)
    try:
        wait_landed(stack, version)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    settings = stack.settings(home=tmp_path, version=version)
    with open_backend(settings, readonly=True) as backend:
        check_views(backend.rows, exp)
        db = migrate.database(version)
        # no gaps: the offsets stored with the data reach the end of every output partition
        stored = {(t, int(p)): int(o) for t, p, o in backend.rows(
            f"SELECT topic, partition, max(next_offset) FROM {db}.sink_offsets GROUP BY topic, partition")}
    assert stored == end_offsets(stack, version)


def test_sigterm_exits_zero_and_removes_endpoint(stack: Stack, tmp_path: Path, version: str) -> None:
    """The lead's entry point: SIGTERM flushes, commits, removes the endpoint file, exits 0."""
    exp = produce_outputs(stack, version, n_orders=50)
    proc = sink_process(stack, tmp_path, version)
    address = tmp_path / "clickhouse-query.json"
    try:
        wait_landed(stack, version)
        assert address.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not address.exists()
    with open_backend(stack.settings(home=tmp_path), readonly=True) as backend:
        check_views(backend.rows, exp)
    assert os.environ.get("KAPPA_SINK_CRASH_AT") is None


def test_a_fenced_sink_exits_so_its_supervisor_restarts_it(stack: Stack, tmp_path: Path, version: str) -> None:
    """A second consumer with the sink's group.instance.id fences it (what a broker restart did
    in make reliability): librdkafka makes that fatal, so the sink must exit non-zero, not idle."""
    from confluent_kafka import Consumer

    produce_outputs(stack, version, n_orders=50)
    proc = sink_process(stack, tmp_path, version)
    group = sink_group(version)
    try:
        wait_landed(stack, version)
        intruder = Consumer(client_config(stack.settings(), stack.kafka_bootstrap, **{
            "group.id": group, "group.instance.id": f"{group}-0", "session.timeout.ms": 10_000,
            "auto.offset.reset": "latest"}))
        intruder.subscribe([output_topics(version).enriched])
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            intruder.poll(0.5)
        intruder.close()
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(p.read_text(errors="replace") for p in tmp_path.glob("sink-*.log"))
    assert code == 1, log[-2000:]
    assert "fatal Kafka error, restart needed" in log


class GatedBackend(EmbeddedBackend):
    """The real embedded engine whose data inserts wait until the test lets each one through
    (the offsets row behind them is not held: it is written as soon as its data is in)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered: queue.Queue[str] = queue.Queue()
        self.gate = threading.Semaphore(0)

    def _hold(self, table: str) -> None:
        self.entered.put(table)
        assert self.gate.acquire(timeout=120), "the test never released this insert"

    def insert_select(self, table: str, columns: list[str], select: str, token: str) -> None:
        self._hold(table)
        super().insert_select(table, columns, select, token)

    def insert_arrow(self, table: str, data: pa.Table, token: str) -> None:
        if not table.endswith(".sink_offsets"):
            self._hold(table)
        super().insert_arrow(table, data, token)


def test_a_commit_never_overtakes_its_insert(stack: Stack, tmp_path: Path, version: str) -> None:
    """While a batch's insert is held on the real engine, the sink keeps consuming (the next
    batch is handed over behind it) but commits nothing past what ClickHouse holds; each
    batch's offsets reach Kafka only once its rows and offsets are in."""
    settings = stack.settings(home=tmp_path, version=version, topic_prefix=f"{version}.",
                              sink_batch_rows=200, sink_batch_seconds=30.0)
    o = output_topics(version)
    ensure_topics(settings, stack.kafka_bootstrap, o.specs(2))
    enc = Encoder(Registry(stack.schema_registry_url), f"{o.enriched}-value", "enriched_order")
    prod = Producer(client_config(settings, stack.kafka_bootstrap, partitioner="murmur2_random"))
    n = 1000  # five batches of 200
    for i in range(n):
        prod.produce(o.enriched, key=f"o{i}".encode(), value=enc.encode(dict(
            order_id=f"o{i}", user_id=i + 1, amount=1.5, currency="EUR", category="books",
            payment_method="card", ip_country="DE", event_time=T0 + i, user_country=None,
            user_segment=None, user_signup_time=None, fraud_score=None, late=False,
            source_topic=f"{version}.orders", source_partition=0, source_offset=i,
            pipeline_version=version)))
    prod.flush(30)
    backend = GatedBackend(tmp_path / "clickhouse")
    service = SinkService(settings, version, backend=backend, serve_queries=False)
    service.start()
    calls = Counter()  # the consuming thread's polls, and its hand-overs begun / done
    poll_once, put = service.poll_once, service._pending.put

    def counted_poll() -> None:
        calls["poll"] += 1
        poll_once()

    def counted_put(batch: Any, *args: Any, **kwargs: Any) -> None:
        calls["putting"] += 1
        put(batch, *args, **kwargs)
        calls["put"] += 1

    service.poll_once = counted_poll  # type: ignore[method-assign]
    service._pending.put = counted_put  # type: ignore[method-assign]
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    admin = AdminClient(client_config(settings, stack.kafka_bootstrap))
    db = migrate.database(version)

    def committed() -> dict[tuple[str, int], int]:
        lag = group_lag(admin, sink_group(version), {o.enriched: 2})
        return {k: c for k, (c, _) in lag.per_partition.items() if c > 0}

    def stored() -> dict[tuple[str, int], int]:  # the engine is free: the held insert waits before it
        return {(t, int(p)): int(x) for t, p, x in backend.rows(
            f"SELECT topic, partition, max(next_offset) FROM {db}.sink_offsets GROUP BY topic, partition")}

    def wait_for(done: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while not done():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    try:
        held = landed = 0
        while landed < n:
            assert backend.entered.get(timeout=90) == f"{db}.orders"
            held += 1
            polls = calls["poll"]
            if held == 1:
                # consumption goes on behind the held insert: the next batch is handed over
                wait_for(lambda: calls["put"] >= 2, "the sink stopped consuming behind a held insert")
            # the consuming thread had every chance to commit: it is stuck handing over the
            # batch after next (two are in flight), or it polled again and again
            wait_for(lambda p=polls: calls["putting"] > calls["put"] or calls["poll"] >= p + 3,
                     "the consuming thread neither polled nor handed over")
            safe = stored()
            got = committed()
            assert all(got.get(k, 0) <= safe.get(k, 0) for k in got), (got, safe)
            assert not set(got) - set(safe)
            backend.gate.release()
            wait_for(lambda x=landed: service.landed_rows > x, "the released insert did not land")
            landed = service.landed_rows
        assert held == n // 200
        wait_for(lambda: committed() == stored(), "the landed offsets were never committed")
        assert sum(stored().values()) == n
    finally:
        for _ in range(10):
            backend.gate.release()
        service.stop()
        thread.join(60)
    assert not thread.is_alive()
    with open_backend(settings, readonly=True) as check:
        assert check.scalar(f"SELECT count() FROM {db}.orders FINAL") == n
