"""``kappa run``: processors + sinks in the foreground."""

from __future__ import annotations

import click

from kappa.runner import Pipeline
from kappa.settings import get_settings

__all__ = ["run"]


@click.command()
@click.option("--version", "version", default=None, help="Pipeline version (default: KAPPA_VERSION or v1).")
@click.option("--until-drained", is_flag=True, help="Exit 0 once every input is consumed and every result landed.")
@click.option("--workers", default=1, show_default=True, help="Faust workers in the group.")
def run(version: str | None, until_drained: bool, workers: int) -> None:
    """Run processors + sinks until Ctrl-C/SIGTERM (clean shutdown, nothing lost)."""
    settings = get_settings()
    Pipeline(settings, version or settings.version, workers=workers, echo=click.echo).run(until_drained)
