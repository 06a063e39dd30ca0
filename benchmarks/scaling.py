"""Events/s of the full processor job with 1 vs 2 workers on the same input.

The orders are produced once (:func:`benchmarks.processors.produce`: 5 % duplicates, 10k
users); each run is a fresh pipeline version (own consumer group, own output topics, own
state dirs) of ``python -m stream_processors worker --no-learning``, N worker processes.
Every "full job" figure of ``kappa bench`` and ``benchmarks/`` is measured by
:func:`measure_output` (:data:`METHOD`): enriched records / (last - first record timestamp),
the workers' CPU seconds over that window per record, the longest gap between two outputs;
peak RSS per worker is VmHWM from /proc.

    KAPPA_KAFKA_BOOTSTRAP=127.0.0.1:9092 \\
    KAPPA_SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7 \\
    .venv/bin/python benchmarks/scaling.py --events 100000
"""

from __future__ import annotations

import argparse
import itertools
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

__all__ = ["METHOD", "child_env", "measure_output", "output_times", "run", "run_workers", "topic_end", "vmhwm_mb"]


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


METHOD = ("full job: worker processes started on pre-produced input; rate = output records / (last - first "
          "output record timestamp) on the output topic; CPU = the processes' CPU seconds (all threads, /proc) "
          "over that window / output records")
"""The one-line method of every "full job" figure (:func:`measure_output`), printed with the tables."""


def _cpu(procs: Sequence[subprocess.Popen[bytes]]) -> float:
    return sum(cpu_seconds(p.pid) for p in procs)


def output_times(settings: Settings, topic: str, timeout: float = 60.0) -> list[int]:
    """Sorted record timestamps (ms, the producer's create time) of every record of ``topic``."""
    c = Consumer(client_config(settings, settings.kafka_bootstrap or "", **{
        "group.id": f"bench-read-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}))
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in meta.partitions}
        left = {p: hi for p, (lo, hi) in ends.items() if hi > lo}
        c.assign([TopicPartition(topic, p, ends[p][0]) for p in left])
        stamps: list[int] = []
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                if m.error():
                    continue
                stamps.append(m.timestamp()[1])
                p, off = m.partition(), m.offset()
                if p in left and off is not None and off + 1 >= left[p]:
                    del left[p]
        if left:
            raise RuntimeError(f"{topic}: could not read partitions {sorted(left)} to their end in {timeout:.0f}s")
        return sorted(stamps)
    finally:
        c.close()


def measure_output(settings: Settings, procs: Sequence[subprocess.Popen[bytes]], topic: str, expected: int,
                   timeout: float = 600.0, quiet_s: float = 1.5) -> dict[str, Any]:
    """The harness of every "full job" figure (:data:`METHOD`): watch ``topic`` grow while
    ``procs`` run on pre-produced input; stop them once it holds >= ``expected`` records and
    has not grown for ``quiet_s``; then read the records' timestamps back.

    Returns ``events_per_s`` (records / (last - first record timestamp): the steady state
    from the first to the last output, start-up before the first output excluded),
    ``cpu_us_per_event`` (CPU of ``procs``, all threads, sampled every 0.1 s and interpolated
    at the first and last output, per record), ``records``, ``seconds``, ``stall_s`` (the
    longest gap between two consecutive outputs: a rebalance inside the window shows here),
    ``peak_rss_mb`` per process (VmHWM); then SIGTERMs (SIGKILL after 30 s) the processes.
    """
    c = Consumer(client_config(settings, settings.kafka_bootstrap or "",
                               **{"group.id": f"bench-probe-{uuid.uuid4().hex[:6]}"}))
    samples: list[tuple[float, float]] = []  # (wall time s, CPU s of procs)
    last: tuple[float, int] | None = None
    peaks = [0.0] * len(procs)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(0.1)
            samples.append((time.time(), _cpu(procs)))
            peaks = [max(p, vmhwm_mb(proc.pid)) for p, proc in zip(peaks, procs, strict=True)]
            if any(proc.poll() is not None for proc in procs):
                raise RuntimeError(f"a measured process exited early (codes {[p.poll() for p in procs]})")
            try:
                seen = topic_end(c, topic)
            except Exception:  # not created yet
                continue
            now = time.monotonic()
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
    stamps = output_times(settings, topic)
    if len(stamps) < 2:
        raise RuntimeError(f"{topic}: {len(stamps)} output records")
    first, end = stamps[0] / 1000, stamps[-1] / 1000
    seconds = max(end - first, 1e-3)
    cpu = _interpolate(samples, end) - _interpolate(samples, first)
    return {"events_per_s": (len(stamps) - 1) / seconds, "records": len(stamps), "seconds": seconds,
            "cpu_us_per_event": 1e6 * cpu / (len(stamps) - 1),
            "stall_s": max(b - a for a, b in itertools.pairwise(stamps)) / 1000,
            "peak_rss_mb": peaks}


def _interpolate(samples: Sequence[tuple[float, float]], t: float) -> float:
    """The sampled value at time ``t`` (linear between the samples around it)."""
    before = [s for s in samples if s[0] <= t]
    after = [s for s in samples if s[0] >= t]
    if not before:
        return samples[0][1]
    if not after:
        return samples[-1][1]
    (t0, v0), (t1, v1) = before[-1], after[0]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def run_workers(settings: Settings, events: int, workers: int, learning: bool = False,
                extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The full job with ``workers`` processes of a fresh version over the produced input
    (``extra_env``: settings of the workers, e.g. ``KAPPA_FAST_CONSUMER``)."""
    version = f"scale{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "stream_processors", "worker", "--version", version]
    if not learning:
        argv.append("--no-learning")
    env = {**child_env(settings), **(extra_env or {})}
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
    print(f"method: {METHOD}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'workers':>7} {'events/s':>10} {'vs 1':>6} {'CPU us/ev':>10} {'window s':>9} {'stall s':>8} "
          f"{'peak RSS MiB per worker':>24}")
    for r in rows:
        rss = ", ".join(f"{x:,.0f}" for x in r["peak_rss_mb"])
        print(f"{r['workers']:>7} {r['events_per_s']:10,.0f} {r['events_per_s'] / base:6.2f} "
              f"{r['cpu_us_per_event']:10.1f} {r['seconds']:9.2f} {r['stall_s']:8.2f} {rss:>24}")


if __name__ == "__main__":
    main()
