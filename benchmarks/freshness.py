"""End-to-end freshness: order published -> row in ClickHouse, p50/p99 at a steady rate.

Starts the real pipeline (:class:`kappa.runner.Pipeline`: Faust worker(s) with learning + the
sink service) on a fresh version and topic prefix, waits until a warm-up batch has landed and the
processors' consumer group is stable with every worker holding partitions, and a second warm-up
batch has landed (so worker startup and its rebalances are not counted), then publishes orders
at ``rate``/s for ``seconds`` with ``event_time`` = send time (wall clock, ms), in 10 ms ticks
through the Kappa :class:`~producers.base.Publisher`. Freshness of a row is ``ingested_at - event_time``: the
sink stamps ``ingested_at`` when it starts the insert of that row's batch, so the figure covers
producer linger, broker, worker batch, output topic, sink batch (``KAPPA_SINK_BATCH_SECONDS``)
and excludes only the insert itself. Percentiles are exact (``quantileExact`` over every
measured row).

    KAPPA_KAFKA_BOOTSTRAP=127.0.0.1:9092 \\
    KAPPA_SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7 \\
    .venv/bin/python benchmarks/freshness.py --rate 2000 --seconds 15
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from confluent_kafka.admin import AdminClient  # noqa: E402

from kappa.kafka import client_config  # noqa: E402
from kappa.lag import wait_group_stable  # noqa: E402
from kappa.runner import Pipeline  # noqa: E402
from kappa.settings import Settings  # noqa: E402
from producers.base import Publisher, now_ms  # noqa: E402
from sinks import migrate  # noqa: E402
from sinks.query import endpoint_url, query_rows  # noqa: E402

__all__ = ["run"]

TICK_S = 0.01


def _order(prefix: str, i: int, rng: random.Random) -> dict[str, Any]:
    return {"order_id": f"{prefix}{i}", "user_id": rng.randint(1, 10_000), "amount": round(rng.uniform(1, 500), 2),
            "currency": rng.choice(("EUR", "USD", "GBP")), "category": rng.choice(("books", "toys", "food")),
            "payment_method": "card", "ip_country": "DE", "event_time": now_ms()}


def _count(settings: Settings, table: str, prefix: str) -> int:
    if endpoint_url(settings) is None:  # the sink owns the chdb directory: ask it, never open it
        return 0
    try:
        rows = query_rows(settings, f"SELECT count() AS n FROM {table} WHERE startsWith(order_id, '{prefix}')")
    except Exception:  # sink not serving yet, or table not created yet
        return 0
    return int(rows[0]["n"]) if rows else 0


def _wait_for(settings: Settings, table: str, prefix: str, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = _count(settings, table, prefix)
        if got >= n:
            return got
        time.sleep(0.25)
    raise RuntimeError(f"only {got} of {n} '{prefix}' orders landed in {table} after {timeout:.0f}s")


def _timestamps(settings: Settings, bootstrap: str, topic: str) -> dict[tuple[int, int], int]:
    """(partition, offset) -> record timestamp (ms, the producer's create time) of all of ``topic``."""
    from confluent_kafka import Consumer, TopicPartition

    from kappa.kafka import client_config

    c = Consumer(client_config(settings, bootstrap, **{"group.id": f"fresh-{uuid.uuid4().hex[:8]}",
                                                       "enable.auto.commit": False}))
    out: dict[tuple[int, int], int] = {}
    try:
        for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            c.assign([TopicPartition(topic, p, low)])
            pos = low
            while pos < high:
                for m in c.consume(10_000, timeout=5):
                    off = m.offset()
                    if not m.error() and off is not None:
                        out[(p, off)] = m.timestamp()[1]
                        pos = off + 1
    finally:
        c.close()
    return out


def _stages(settings: Settings, bootstrap: str, source: str, enriched: str,
            rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Freshness split at the Kafka record timestamps: (p50, p99) ms of publish (event_time -> the
    order's record), worker (-> the enriched record produced) and sink (-> ``ingested_at``)."""
    import numpy as np

    src, enr = _timestamps(settings, bootstrap, source), _timestamps(settings, bootstrap, enriched)
    ts = np.array([src[(int(r["sp"]), int(r["so"]))] for r in rows], dtype=np.int64)
    te = np.array([enr[(int(r["kp"]), int(r["ko"]))] for r in rows], dtype=np.int64)
    ev = np.array([int(r["ev"]) for r in rows], dtype=np.int64)
    ing = np.array([int(r["ing"]) for r in rows], dtype=np.int64)
    return {name: (float(np.percentile(d, 50)), float(np.percentile(d, 99)))
            for name, d in (("publish", ts - ev), ("worker", te - ts), ("sink", ing - te))}


def run(settings: Settings, rate: int = 5000, seconds: float = 30.0, workers: int = 1,
        warmup: int = 200, timeout: float = 240.0) -> dict[str, Any]:
    """Freshness percentiles (ms) and what was measured; the pipeline is stopped on return.

    ``settings`` should carry a unique ``topic_prefix`` and ``home`` (fresh ClickHouse dir).
    Keys: ``p50_ms``, ``p99_ms``, ``max_ms``, ``rows``, ``published``, ``achieved_rate``,
    ``peak_rss_mb`` and ``cpu_s`` (CPU seconds from the end of the warm-up until the last row
    landed) per process name (children and ``publisher``), and ``worst_seconds``: the five seconds
    of event time with the highest max freshness (``s`` after the start, rows ``n``, ``p50``, ``mx``);
    ``stages``: (p50, p99) ms per stage, split at the Kafka timestamps of the order's record and of
    its enriched record (publish, worker, sink; the three need not add up per percentile).
    """
    from benchmarks.scaling import cpu_seconds, vmhwm_mb

    version = f"fresh{uuid.uuid4().hex[:6]}"
    pipe = Pipeline(settings, version, workers=workers, echo=lambda _line: None)
    table = f"{migrate.database(version)}.orders"
    rng = random.Random(7)
    peaks: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def cpu_now() -> dict[str, float]:
        now = {c.name: cpu_seconds(c.proc.pid) for c in pipe.children if c.proc is not None}
        now["publisher"] = cpu_seconds(os.getpid())
        return now

    def sample() -> None:
        for child in pipe.children:
            if child.proc is not None:
                peaks[child.name] = max(peaks.get(child.name, 0.0), vmhwm_mb(child.proc.pid))

    pipe.prepare()
    for child in pipe.children:
        pipe._start(child)
    try:
        with Publisher(settings, pipe.ep.kafka_bootstrap) as pub:
            topic = pipe.inputs.topic("orders")
            pub.publish_many(topic, [_order("w", i, rng) for i in range(warmup)], key_field="user_id")
            pub.flush()
            _wait_for(settings, table, "w", warmup, timeout)
            # a worker that joins after the warm-up would rebalance the group in the measured window
            wait_group_stable(AdminClient(client_config(settings, pipe.ep.kafka_bootstrap)),
                              f"kappa-{version}", workers, timeout)
            pub.publish_many(topic, [_order("v", i, rng) for i in range(warmup)], key_field="user_id")
            pub.flush()
            _wait_for(settings, table, "v", warmup, timeout)  # and the settled group processes
            sample()
            cpu = cpu_now()
            total = int(rate * seconds)
            per_tick = max(1, round(rate * TICK_S))
            t0 = time.monotonic()
            first_ms = now_ms()
            sent = 0
            while sent < total:
                due = min(total, int((time.monotonic() - t0) * rate) + per_tick)
                if due > sent:
                    pub.publish_many(topic, [_order("f", i, rng) for i in range(sent, due)], key_field="user_id")
                    sent = due
                time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
            elapsed = time.monotonic() - t0
            pub.flush()
        _wait_for(settings, table, "f", total, timeout)
        sample()
        cpu = {k: v - cpu.get(k, 0.0) for k, v in cpu_now().items()}
        stats = query_rows(settings, (
            "SELECT count() AS n, quantileExact(0.5)(d) AS p50, quantileExact(0.99)(d) AS p99, max(d) AS mx "
            "FROM (SELECT toUnixTimestamp64Milli(ingested_at) - toUnixTimestamp64Milli(event_time) AS d "
            f"FROM {table} WHERE startsWith(order_id, 'f'))"))[0]
        worst = query_rows(settings, (  # where the tail comes from: the slowest seconds of the run
            f"SELECT toUnixTimestamp(toStartOfSecond(event_time)) - {first_ms // 1000} AS s, count() AS n, "
            "quantileExact(0.5)(d) AS p50, max(d) AS mx FROM (SELECT event_time, "
            "toUnixTimestamp64Milli(ingested_at) - toUnixTimestamp64Milli(event_time) AS d "
            f"FROM {table} WHERE startsWith(order_id, 'f')) GROUP BY s ORDER BY mx DESC LIMIT 5"))
        rows = query_rows(settings, (
            "SELECT source_partition AS sp, source_offset AS so, kafka_partition AS kp, kafka_offset AS ko, "
            "toUnixTimestamp64Milli(event_time) AS ev, toUnixTimestamp64Milli(ingested_at) AS ing "
            f"FROM {table} WHERE startsWith(order_id, 'f')"))
        stages = _stages(settings, pipe.ep.kafka_bootstrap, pipe.inputs.topic("orders"), pipe.outputs.enriched, rows)
    finally:
        pipe.stop()
    return {"p50_ms": float(stats["p50"]), "p99_ms": float(stats["p99"]), "max_ms": float(stats["mx"]),
            "rows": int(stats["n"]), "published": total, "rate": rate, "seconds": seconds,
            "achieved_rate": total / elapsed, "workers": workers, "peak_rss_mb": peaks,
            "cpu_s": cpu, "stages": stages, "worst_seconds": [{k: int(v) for k, v in w.items()} for w in worst]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kappa-bench-freshness-"))
    settings = Settings(home=home, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
    r = run(settings, args.rate, args.seconds, args.workers)
    print(f"published {r['published']:,} orders at {r['achieved_rate']:,.0f}/s (target {r['rate']:,}/s), "
          f"{r['rows']:,} landed")
    print(f"{'freshness (ingested_at - event_time)':40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'':40} {r['p50_ms']:8,.0f} {r['p99_ms']:8,.0f} {r['max_ms']:8,.0f}")
    print("CPU s while measured: " + ", ".join(f"{k} {v:,.1f}" for k, v in r["cpu_s"].items()))
    print("stages p50/p99 ms: " + ", ".join(f"{k} {a:,.0f}/{b:,.0f}" for k, (a, b) in r["stages"].items()))
    print("slowest seconds (s after start: rows, p50 ms, max ms): " + ", ".join(
        f"{w['s']}: {w['n']:,}, {w['p50']:,}, {w['mx']:,}" for w in r["worst_seconds"]))
    print("peak RSS MiB: " + ", ".join(f"{k} {v:,.0f}" for k, v in r["peak_rss_mb"].items()))


if __name__ == "__main__":
    main()
