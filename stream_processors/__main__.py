"""``python -m stream_processors worker --version V [--worker N]``: one Faust worker in the foreground."""

from __future__ import annotations

import sys

import click

from kappa.errors import KappaError
from stream_processors.worker import run_worker


@click.group()
def main() -> None:
    """Kappa stream processors."""


@main.command()
@click.option("--version", "version", default=None, help="Pipeline version (default KAPPA_VERSION).")
@click.option("--worker", "worker", type=int, default=None,
              help="Worker number (state dir worker-N); default: the first free one.")
@click.option("--loglevel", default="WARNING", show_default=True)
@click.option("--learning/--no-learning", default=True, show_default=True,
              help="Also run the online-learning agents (stream_processors.learning).")
def worker(version: str | None, worker: int | None, loglevel: str, learning: bool) -> None:
    """Run one worker of group kappa-<version>; SIGTERM stops it cleanly."""
    try:
        run_worker(version, worker, loglevel, learning)
    except KappaError as exc:  # a setting or an installation to fix: one line in the worker's log
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
