"""``kappa bench``: Kappa next to its baselines and peers in one run, printed as one table."""

from __future__ import annotations

import time

import click

from kappa.bench import SECTIONS, run_bench
from kappa.settings import get_settings

__all__ = ["bench"]


@click.command()
@click.option("--events", type=int, default=None,
              help="Orders per throughput section (default 200,000; 50,000 with --quick).")
@click.option("--quick", is_flag=True, help="Smaller sizes, fewer rounds: under 10 minutes on 2 cores.")
@click.option("--only", multiple=True, type=click.Choice(list(SECTIONS)),
              help="Run only these sections (repeatable); the table still lists every section.")
def bench(events: int | None, quick: bool, only: tuple[str, ...]) -> None:
    """Measure produce, consume, the full job (vs Quix Streams), learning, sink, freshness, scaling, RSS.

    Needs the stack (`kappa up`, or KAPPA_KAFKA_BOOTSTRAP + KAPPA_SCHEMA_REGISTRY_URL). Writes
    KAPPA_HOME/bench/<timestamp>.json and .md.
    """
    t0 = time.monotonic()
    report = run_bench(get_settings(), events, quick, only, echo=lambda line: click.echo(line, err=True))
    click.echo(report.table())
    click.echo(f"\n{report.meta['events']:,} events, {time.monotonic() - t0:.0f}s, load "
               f"{report.meta['load_before']} -> {report.meta['load_after']}; ratios are to each section's "
               "baseline (1.00)")
    click.echo(f"written: {report.json_path} and {report.md_path}")
