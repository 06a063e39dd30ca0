"""``kappa bench``: one run that measures Kappa next to its baselines, same machine, same data.

Every figure comes with the figure it is compared to (its baseline) and the ratio, because
absolute numbers on a shared machine are noisy while ratios measured minutes apart are not.
This module holds the report (:data:`SECTIONS`, :class:`Figure`, :class:`BenchReport`) and
starts the measurements, which are benchmark scripts: ``benchmarks/suite.py`` in a source
checkout, run in a process of its own. The product never imports ``benchmarks/``; the
benchmarks import the product.

============  ===================================================  ===========================
section       contenders                                            baseline
============  ===================================================  ===========================
produce       Kappa serde+produce, serialize only                   raw confluent-kafka produce
consume       bare Faust decode agent, Kappa full job (1 worker)    raw confluent-kafka consume
job           Quix Streams doing the same job (1 process)           Kappa full job (1 worker)
learning      Kappa samples/fraud learners                          River alone
sink          Kappa writer, Kappa sink service (Kafka -> chdb)      chdb engine alone
freshness     p50/p99 of ingested_at - event_time at a fixed rate   the sink's batch period
scaling       full job with 2 workers                               1 worker
rss           peak RSS (VmHWM) of every measured process            raw confluent-kafka consumer
============  ===================================================  ===========================

>>> f = Figure("produce", "raw", 200.0, "ev/s", baseline=100.0)
>>> f.ratio
2.0
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kappa.errors import KappaError

__all__ = ["SECTIONS", "SUITE", "BenchReport", "Figure", "run_suite", "suite_argv"]

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"
"""The measurements (a source checkout's benchmark script)."""
SECTIONS: dict[str, str] = {
    "produce": "produce: Kappa serde+produce vs raw confluent-kafka (pre-encoded bytes)",
    "consume": "consume+decode: raw confluent-kafka vs bare Faust agent vs Kappa full job",
    "job": "full job per worker: Kappa vs Quix Streams (validate+dedupe+enrich+1-min window)",
    "learning": "River scoring+learning: River alone vs in-pipeline learners",
    "sink": "sink rows/s: chdb engine alone vs Kappa sink",
    "freshness": "end-to-end freshness at a fixed rate (ingested_at - event_time)",
    "scaling": "scaling: full job, 1 vs 2 workers",
    "rss": "peak RSS per process (VmHWM)",
}
"""Section key -> header, in the order they run and print."""


@dataclass
class Figure:
    """One measured figure and, when it has one, the baseline figure it is a ratio to."""

    section: str
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline


@dataclass
class BenchReport:
    """The figures of one run, where they were written, and how long it took."""

    figures: list[Figure]
    meta: dict[str, Any]
    json_path: Path | None = None
    md_path: Path | None = None
    sections_run: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(section header or "", figure, value, ratio) for printing."""
        out: list[tuple[str, str, str, str]] = []
        for key, header in SECTIONS.items():
            out.append((header, "", "", ""))
            figs = [f for f in self.figures if f.section == key]
            if not figs:
                out.append(("", "not run: not selected (--only)", "", ""))
            for f in figs:
                value = "" if f.value is None else f"{_num(f.value)} {f.unit}"
                ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
                name = f.name + (f"  [{f.note}]" if f.note else "")
                out.append(("", name, value, ratio))
        return out

    def table(self) -> str:
        """Plain-text table: one header line per section, figures indented under it."""
        lines = [f"{'figure':<78} {'value':>16} {'vs base':>8}", "-" * 104]
        for header, name, value, ratio in self.rows():
            if header:
                lines.append(f"== {header}")
            else:
                lines.append(f"  {name:<76} {value:>16} {ratio:>8}")
        return "\n".join(lines)

    def markdown(self) -> str:
        m = self.meta
        lines = [f"# kappa bench {m['started']}", "",
                 f"{m['events']:,} events, quick={m['quick']}, {m['cpus']} CPUs, load {m['load_before']} -> "
                 f"{m.get('load_after', '?')}, {m.get('seconds', 0):.0f}s. Ratios are to each section's baseline "
                 "(the first figure, marked 1.00).", *(["", f"Method: {m['method']}"] if m.get("method") else []), "",
                 "| section | figure | value | vs baseline |", "|---|---|---|---|"]
        keys = iter(SECTIONS)
        section = ""
        for header, name, value, ratio in self.rows():
            if header:
                section = next(keys)
                continue
            lines.append(f"| {section} | {name.replace('|', '/')} | {value} | {ratio} |")
        return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def suite_argv(events: int | None = None, quick: bool = False, only: Sequence[str] = (),
               suite: Path = SUITE) -> list[str]:
    """The command line of the measurements for these options."""
    argv = [sys.executable, str(suite)]
    if events is not None:
        argv += ["--events", str(events)]
    if quick:
        argv.append("--quick")
    for section in only:
        argv += ["--only", section]
    return argv


def run_suite(events: int | None = None, quick: bool = False, only: Sequence[str] = (),
              suite: Path = SUITE) -> int:
    """Run the measurements in the foreground (same environment and terminal); their exit code.

    Ctrl-C reaches the measurements too: this waits for them to delete their topics and
    working directory, then returns their exit code.
    """
    if not suite.is_file():
        raise KappaError(f"kappa bench runs the benchmark scripts of a source checkout, and {suite} is "
                         "missing: run it from a clone of the repository (pip install -e .)")
    proc = subprocess.Popen(suite_argv(events, quick, only, suite))
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue
