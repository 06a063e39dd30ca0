"""Events/s of the full processor job with 1 vs 2 workers on the same input.

The orders are produced once (:func:`benchmarks.processors.produce`: 5 % duplicates, 10k
users); each run is a fresh pipeline version (own consumer group, own output topics, own
state dirs) of ``python -m stream_processors worker --no-learning``, N worker processes.
Throughput is the growth of the enriched-orders topic from its first to its last record
(startup and the rebalance before the first record are excluded), sampled every 0.2 s; peak
RSS per worker is VmHWM from /proc.

    KAPPA_KAFKA_BOOTSTRAP=127.0.0.1:9092 \\
    KAPPA_SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7 \\
    .venv/bin/python benchmarks/scaling.py --events 100000
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from kappa import topics  # noqa: E402
from kappa.kafka import client_config  # noqa: E402
from kappa.settings import Settings  # noqa: E402

__all__ = ["child_env", "measure_output", "run", "topic_end", "vmhwm_mb"]


def vmhwm_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process in MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all threads); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(settings: Settings) -> dict[str, str]:
    """Environment of a child process that sees the same stack, prefix and home as ``settings``."""
    env = dict(os.environ)
    env.update(KAPPA_TOPIC_PREFIX=settings.topic_prefix, KAPPA_PARTITIONS=str(settings.partitions),
               KAPPA_HOME=str(settings.home.resolve()))
    if settings.kafka_bootstrap:
        env["KAPPA_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    if settings.schema_registry_url:
        env["KAPPA_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    return env


def topic_end(consumer: Consumer, topic: str) -> int:
    """Sum of the end offsets of ``topic`` (raises when it does not exist yet)."""
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    if meta.error is not None:
        raise RuntimeError(str(meta.error))
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions)


def measure_output(settings: Settings, procs: Sequence[subprocess.Popen[bytes]], topic: str, expected: int,
                   timeout: float = 600.0, quiet_s: float = 1.5) -> dict[str, Any]:
    """Watch ``topic`` grow while ``procs`` run; stop them once >= ``expected`` records and quiet.

    Returns ``events_per_s`` (first to last growth), ``records``, ``seconds`` and the peak RSS
    (MiB) of each process, then SIGTERMs (SIGKILL after 30 s) the processes.
    """
    c = Consumer(client_config(settings, settings.kafka_bootstrap or "",
                               **{"group.id": f"bench-probe-{uuid.uuid4().hex[:6]}"}))
    first: tuple[float, int] | None = None
    last: tuple[float, int] | None = None
    peaks = [0.0] * len(procs)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            peaks = [max(p, vmhwm_mb(proc.pid)) for p, proc in zip(peaks, procs, strict=True)]
            if any(proc.poll() is not None for proc in procs):
                raise RuntimeError(f"a measured process exited early (codes {[p.poll() for p in procs]})")
            try:
                seen = topic_end(c, topic)
            except Exception:  # not created yet
                continue
            now = time.monotonic()
            if seen and first is None:
                first = (now, seen)
            if last is None or seen > last[1]:
                last = (now, seen)
            elif seen >= expected and now - last[0] >= quiet_s:
                break
        else:
            raise RuntimeError(f"{topic}: {last and last[1]} of {expected} records after {timeout:.0f}s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        c.close()
    assert first is not None and last is not None
    seconds = max(last[0] - first[0], 0.2)
    return {"events_per_s": (last[1] - first[1]) / seconds, "records": last[1], "seconds": seconds,
            "peak_rss_mb": peaks}


def run_workers(settings: Settings, events: int, workers: int, learning: bool = False) -> dict[str, Any]:
    """The full job with ``workers`` processes of a fresh version over the produced input."""
    version = f"scale{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "stream_processors", "worker", "--version", version]
    if not learning:
        argv.append("--no-learning")
    env = child_env(settings)
    log = open(settings.home / f"worker-{version}.log", "ab")
    procs = [subprocess.Popen([*argv, "--worker", str(i)], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) for i in range(workers)]
    log.close()
    # processors.produce writes ~5 % duplicates, which the job drops
    result = measure_output(settings, procs, topics.output_topics(version).enriched, int(events * 0.9))
    result.update(workers=workers, version=version)
    return result


def run(settings: Settings, events: int, worker_counts: Sequence[int] = (1, 2),
        produce: bool = True) -> list[dict[str, Any]]:
    """One row per worker count over the same input (produced here unless ``produce`` is False)."""
    if produce:
        from benchmarks.processors import produce as produce_orders

        produce_orders(settings, events)
    return [run_workers(settings, events, n) for n in worker_counts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kappa-bench-scaling-"))
    settings = Settings(home=home, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", partitions=args.partitions)
    rows = run(settings, args.events)
    base = rows[0]["events_per_s"]
    print(f"{'workers':>7} {'events/s':>10} {'vs 1':>6} {'peak RSS MiB per worker':>24}")
    for r in rows:
        rss = ", ".join(f"{x:,.0f}" for x in r["peak_rss_mb"])
        print(f"{r['workers']:>7} {r['events_per_s']:10,.0f} {r['events_per_s'] / base:6.2f} {rss:>24}")


if __name__ == "__main__":
    main()
