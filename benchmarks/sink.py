"""Sink throughput into the embedded engine: chdb alone vs the Kappa sink, rows/s.

    .venv/bin/python benchmarks/sink.py [--rows 500000] [--kafka]
    .venv/bin/python benchmarks/sink.py --freshness [--rate 5000] [--seconds 30]

Stages measured (same EnrichedOrder rows, 50k-row batches, fresh chdb directory):
  chdb alone        one prebuilt Arrow table -> INSERT ... SELECT * FROM Python(table)
  kappa writer      decoded rows (tuples, as Decoder.decode_row yields them) -> Batch ->
                    Arrow per table -> idempotent insert + offsets row
  kappa sink (e2e)  with --kafka: Kafka -> consume -> Avro decode -> writer -> commit, from the
                    first consumed message until all rows landed (and again incl. the
                    consumer-group join), once with per-message decode (generated reader)
                    and once with the bulk path (raw Avro -> one INSERT in chdb,
                    sinks/bulk.py); landed = written to ClickHouse by the sink's landing
                    thread; the row count in ClickHouse and the group lag (offsets are
                    committed right after) are checked afterwards
                    (needs KAPPA_KAFKA_BOOTSTRAP / KAPPA_SCHEMA_REGISTRY_URL or `kappa up`)
Target: >= 500k rows/s for the sink into the embedded engine.

Freshness (--freshness): `kappa run` (processors + sink, embedded engine) on fresh topics;
valid orders are produced at a steady --rate with event_time = produce time (ms). One
order in 50 is a probe; a poller asks `kappa.orders` (through the sink's read-only
endpoint, as `kappa query` does) every 50 ms which outstanding probes are visible, so a
probe's freshness = the end of the first query that returns it - its produce time
(resolution: the poll interval plus one query). Reported: p50/p90/p99/max over probes after
a warm-up, and, over every measured order, ``ingested_at - event_time`` (produce ->
the sink's insert call), which splits the path into "before the sink's insert" and "insert".
Target: p99 <= 2 s at a steady 5k events/s.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kappa.settings import Settings, get_settings
from sinks import migrate
from sinks.base import Backend
from sinks.embedded import EmbeddedBackend
from sinks.rows import TABLES
from sinks.writer import Batch, Writer

T0 = 1_700_000_000_123


def records(n: int, version: str) -> list[dict[str, Any]]:
    """``n`` decoded EnrichedOrder records with the sink's lineage fields."""
    return [dict(order_id=f"o{i}", user_id=i + 1, amount=1.0 + i % 1000, currency="EUR",
                 category=("books", "games", "tools")[i % 3], payment_method="card", ip_country="DE",
                 event_time=T0 + i, user_country="DE", user_segment="vip", user_signup_time=T0,
                 fraud_score=None, late=False, source_topic="orders", source_partition=i % 4,
                 source_offset=i, pipeline_version=version, kafka_topic="kappa.bench.orders.enriched",
                 kafka_partition=i % 4, kafka_offset=i // 4, ingested_at=T0)
            for i in range(n)]


def bench_chdb(backend: Backend, recs: list[dict[str, Any]], version: str, batch: int) -> float:
    tables = [TABLES["orders"].arrow(recs[i:i + batch]) for i in range(0, len(recs), batch)]
    db = migrate.database(version)
    t0 = time.perf_counter()
    for i, t in enumerate(tables):
        backend.insert_arrow(f"{db}.orders", t, f"chdb-{i}")
    return time.perf_counter() - t0


def bench_writer(backend: Backend, recs: list[dict[str, Any]], version: str, batch: int) -> float:
    """Decoded rows (tuples, as ``Decoder.decode_row`` yields them) -> Batch -> Writer."""
    writer = Writer(backend, version)
    fields = TABLES["orders"].fields
    rows = [tuple(r[f] for f in fields) for r in recs]
    t0 = time.perf_counter()
    for start in range(0, len(rows), batch):
        b = Batch()
        for j, r in enumerate(rows[start:start + batch], start):
            b.add_values("orders", r, "kappa.bench.orders.enriched", j % 4, j // 4)
        writer.write(b)
    return time.perf_counter() - t0


def encoded(recs: list[dict[str, Any]]) -> tuple[list[bytes], bytes]:
    """``recs`` as Confluent-framed Avro messages (writer = reader schema) and their header."""
    import json as _json

    from schemas.fastpath import compile_writer
    from schemas.serde import schema_text

    header = b"\x00\x00\x00\x00\x07"
    write = compile_writer(_json.loads(schema_text("enriched_order")), header)
    assert write is not None
    fields = TABLES["orders"].fields
    return [write({f: r[f] for f in fields}) for r in recs], header


def bench_bulk_writer(backend: Backend, recs: list[dict[str, Any]], version: str, batch: int) -> float:
    """The sink's write path for consumed messages: raw Avro -> Batch -> one engine INSERT + offsets."""
    import io
    import json as _json

    import fastavro

    from schemas.serde import reader_schema, schema_text
    from sinks.bulk import bulk_schema

    values, header = encoded(recs)
    schema = bulk_schema(_json.loads(schema_text("enriched_order")))
    assert schema is not None
    fields, reader = TABLES["orders"].fields, reader_schema("enriched_order")

    def decode_row(value: bytes) -> tuple[Any, ...]:  # the sink's lag metric: one per batch
        rec = fastavro.schemaless_reader(io.BytesIO(value[5:]), reader, reader)
        return tuple(rec[f] for f in fields)  # type: ignore[call-overload,index]
    writer = Writer(backend, version)
    topic = "kappa.bench.orders.enriched"
    t0 = time.perf_counter()
    for start in range(0, len(values), batch):
        chunk = values[start:start + batch]
        idx = range(start, start + len(chunk))
        b = Batch()
        b.add_raw_many("orders", topic, schema, header, decode_row, chunk, [j % 4 for j in idx],
                       [j // 4 for j in idx], [T0] * len(chunk))
        writer.write(b)
    return time.perf_counter() - t0


def bench_raw_consume(n: int, topic: str, settings: Settings) -> float:
    """Seconds for a bare confluent-kafka consumer (the sink's fetch settings) to read ``n``
    messages of ``topic`` and touch each one's value, partition, offset and timestamp: the
    ceiling of any Python sink reading Kafka."""
    from confluent_kafka import Consumer

    from kappa.kafka import client_config

    c = Consumer(client_config(settings, settings.kafka_bootstrap or "", **{
        "group.id": "bench-raw-" + uuid.uuid4().hex[:6], "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "queued.max.messages.kbytes": 65_536,
        "queued.min.messages": 1_000_000, "max.partition.fetch.bytes": 8 << 20}))
    c.subscribe([topic])
    got, first = 0, None
    while got < n:
        msgs = c.consume(50_000, 1.0)
        if msgs and first is None:
            first = time.perf_counter()
        _ = [(m.value(), m.partition(), m.offset(), m.timestamp()) for m in msgs]
        got += len(msgs)
    c.close()
    return time.perf_counter() - (first or time.perf_counter())


def bench_e2e(n: int, home: Path, bulk_decode: bool = True) -> tuple[float, float, int, float]:
    """(seconds from the first consumed message to all landed, seconds incl. group join, rows,
    seconds of a bare consumer reading the same topic).

    Landed means written to ClickHouse by the sink's landing thread; the row count in
    ClickHouse and the group's lag (committed on the sink's next poll) are checked afterwards.
    """
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from kappa.kafka import client_config, ensure_topics
    from kappa.lag import group_lag, matching_topics
    from kappa.stack import endpoints
    from kappa.topics import output_topics
    from schemas.serde import Encoder, Registry
    from sinks.service import SinkService, sink_group

    version = "bench" + uuid.uuid4().hex[:8]
    base = get_settings()
    ep = endpoints(base)
    settings = Settings(home=home, kafka_bootstrap=ep.kafka_bootstrap,
                        schema_registry_url=ep.schema_registry_url, version=version,
                        topic_prefix=version + ".", sink_batch_rows=50_000)
    o = output_topics(version)
    ensure_topics(settings, ep.kafka_bootstrap, o.specs(4))
    enc = Encoder(Registry(ep.schema_registry_url), o.enriched + "-value", "enriched_order")
    prod = Producer(client_config(settings, ep.kafka_bootstrap, partitioner="murmur2_random",
                                  **{"linger.ms": 20, "batch.size": 1_000_000}))
    recs = records(n, version)
    for r in recs:
        for k in ("kafka_topic", "kafka_partition", "kafka_offset", "ingested_at"):
            del r[k]
    for value, r in zip(enc.encode_many(recs), recs, strict=True):
        prod.produce(o.enriched, key=r["order_id"].encode(), value=value)
        prod.poll(0)
    prod.flush(60)
    service = SinkService(settings, version, serve_queries=False, bulk_decode=bulk_decode)
    service.start()
    marks: dict[str, float] = {}
    add_many = service._add_many

    def timed_add(msgs: Any) -> None:
        # the first message, not the first event: a consume call can return an error event
        # (an unknown DLQ pattern) long before the group's first fetch
        if "first" not in marks and any(m.error() is None for m in msgs):
            marks["first"] = time.perf_counter()
        add_many(msgs)

    service._add_many = timed_add  # type: ignore[method-assign]
    thread = threading.Thread(target=service.run, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    while service.landed_rows < n and thread.is_alive():
        time.sleep(0.005)
    marks["done"] = time.perf_counter()
    if service.landed_rows < n:
        raise SystemExit("the sink stopped before everything landed")
    service.stop()
    thread.join(60)
    with EmbeddedBackend(home / "clickhouse") as backend:
        rows = int(backend.scalar(f"SELECT count() FROM {migrate.database(version)}.orders FINAL"))
    admin = AdminClient(client_config(settings, ep.kafka_bootstrap))
    lag = group_lag(admin, sink_group(version), matching_topics(admin, [o.enriched]))
    if rows != n or lag.total != 0:
        raise SystemExit(f"sink e2e check failed: {rows} rows in ClickHouse (want {n}), lag {lag.total}")
    raw = bench_raw_consume(n, o.enriched, settings)
    return marks["done"] - marks["first"], marks["done"] - t0, rows, raw


def _emit_times(settings: Settings, bootstrap: str, registry_url: str, ids: set[str]) -> dict[str, int]:
    """Kafka timestamp (= when the processors wrote it) of each enriched order in ``ids``."""
    from confluent_kafka import Consumer, TopicPartition

    from kappa.kafka import client_config
    from kappa.topics import output_topics
    from schemas.serde import Decoder, Registry

    topic = output_topics(settings.version).enriched
    dec = Decoder(Registry(registry_url), "enriched_order")
    c = Consumer(client_config(settings, bootstrap, **{"group.id": "fresh-" + uuid.uuid4().hex[:6],
                                                       "enable.auto.commit": False}))
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: dict[str, int] = {}
    done = {p for p, e in ends.items() if e == 0}
    deadline = time.monotonic() + 120
    while len(done) < len(ends) and time.monotonic() < deadline:
        for m in c.consume(10_000, 1.0):
            value, offset, partition = m.value(), m.offset(), m.partition()
            if m.error() or value is None or offset is None or partition is None:
                continue
            oid = dec.decode_row(value)[0]
            if oid in ids:
                out[oid] = m.timestamp()[1]
            if offset + 1 >= ends[partition]:
                done.add(partition)
    c.close()
    return out


def bench_freshness(rate: float, seconds: float, warmup: float, home: Path) -> dict[str, Any]:
    """Run `kappa run` and measure produced -> visible in kappa.orders (see module doc)."""
    import os
    import random
    import subprocess
    import sys

    from confluent_kafka import Producer

    from kappa.kafka import client_config
    from kappa.stack import endpoints
    from schemas.serde import Encoder, Registry, subject
    from sinks.query import endpoint_url, query_rows

    run = uuid.uuid4().hex[:8]
    ep = endpoints(get_settings())
    settings = Settings(home=home, kafka_bootstrap=ep.kafka_bootstrap,
                        schema_registry_url=ep.schema_registry_url, version=f"fr{run}",
                        topic_prefix=f"fr{run}.")
    env = {**os.environ, "KAPPA_HOME": str(home), "KAPPA_KAFKA_BOOTSTRAP": ep.kafka_bootstrap,
           "KAPPA_SCHEMA_REGISTRY_URL": ep.schema_registry_url, "KAPPA_VERSION": settings.version,
           "KAPPA_TOPIC_PREFIX": settings.topic_prefix}
    kappa = str(Path(sys.executable).with_name("kappa"))
    log = open(home / "run.log", "w")
    proc = subprocess.Popen([kappa, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:  # only through the sink's endpoint: opening the directory here would lock it
                if endpoint_url(settings) is None:
                    raise RuntimeError("no endpoint yet")
                query_rows(settings, "SELECT count() AS n FROM kappa.orders")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"kappa run did not come up; see {home / 'run.log'}") from None
                time.sleep(0.5)
        topic = settings.topic_prefix + "orders"
        enc = Encoder(Registry(ep.schema_registry_url), subject(topic), "orders")
        prod = Producer(client_config(settings, ep.kafka_bootstrap, **{"linger.ms": 5}))
        rng = random.Random(1)
        probes: dict[str, int] = {}  # order_id -> produced at (ms)
        seen: dict[str, float] = {}  # order_id -> visible at (ms)
        stop = threading.Event()
        lock = threading.Lock()

        def poll() -> None:
            while not stop.is_set():
                with lock:
                    want = [o for o in probes if o not in seen]
                if want:
                    ids = ",".join(f"'{o}'" for o in want[:500])
                    try:
                        rows = query_rows(settings, f"SELECT order_id FROM kappa.orders WHERE order_id IN ({ids})")
                    except Exception:
                        rows = []
                    now = time.time() * 1000
                    with lock:
                        for r in rows:
                            seen.setdefault(r["order_id"], now)
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        t0 = time.monotonic()
        sent = 0
        measure_from = t0 + warmup
        first_measured: int | None = None
        while (now_mono := time.monotonic()) < t0 + warmup + seconds:
            due = int((now_mono - t0) * rate)
            while sent < due:
                now_ms = int(time.time() * 1000)
                probe = sent % 50 == 0 and now_mono >= measure_from
                oid = f"{'p' if probe else 'o'}{run}-{sent}"
                if now_mono >= measure_from and first_measured is None:
                    first_measured = now_ms
                user = rng.randint(1, 1_000_000)
                prod.produce(topic, key=str(user).encode(), value=enc.encode({
                    "order_id": oid, "user_id": user, "amount": 10.0, "currency": "EUR",
                    "category": "books", "payment_method": "card", "ip_country": "DE",
                    "event_time": now_ms}))
                if probe:
                    with lock:
                        probes[oid] = now_ms
                sent += 1
            prod.poll(0)
            time.sleep(0.002)
        prod.flush(30)
        produced_for = time.monotonic() - t0
        end = time.monotonic() + 30
        while time.monotonic() < end and len(seen) < len(probes):
            time.sleep(0.1)
        stop.set()
        poller.join(5)
        lat = sorted(seen[o] - probes[o] for o in probes if o in seen)
        agg = query_rows(settings, (
            "SELECT count() AS n, quantiles(0.5, 0.9, 0.99)(toUnixTimestamp64Milli(ingested_at) - "
            "toUnixTimestamp64Milli(event_time)) AS q, max(toUnixTimestamp64Milli(ingested_at) - "
            "toUnixTimestamp64Milli(event_time)) AS mx FROM kappa.orders "
            f"WHERE toUnixTimestamp64Milli(event_time) >= {first_measured}"))[0]
        emitted = _emit_times(settings, ep.kafka_bootstrap, ep.schema_registry_url, set(probes))
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    def q(xs: Sequence[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] / 1000 if xs else float("nan")

    proc_lat = sorted(emitted[o] - probes[o] for o in probes if o in emitted)
    sink_lat = sorted(seen[o] - emitted[o] for o in probes if o in emitted and o in seen)
    split = {"processors": [q(proc_lat, 0.5), q(proc_lat, 0.99)], "sink": [q(sink_lat, 0.5), q(sink_lat, 0.99)]}

    return {"rate": rate, "achieved": sent / produced_for, "probes": len(probes), "visible": len(lat),
            "p50": q(lat, 0.5), "p90": q(lat, 0.9), "p99": q(lat, 0.99),
            "max": lat[-1] / 1000 if lat else float("nan"), "split": split,
            "ingest_n": int(agg["n"]), "ingest_q": [v / 1000 for v in agg["q"]], "ingest_max": agg["mx"] / 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--kafka", action="store_true", help="also measure Kafka -> ClickHouse end to end")
    ap.add_argument("--freshness", action="store_true",
                    help="only measure freshness (produced -> visible in kappa.orders) under `kappa run`")
    ap.add_argument("--rate", type=float, default=5000.0, help="--freshness: orders per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="--freshness: measured seconds")
    ap.add_argument("--warmup", type=float, default=10.0, help="--freshness: seconds before measuring")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kappa-bench-sink-"))
    if args.freshness:
        try:
            r = bench_freshness(args.rate, args.seconds, args.warmup, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"\nfreshness at {r['rate']:,.0f} orders/s requested ({r['achieved']:,.0f}/s produced), "
              f"{args.seconds:.0f} s measured after {args.warmup:.0f} s warm-up")
        print(f"  produced -> visible in kappa.orders ({r['visible']}/{r['probes']} probes seen): "
              f"p50 {r['p50']:.2f} s  p90 {r['p90']:.2f} s  p99 {r['p99']:.2f} s  max {r['max']:.2f} s")
        qs = r["ingest_q"]
        print(f"  produced -> sink insert call (ingested_at - event_time, {r['ingest_n']:,} orders): "
              f"p50 {qs[0]:.2f} s  p90 {qs[1]:.2f} s  p99 {qs[2]:.2f} s  max {r['ingest_max']:.2f} s")
        sp = r["split"]
        print(f"  split per probe: produced -> enriched by the processors p50 {sp['processors'][0]:.2f} s "
              f"p99 {sp['processors'][1]:.2f} s | enriched -> visible (sink) p50 {sp['sink'][0]:.2f} s "
              f"p99 {sp['sink'][1]:.2f} s")
        print("target: p99 <= 2 s at a steady 5,000 events/s")
        return
    results: list[tuple[str, int, float]] = []
    try:
        version = "bench"
        recs = records(args.rows, version)
        with EmbeddedBackend(tmp / "clickhouse") as backend:
            for v in ("bench_chdb", "bench_writer", "bench_bulk"):
                migrate.apply(backend, v)
            results.append(("chdb alone (Arrow -> Python())", args.rows,
                            bench_chdb(backend, recs, "bench_chdb", args.batch)))
            results.append(("kappa writer, raw Avro -> one INSERT + offsets", args.rows,
                            bench_bulk_writer(backend, recs, "bench_bulk", args.batch)))
            results.append(("kappa writer, decoded rows -> Arrow -> insert", args.rows,
                            bench_writer(backend, recs, "bench_writer", args.batch)))
        if args.kafka:
            for bulk in (False, True):
                steady, total, n, raw = bench_e2e(args.rows, tmp / f"e2e-{bulk}", bulk_decode=bulk)
                how = "bulk path (raw Avro -> INSERT)" if bulk else "per-message decode"
                results.append((f"kappa sink e2e, {how}", n, steady))
                results.append(("  same, incl. consumer group join", n, total))
            results.append(("bare confluent-kafka consumer, same topic (ceiling)", n, raw))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'stage':<55} {'rows':>10} {'seconds':>8} {'rows/s':>12}")
    print("-" * 88)
    for name, n, secs in results:
        print(f"{name:<55} {n:>10,} {secs:>8.2f} {n / secs:>12,.0f}")
    print("target: >= 500,000 rows/s into the embedded engine")


if __name__ == "__main__":
    main()
