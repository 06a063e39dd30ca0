"""Events/s of the full processor job vs a bare Faust decode agent vs a raw confluent-kafka loop.

Usage (against a running stack, e.g. the dev stack)::

    KAPPA_KAFKA_BOOTSTRAP=127.0.0.1:9092 \\
    KAPPA_SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7 \\
    .venv/bin/python benchmarks/processors.py --events 200000

Each contender runs in its own process on the same pre-produced orders topic (fresh prefix),
one worker. The raw consumer and the bare Faust agent time themselves from their first to their
n-th event (CPU: their own process time); the full job and Quix Streams (benchmarks/quix_job.py,
in the side venv of ``kappa bench``) are measured from outside by the one harness of every
"full job" figure (:data:`benchmarks.scaling.METHOD`): output records over the span of their
timestamps, the process's CPU seconds (all threads) over it. CPU per event is the figure to
compare on a shared, busy machine, where wall-clock rates swing with the neighbours' load.
Prints one table; the ratios are to the bare Faust agent.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, Producer  # noqa: E402

from benchmarks.scaling import METHOD, run_workers  # noqa: E402
from kappa import topics  # noqa: E402
from kappa.kafka import client_config, ensure_topics  # noqa: E402
from kappa.settings import Settings  # noqa: E402
from schemas.serde import Decoder, Encoder, Registry  # noqa: E402


def produce(settings: Settings, n: int) -> None:
    """``n`` orders (5 % duplicates) over 10k users, plus the users."""
    reg = Registry(settings.schema_registry_url or "")
    t = topics.input_topics(settings.topic_prefix)
    ensure_topics(settings, settings.kafka_bootstrap or "", topics.input_specs(settings.partitions,
                                                                            settings.topic_prefix))
    eo, eu = Encoder(reg, f"{t.topic('orders')}-value", "orders"), Encoder(reg, f"{t.topic('users')}-value", "users")
    p = Producer(client_config(settings, settings.kafka_bootstrap or "", partitioner="murmur2_random",
                               **{"linger.ms": 20, "queue.buffering.max.messages": 1_000_000}))
    now = int(time.time() * 1000)
    t0 = now - 3_600_000
    rng = random.Random(1)
    for uid in range(1, 10_001):
        p.produce(t.topic("users"), eu.encode({"user_id": uid, "country": "DE", "segment": "vip",
                                      "signup_time": t0 - 10**9, "updated_at": t0 - 1}), str(uid))
    for i in range(n):
        uid = rng.randint(1, 10_000)
        oid = f"o{i - 1 if i and rng.random() < 0.05 else i}"
        rec = {"order_id": oid, "user_id": uid, "amount": 10.0, "currency": rng.choice(["EUR", "USD"]),
               "category": rng.choice(["books", "toys", "food", "tools"]), "payment_method": "card",
               "ip_country": "DE", "event_time": t0 + i * 3_600_000 // n}
        while True:
            try:
                p.produce(t.topic("orders"), eo.encode(rec), str(uid))
                break
            except BufferError:
                p.poll(0.1)
        if i % 10_000 == 0:
            p.poll(0)
    p.flush()


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(KAPPA_TOPIC_PREFIX=settings.topic_prefix, KAPPA_PARTITIONS=str(settings.partitions),
               KAPPA_HOME=str(settings.home))
    return env


def run_full(settings: Settings, n: int, fast: bool = False) -> tuple[float, float, int]:
    """The real worker (1 process, no learning) measured by the one harness of every "full job"
    figure (:func:`benchmarks.scaling.measure_output`): (events/s, CPU us per output, peak RSS MiB);
    ``fast``: with ``KAPPA_FAST_CONSUMER=1`` (the sources read outside Faust's per-message path)."""
    r = run_workers(settings, n, 1, extra_env={"KAPPA_FAST_CONSUMER": "1" if fast else "0"})
    return float(r["events_per_s"]), float(r["cpu_us_per_event"]), int(r["peak_rss_mb"][0])


def _timed_child(mode: str, settings: Settings, n: int) -> tuple[float, float, int]:
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--events", str(n)],
                            cwd=REPO, env=_child_env(settings), stdout=subprocess.PIPE)
    data, _ = proc.communicate(timeout=900)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate, cpu = re.findall(r"(\d+\.\d+) (\d+\.\d+)\s*$", data.decode())[-1]  # Faust may print a spinner first
    return float(rate), float(cpu), usage.ru_maxrss // 1024


def child_raw(settings: Settings, n: int) -> tuple[float, float]:
    """confluent-kafka consume(batch) + bulk decode."""
    t = topics.input_topics(settings.topic_prefix)
    dec = Decoder(Registry(settings.schema_registry_url or ""), "orders")
    c = Consumer(client_config(settings, settings.kafka_bootstrap or "",
                               **{"group.id": f"bench-raw-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                                  "enable.auto.commit": True}))
    c.subscribe([t.topic("orders")])
    got, start, cpu = 0, None, 0.0
    while got < n:
        msgs = c.consume(5000, timeout=1.0)
        if msgs and start is None:
            start, cpu = time.time(), time.process_time()
        dec.decode_many([m.value() or b"" for m in msgs if not m.error()])
        got += len(msgs)
    rate, cpu = n / (time.time() - (start or time.time())), (time.process_time() - cpu) / n * 1e6
    c.close()
    return rate, cpu


def child_faust(settings: Settings, n: int, lean: bool = False) -> tuple[float, float]:
    """A bare Faust agent that only decodes each event (``lean``: with the job's LeanMonitor)."""
    import faust

    from stream_processors.faust_internals import LeanMonitor

    t = topics.input_topics(settings.topic_prefix)
    dec = Decoder(Registry(settings.schema_registry_url or ""), "orders")
    extra: dict[str, Any] = {"Monitor": LeanMonitor} if lean else {}
    app = faust.App(f"bench-faust-{uuid.uuid4().hex[:6]}", broker=f"kafka://{settings.kafka_bootstrap}",
                    value_serializer="raw", web_enabled=False, consumer_auto_offset_reset="earliest",
                    datadir=str(settings.home / f"faust-{uuid.uuid4().hex[:6]}"), **extra)
    result: list[tuple[float, float]] = []
    state = {"got": 0, "start": 0.0, "cpu": 0.0}

    @app.agent(app.topic(t.topic("orders"), value_serializer="raw"))
    async def decode(stream):
        async for value in stream:
            if not state["got"]:
                state["start"], state["cpu"] = time.time(), time.process_time()
            dec.decode(value)
            state["got"] += 1
            if state["got"] >= n:
                result.append((n / (time.time() - state["start"]),
                               (time.process_time() - state["cpu"]) / n * 1e6))
                print(*result[0], flush=True)
                os._exit(0)

    faust.Worker(app, loglevel="ERROR", redirect_stdouts=False, quiet=True).execute_from_commandline()
    return result[0] if result else (0.0, 0.0)


def run_quix(settings: Settings, n: int) -> tuple[float, float, int] | None:
    """Quix Streams on the same job and input (``benchmarks/quix_job.py``), in the side venv
    ``kappa bench`` uses (Quix pins an older confluent-kafka); None when it cannot run."""
    from benchmarks.scaling import child_env, measure_output
    from benchmarks.suite import quix_python

    py = quix_python()
    if py is None:
        return None
    out = f"quix{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([py, str(REPO / "benchmarks" / "quix_job.py"), "--bootstrap",
                             settings.kafka_bootstrap or "", "--prefix", settings.topic_prefix, "--out", out,
                             "--state-dir", str(settings.home / "quix-state")],
                            cwd=REPO, env=child_env(settings), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    r = measure_output(settings, [proc], f"{out}.orders.enriched", int(n * 0.9))
    return float(r["events_per_s"]), float(r["cpu_us_per_event"]), int(r["peak_rss_mb"][0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--child", default="")
    ap.add_argument("--no-quix", action="store_true", help="skip the Quix Streams contender")
    ap.add_argument("--fast", action="store_true",
                    help="also run the full job with KAPPA_FAST_CONSUMER=1 (sources read by confluent-kafka)")
    ap.add_argument("--lean-faust", action="store_true",
                    help="also run the bare agent with the job's LeanMonitor (what that setting alone buys)")
    args = ap.parse_args()
    if args.child:
        settings = Settings()
        rate, cpu = {"raw": child_raw, "faust": child_faust,
                     "faust-lean": lambda s, n: child_faust(s, n, lean=True)}[args.child](settings, args.events)
        print(f"{rate:.3f} {cpu:.3f}", flush=True)
        return
    home = Path(f"/tmp/kappa-bench-{uuid.uuid4().hex[:6]}")
    settings = Settings(home=home, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", partitions=args.partitions)
    home.mkdir(parents=True)
    print(f"producing {args.events:,} orders to {settings.topic_prefix}orders ...", flush=True)
    produce(settings, args.events)
    rows = [("raw confluent-kafka consume+decode", *_timed_child("raw", settings, args.events)),
            ("bare Faust agent, decode only", *_timed_child("faust", settings, args.events)),
            ("full job (validate+dedupe+enrich+windows)", *run_full(settings, args.events))]
    if args.fast:
        rows.append(("full job, KAPPA_FAST_CONSUMER=1", *run_full(settings, args.events, fast=True)))
    if args.lean_faust:
        rows.append(("bare Faust agent + the job's LeanMonitor", *_timed_child("faust-lean", settings,
                                                                               args.events)))
    quix = None if args.no_quix else run_quix(settings, args.events)
    if quix is not None:
        rows.append(("Quix Streams 3.28.1, same job (JSON out)", *quix))
    faust_rate, faust_cpu = rows[1][1], rows[1][2]
    print(f"\n{'contender':45} {'events/s':>10} {'vs Faust':>9} {'CPU us/event':>13} "
          f"{'vs Faust (CPU)':>15} {'peak RSS MB':>12}")
    for name, rate, cpu, rss in rows:
        print(f"{name:45} {rate:10,.0f} {rate / faust_rate:9.2f} {cpu:13.1f} {faust_cpu / cpu:15.2f} "
              f"{rss:12,}")
    if quix is None:
        print("Quix Streams: not run (--no-quix, or its side venv could not be made)")
    else:
        print(f"full job vs Quix Streams: {rows[2][1] / quix[0]:.2f}x")
    print(f"method: {METHOD}")


if __name__ == "__main__":
    main()
