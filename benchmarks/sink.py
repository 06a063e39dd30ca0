"""Sink throughput into the embedded engine: chdb alone vs the Kappa sink, rows/s.

    .venv/bin/python benchmarks/sink.py [--rows 500000] [--kafka]

Stages measured (same EnrichedOrder rows, 50k-row batches, fresh chdb directory):
  chdb alone        one prebuilt Arrow table -> INSERT ... SELECT * FROM Python(table)
  kappa writer      decoded rows (tuples, as Decoder.decode_row yields them) -> Batch ->
                    Arrow per table -> idempotent insert + offsets row
  kappa sink (e2e)  with --kafka: Kafka -> consume -> Avro decode -> writer -> commit, from the
                    first consumed message until all rows landed (and again incl. the
                    consumer-group join), once with per-message decode (generated reader)
                    and once with the bulk decode in chdb (sinks/bulk.py); the row count
                    in ClickHouse and the group lag are checked afterwards
                    (needs KAPPA_KAFKA_BOOTSTRAP / KAPPA_SCHEMA_REGISTRY_URL or `kappa up`)
Target: >= 500k rows/s for the sink into the embedded engine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kappa.settings import Settings, get_settings
from sinks import migrate
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


def bench_chdb(backend: EmbeddedBackend, recs: list[dict[str, Any]], version: str, batch: int) -> float:
    tables = [TABLES["orders"].arrow(recs[i:i + batch]) for i in range(0, len(recs), batch)]
    db = migrate.database(version)
    t0 = time.perf_counter()
    for i, t in enumerate(tables):
        backend.insert_arrow(f"{db}.orders", t, f"chdb-{i}")
    return time.perf_counter() - t0


def bench_writer(backend: EmbeddedBackend, recs: list[dict[str, Any]], version: str, batch: int) -> float:
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


def bench_e2e(n: int, home: Path, bulk_decode: bool = True) -> tuple[float, float, int]:
    """(seconds from the first consumed message to all landed, seconds incl. group join, rows).

    Landed means flushed by the sink (Kafka offsets committed); the row count in ClickHouse
    and the group's lag are checked afterwards.
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
    landed = [0]
    add_many, flush = service._add_many, service.flush

    def timed_add(msgs: Any) -> None:
        if msgs and "first" not in marks:
            marks["first"] = time.perf_counter()
        add_many(msgs)

    def counted_flush() -> None:
        landed[0] += service.batch.size
        flush()
        if landed[0] >= n and "done" not in marks:
            marks["done"] = time.perf_counter()
            service.stop()

    service._add_many = timed_add  # type: ignore[method-assign]
    service.flush = counted_flush  # type: ignore[method-assign]
    thread = threading.Thread(target=service.run, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    while "done" not in marks and thread.is_alive():
        time.sleep(0.05)
    if "done" not in marks:
        raise SystemExit("the sink stopped before everything landed")
    thread.join(60)
    with EmbeddedBackend(home / "clickhouse") as backend:
        rows = int(backend.scalar(f"SELECT count() FROM {migrate.database(version)}.orders FINAL"))
    admin = AdminClient(client_config(settings, ep.kafka_bootstrap))
    lag = group_lag(admin, sink_group(version), matching_topics(admin, [o.enriched]))
    if rows != n or lag.total != 0:
        raise SystemExit(f"sink e2e check failed: {rows} rows in ClickHouse (want {n}), lag {lag.total}")
    return marks["done"] - marks["first"], marks["done"] - t0, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--kafka", action="store_true", help="also measure Kafka -> ClickHouse end to end")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kappa-bench-sink-"))
    results: list[tuple[str, int, float]] = []
    try:
        version = "bench"
        recs = records(args.rows, version)
        with EmbeddedBackend(tmp / "clickhouse") as backend:
            for v in ("bench_chdb", "bench_writer"):
                migrate.apply(backend, v)
            results.append(("chdb alone (Arrow -> Python())", args.rows,
                            bench_chdb(backend, recs, "bench_chdb", args.batch)))
            results.append(("kappa writer (records -> Arrow -> insert + offsets)", args.rows,
                            bench_writer(backend, recs, "bench_writer", args.batch)))
        if args.kafka:
            for bulk in (False, True):
                steady, total, n = bench_e2e(args.rows, tmp / f"e2e-{bulk}", bulk_decode=bulk)
                how = "bulk decode in chdb" if bulk else "per-message decode"
                results.append((f"kappa sink e2e, {how}", n, steady))
                results.append(("  same, incl. consumer group join", n, total))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'stage':<55} {'rows':>10} {'seconds':>8} {'rows/s':>12}")
    print("-" * 88)
    for name, n, secs in results:
        print(f"{name:<55} {n:>10,} {secs:>8.2f} {n / secs:>12,.0f}")
    print("target: >= 500,000 rows/s into the embedded engine")


if __name__ == "__main__":
    main()
