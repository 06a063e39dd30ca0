"""The measurements behind ``kappa bench``: Kappa next to its baselines, same machine, same data.

``kappa bench`` (:mod:`kappa.bench`) runs this script; it also runs alone, with the same options::

    .venv/bin/python benchmarks/suite.py --quick [--events N] [--only SECTION ...]

Each section reuses the benchmark script of its name under ``benchmarks/`` (each also runs
alone) and adds its figures, each with its baseline, to a :class:`kappa.bench.BenchReport`;
the sections and their baselines are listed in :mod:`kappa.bench`. Benchmarks import the
product, never the reverse: the report's model lives in the product, the measurements here.

Everything it creates is its own: topics under a ``bench<id>`` prefix and fresh versions,
state and ClickHouse directories under ``KAPPA_HOME/bench/work-<id>`` (removed afterwards);
the results stay in ``KAPPA_HOME/bench/<timestamp>.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kappa.bench import SECTIONS, BenchReport, Figure  # noqa: E402
from kappa.errors import KappaError  # noqa: E402
from kappa.settings import Settings, get_settings  # noqa: E402

__all__ = ["QUIX_PINS", "main", "quix_python", "run_bench"]


def quix_python() -> str | None:
    """An interpreter that has quixstreams: KAPPA_BENCH_QUIX_PYTHON, this one, or None."""
    explicit = os.environ.get("KAPPA_BENCH_QUIX_PYTHON")
    if explicit:
        return explicit
    if importlib.util.find_spec("quixstreams") is not None:
        return sys.executable
    return _quix_side_venv()


QUIX_PINS = ("quixstreams==3.28.1", "fastavro==1.13.1")


def _quix_side_venv() -> str | None:
    """A venv of its own for Quix Streams (it pins confluent-kafka<2.13; Kappa pins 2.16.1),
    created once under the user cache; None when it cannot be made (then the row says why)."""
    from kappa.stack.fetch import cache_dir

    venv = cache_dir() / "quix-venv"
    py = venv / "bin" / "python"
    stamp = venv / ".kappa-installed"
    if py.exists() and stamp.exists() and stamp.read_text() == " ".join(QUIX_PINS):
        return str(py)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *QUIX_PINS], check=True, capture_output=True,
                       timeout=900)
    except (subprocess.SubprocessError, OSError):
        return None
    stamp.write_text(" ".join(QUIX_PINS))
    return str(py)


class _Run:
    """State shared by the sections of one run."""

    def __init__(self, base: Settings, events: int, quick: bool, echo: Callable[[str], None]) -> None:
        from kappa.stack import endpoints

        self.events = events
        self.quick = quick
        self.echo = echo
        self.ep = endpoints(base)
        # children and the benchmark scripts read the stack from the environment
        os.environ["KAPPA_KAFKA_BOOTSTRAP"] = self.ep.kafka_bootstrap
        os.environ["KAPPA_SCHEMA_REGISTRY_URL"] = self.ep.schema_registry_url
        self.id = uuid.uuid4().hex[:6]
        self.root = (base.home / "bench").resolve()
        self.work = self.root / f"work-{self.id}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.figures: list[Figure] = []
        self.rss: list[tuple[str, float]] = []
        self.consume_settings: Settings | None = None
        self.kappa_job_rate: float | None = None

    def settings(self, name: str) -> Settings:
        """Fresh home + topic prefix for one section."""
        home = self.work / name
        home.mkdir(parents=True, exist_ok=True)
        return Settings(home=home, kafka_bootstrap=self.ep.kafka_bootstrap,
                        schema_registry_url=self.ep.schema_registry_url,
                        topic_prefix=f"bench{self.id}{name}.", partitions=self.base.partitions)

    def add(self, section: str, name: str, value: float | None, unit: str, baseline: float | None = None,
            note: str = "") -> None:
        self.figures.append(Figure(section, name, value, unit, baseline, note))

    def full_job(self, settings: Settings, section: str, fast: bool = False) -> dict[str, Any]:
        """The full job, 1 worker, on the input of ``settings`` (the one harness: scaling.METHOD);
        ``fast``: with ``KAPPA_FAST_CONSUMER=1``."""
        from benchmarks.scaling import run_workers

        r = run_workers(settings, self.events, 1, extra_env={"KAPPA_FAST_CONSUMER": "1" if fast else "0"})
        label = ", KAPPA_FAST_CONSUMER=1" if fast else ""
        self.rss.append((f"Kappa worker, full job{label} ({section} section)", r["peak_rss_mb"][0]))
        return r

    # -- sections ---------------------------------------------------------------------
    def produce(self) -> None:
        from benchmarks import produce

        rows = produce.run(self.events, partitions=4, rounds=2 if self.quick else 4,
                           settings=self.settings("produce"))
        by = {str(r["path"]): float(r["events_per_s"]) for r in rows}
        raw = by["raw produce (pre-encoded)"]
        self.add("produce", "raw confluent-kafka produce, pre-encoded bytes (baseline)", raw, "ev/s", raw)
        self.add("produce", "Kappa Publisher.publish_many (serde+produce)",
                 by["serialize+produce (publish_many)"], "ev/s", raw)
        self.add("produce", "Kappa serialize only (Encoder.encode_many)", by["serialize only (Encoder)"], "ev/s", raw,
                 note="no broker")

    def _child(self, mode: str, settings: Settings) -> tuple[float, float, float]:
        """(events/s, CPU us/event, peak RSS MiB) of ``benchmarks/processors.py --child mode`` in its own process."""
        from benchmarks import processors
        from benchmarks.scaling import child_env

        proc = subprocess.Popen([sys.executable, processors.__file__, "--child", mode, "--events", str(self.events)],
                                cwd=REPO, env=child_env(settings), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        # VmHWM while it runs: wait4's ru_maxrss would include the forked image of this (big) process
        from benchmarks.scaling import vmhwm_mb

        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, vmhwm_mb(proc.pid))
            time.sleep(0.1)
        assert proc.stdout is not None
        # the last line with numbers: "<events/s>" or "<events/s> <CPU µs/event>" (Faust may print a spinner first)
        printed = [re.findall(r"(\d+\.\d+)(?: (\d+\.\d+))?\s*$", line)
                   for line in proc.stdout.read().decode(errors="replace").splitlines()]
        numbers = [n for n in printed if n]
        if not numbers:
            raise RuntimeError(f"processors.py --child {mode} printed no rate (exit {proc.returncode})")
        rate, cpu = numbers[-1][0]
        return float(rate), float(cpu or "nan"), peak

    def consume(self) -> None:
        from benchmarks import processors

        settings = self.settings("consume")
        self.echo(f"  producing {self.events:,} orders + 10k users for consume/job ...")
        processors.produce(settings, self.events)
        self.consume_settings = settings
        raw, raw_cpu, raw_rss = self._child("raw", settings)
        self.rss.append(("raw confluent-kafka consumer (consume section)", raw_rss))
        self.add("consume", "raw confluent-kafka consume(5000) + bulk decode (baseline)", raw, "ev/s", raw,
                 note=f"CPU {raw_cpu:.1f} us/event, its own first to n-th event")
        faust, faust_cpu, faust_rss = self._child("faust", settings)
        self.rss.append(("bare Faust agent (consume section)", faust_rss))
        self.add("consume", "bare Faust agent, decode only", faust, "ev/s", raw,
                 note=f"CPU {faust_cpu:.1f} us/event, its own first to n-th event")
        job = self.full_job(settings, "consume")
        self.kappa_job_rate = job["events_per_s"]
        self.add("consume", "Kappa full job, 1 worker (validate+dedupe+enrich+windows)", job["events_per_s"],
                 "ev/s", raw, note=f"{job['events_per_s'] / faust:.2f}x the bare Faust agent; {_job_note(job)}")
        fast = self.full_job(settings, "consume", fast=True)
        self.add("consume", "Kappa full job, 1 worker, KAPPA_FAST_CONSUMER=1", fast["events_per_s"], "ev/s", raw,
                 note=f"{fast['events_per_s'] / faust:.2f}x the bare Faust agent; {_job_note(fast)}")

    def job(self) -> None:
        from benchmarks import processors
        from benchmarks.scaling import child_env, measure_output

        settings = self.consume_settings
        if settings is None:  # consume not selected: produce the same input here
            settings = self.settings("job")
            processors.produce(settings, self.events)
        kappa = self.kappa_job_rate
        if kappa is None:
            job = self.full_job(settings, "job")
            kappa = job["events_per_s"]
            self.add("job", "Kappa full job, 1 worker (baseline)", kappa, "ev/s", kappa, note=_job_note(job))
        else:
            self.add("job", "Kappa full job, 1 worker (baseline)", kappa, "ev/s", kappa,
                     note="the consume section's run")
        py = quix_python()
        if py is None:
            self.add("job", "Quix Streams 3.28.1, same job", None, "",
                     note="not run: quixstreams 3.28.1 requires confluent-kafka<2.13, Kappa pins 2.16.1; "
                          "set KAPPA_BENCH_QUIX_PYTHON to a venv with quixstreams==3.28.1 fastavro")
            return
        out = f"quix{self.id}"
        proc = subprocess.Popen([py, str(REPO / "benchmarks" / "quix_job.py"), "--bootstrap", self.ep.kafka_bootstrap,
                                 "--prefix", settings.topic_prefix, "--out", out,
                                 "--state-dir", str(self.work / "quix-state")],
                                cwd=REPO, env=child_env(settings), stdout=subprocess.DEVNULL,
                                stderr=open(self.work / "quix.log", "ab"), stdin=subprocess.DEVNULL)
        r = measure_output(settings, [proc], f"{out}.orders.enriched", int(self.events * 0.9))
        self.rss.append(("Quix Streams app (job section)", r["peak_rss_mb"][0]))
        self.add("job", "Quix Streams 3.28.1, same job, 1 process", r["events_per_s"], "ev/s", kappa,
                 note=_job_note(r) + "; JSON out, dedupe per key")

    def learning(self) -> None:
        from benchmarks import learning

        rows = learning.run(repeat=1 if self.quick else 3, fraud_orders=5_000 if self.quick else 20_000)
        by = {str(r["stage"]): float(r["events_per_s"]) for r in rows}
        river = by["river progressive_val_score (Phishing x8)"]
        self.add("learning", "River progressive_val_score, Phishing (baseline)", river, "ev/s", river)
        for name in ("samples learner, one-at-a-time (exact)", "samples learner, mini-batch 256"):
            self.add("learning", f"Kappa {name}", by[name], "ev/s", river)
        fraud_river = by["river loop, fraud features (learn at once)"]
        self.add("learning", "River loop on the fraud features (baseline)", fraud_river, "ev/s", fraud_river)
        self.add("learning", "Kappa fraud learner, merge records as the worker reads them (delayed labels, drift)",
                 by["fraud learner, merge records (as the worker)"], "ev/s", fraud_river,
                 note="per CPU second, best of runs")

    def sink(self) -> None:
        from benchmarks import sink
        from sinks import migrate
        from sinks.embedded import EmbeddedBackend

        rows = max(self.events, 1_000) * (2 if self.quick else 5)
        batch = min(50_000, rows)
        recs = sink.records(rows, "bench")
        with EmbeddedBackend(self.work / "sink" / "clickhouse") as opened:
            assert isinstance(opened, EmbeddedBackend)
            backend = opened
            for v in ("bench_chdb", "bench_writer", "bench_bulk"):
                migrate.apply(backend, v)
            chdb = rows / sink.bench_chdb(backend, recs, "bench_chdb", batch)
            bulk = rows / sink.bench_bulk_writer(backend, recs, "bench_bulk", batch)
            writer = rows / sink.bench_writer(backend, recs, "bench_writer", batch)
        self.add("sink", f"chdb engine alone, Arrow insert, {rows:,} rows (baseline)", chdb, "rows/s", chdb)
        self.add("sink", "Kappa writer, consumed Avro -> one INSERT + offsets", bulk, "rows/s", chdb)
        self.add("sink", "Kappa writer, decoded rows -> Arrow -> insert (other tables)", writer, "rows/s", chdb)
        # in its own process: chdb allows one engine session per process
        # ten sink batches (50,000 rows each) at least: with two, the last insert never overlaps a
        # consume, so half the inserts ran in series and the figure measured the pipeline's fill
        e2e_rows = max(rows, 10 * 50_000)
        code = ("import json, sys; from pathlib import Path; from benchmarks import sink; "
                f"print(json.dumps(sink.bench_e2e({e2e_rows}, Path(sys.argv[1]))))")
        done = subprocess.run([sys.executable, "-c", code, str(self.work / "sink-e2e")], cwd=REPO,
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"sink e2e failed: {done.stderr.strip().splitlines()[-1:]}")
        elapsed, _, n, raw = json.loads(done.stdout.strip().splitlines()[-1])
        self.add("sink", "Kappa sink service (Kafka -> decode -> insert -> commit)", n / elapsed, "rows/s", chdb,
                 note=f"{n:,} rows, own process, from first message")
        self.add("sink", "bare confluent-kafka consumer, same topic (ceiling of any Python sink)", n / raw,
                 "rows/s", chdb)

    def freshness(self) -> None:
        from benchmarks import freshness

        rate, seconds = (1_500, 15.0) if self.quick else (5_000, 30.0)
        settings = self.settings("freshness")
        r = freshness.run(settings, rate=rate, seconds=seconds)
        period = settings.sink_batch_seconds * 1000
        note = f"{r['rows']:,} rows at {r['achieved_rate']:,.0f}/s"
        self.add("freshness", "sink batch period KAPPA_SINK_BATCH_SECONDS (baseline)", period, "ms", period)
        self.add("freshness", f"freshness p50 at {rate:,}/s for {seconds:.0f}s", r["p50_ms"], "ms", period, note)
        self.add("freshness", f"freshness p99 at {rate:,}/s for {seconds:.0f}s", r["p99_ms"], "ms", period)
        self.add("freshness", "freshness max", r["max_ms"], "ms", period)
        for name, mb in r["peak_rss_mb"].items():
            self.rss.append((f"pipeline {name}, with learning (freshness section)", mb))

    def scaling(self) -> None:
        from benchmarks import scaling

        settings = self.settings("scaling")
        rows = scaling.run(settings, self.events)
        one = rows[0]["events_per_s"]
        for r in rows:
            label = "1 worker (baseline)" if r["workers"] == 1 else f"{r['workers']} workers"
            self.add("scaling", f"Kappa full job, {label}", r["events_per_s"], "ev/s", one, note=_job_note(r))
            for i, mb in enumerate(r["peak_rss_mb"]):
                self.rss.append((f"Kappa worker {i + 1}/{r['workers']} (scaling section)", mb))

    def rss_section(self) -> None:
        base = next((mb for name, mb in self.rss if name.startswith("raw confluent")), None)
        if base is None and self.rss:
            base = self.rss[0][1]
        for i, (name, mb) in enumerate(self.rss):
            label = name + (" (baseline)" if mb == base and i == 0 else "")
            self.add("rss", label, mb, "MiB", base)
        if not self.rss:
            self.add("rss", "no child processes measured in the selected sections", None, "")
        self.add("rss", "this kappa bench process", _self_hwm(), "MiB", base)

    # -- cleanup ------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Delete this run's topics (named after its id) and its working directory."""
        from confluent_kafka.admin import AdminClient

        from kappa.kafka import client_config

        try:
            admin = AdminClient(client_config(self.base, self.ep.kafka_bootstrap))
            mine = [t for t in admin.list_topics(timeout=10).topics if self.id in t]
            if mine:
                for fut in admin.delete_topics(mine, operation_timeout=30).values():
                    try:
                        fut.result()
                    except Exception:  # already gone / being deleted
                        pass
        except Exception as exc:  # never lose the results over cleanup
            self.echo(f"  (topic cleanup failed: {exc})")
        shutil.rmtree(self.work, ignore_errors=True)


def _job_note(r: dict[str, Any]) -> str:
    """CPU beside the wall-clock rate of a full-job measurement, its window and longest output gap."""
    return (f"CPU {r['cpu_us_per_event']:.1f} us/output; {r['records']:,} outputs in {r['seconds']:.1f}s; "
            f"longest gap {r['stall_s']:.2f}s")


def _self_hwm() -> float:
    from benchmarks.scaling import vmhwm_mb

    return vmhwm_mb(os.getpid())


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run_bench(settings: Settings, events: int | None = None, quick: bool = False,
              only: Sequence[str] = (), echo: Callable[[str], None] = print) -> BenchReport:
    """Run the selected sections (all by default), print progress, write JSON + Markdown, return the report."""
    events = events or (50_000 if quick else 200_000)
    selected = [s for s in SECTIONS if not only or s in only]
    run = _Run(settings, events, quick, echo)
    started = time.strftime("%Y%m%dT%H%M%S")
    from benchmarks.scaling import METHOD

    meta: dict[str, Any] = {"method": METHOD, "started": started, "events": events, "quick": quick,
                            "sections": selected, "cpus": os.cpu_count(), "load_before": _load(),
                            "python": platform.python_version(),
                            "kafka": run.ep.kafka_bootstrap, "run_id": run.id}
    t0 = time.monotonic()
    methods: dict[str, Callable[[], None]] = {
        "produce": run.produce, "consume": run.consume, "job": run.job, "learning": run.learning,
        "sink": run.sink, "freshness": run.freshness, "scaling": run.scaling, "rss": run.rss_section}
    try:
        for key in selected:
            echo(f"[{time.monotonic() - t0:5.0f}s] {SECTIONS[key]} ...")
            try:
                methods[key]()
            except Exception as exc:
                run.add(key, f"not run: {type(exc).__name__}: {exc}"[:200], None, "")
    finally:
        run.cleanup()
    meta.update(seconds=time.monotonic() - t0, load_after=_load())
    report = BenchReport(run.figures, meta, sections_run=selected)
    run.root.mkdir(parents=True, exist_ok=True)
    report.json_path = run.root / f"{started}.json"
    report.md_path = run.root / f"{started}.md"
    report.json_path.write_text(json.dumps(
        {"meta": meta, "figures": [{**asdict(f), "ratio": f.ratio} for f in run.figures]}, indent=2))
    report.md_path.write_text(report.markdown())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and where the files are; 1 with one line on a KappaError."""
    ap = argparse.ArgumentParser(description="Kappa next to its baselines, printed as one table.")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", action="append", default=[], choices=list(SECTIONS))
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        report = run_bench(get_settings(), args.events, args.quick, args.only,
                           echo=lambda line: print(line, file=sys.stderr, flush=True))
    except KappaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.table())
    print(f"\n{report.meta['events']:,} events, {time.monotonic() - t0:.0f}s, load "
          f"{report.meta['load_before']} -> {report.meta['load_after']}; ratios are to each section's "
          "baseline (1.00)")
    print(f"method: {report.meta['method']}")
    print(f"written: {report.json_path} and {report.md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
