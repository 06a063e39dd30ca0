"""``kappa bench``: Kappa next to its baselines and peers in one run, printed as one table."""

from __future__ import annotations

import sys

import click

from kappa.bench import SECTIONS, run_suite

__all__ = ["bench"]


@click.command()
@click.option("--events", type=int, default=None,
              help="Events per throughput section (default 200,000; 50,000 with --quick).")
@click.option("--quick", is_flag=True, help="Smaller sizes, fewer rounds: under 10 minutes on 2 cores.")
@click.option("--only", multiple=True, type=click.Choice(list(SECTIONS)),
              help="Run only these sections (repeatable); the table still lists every section.")
def bench(events: int | None, quick: bool, only: tuple[str, ...]) -> None:
    """Measure produce, consume, the full job (vs Quix Streams), learning, sink, freshness, scaling, RSS.

    Needs the stack (`kappa up`, or KAPPA_KAFKA_BOOTSTRAP + KAPPA_SCHEMA_REGISTRY_URL) and a
    source checkout (the measurements are benchmarks/suite.py). Writes
    KAPPA_HOME/bench/<timestamp>.json and .md.
    """
    code = run_suite(events, quick, only)
    if code:
        sys.exit(code)
