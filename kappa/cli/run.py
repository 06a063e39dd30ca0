"""``kappa run``: processors + sinks in the foreground."""

from __future__ import annotations

import click

from kappa.runner import Pipeline
from kappa.settings import get_settings
from kappa.versions import choose_run_version

__all__ = ["run"]


@click.command()
@click.option("--version", "version", default=None,
              help="Pipeline version (default: the version the serving views read, else KAPPA_VERSION or v1).")
@click.option("--force", is_flag=True,
              help="Run --version/KAPPA_VERSION even though the serving views read another version.")
@click.option("--until-drained", is_flag=True, help="Exit 0 once every input is consumed and every result landed.")
@click.option("--workers", default=1, show_default=True, help="Faust workers in the group.")
def run(version: str | None, force: bool, until_drained: bool, workers: int) -> None:
    """Run processors + sinks until Ctrl-C/SIGTERM (clean shutdown, nothing lost).

    After `kappa replay --swap` the swapped version is the live one: without --version this
    runs it, so the serving views stay fresh; another version is refused without --force.
    """
    settings = get_settings()
    chosen = choose_run_version(settings, version, force, echo=click.echo)  # KappaError: one line
    Pipeline(settings, chosen, workers=workers, echo=click.echo).run(until_drained)
