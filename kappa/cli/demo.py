"""``kappa demo``: up, topics, schemas, generate, process until drained, land, report."""

from __future__ import annotations

import sys

import click

from kappa.demo import run_demo
from kappa.settings import get_settings

__all__ = ["demo"]


@click.command()
@click.option("--events", default=20_000, show_default=True,
              help="Events the pipeline's generator publishes (its main input's; ignored for sample files).")
@click.option("--seed", default=42, show_default=True)
def demo(events: int, seed: int) -> None:
    """From nothing to a printed report on the embedded defaults (any pipeline with a generator
    or sample files: --pipeline DIR)."""
    report = run_demo(get_settings(), events=events, seed=seed, echo=click.echo)
    sys.exit(0 if report.reconciled else 1)
