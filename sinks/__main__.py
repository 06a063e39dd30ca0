"""``python -m sinks``: the sink service process and its maintenance commands.

    python -m sinks serve --version V     # foreground; SIGTERM flushes, commits, exits 0
    python -m sinks migrate --version V   # create the tables of V (idempotent)
    python -m sinks swap --version V      # repoint the serving views at V
"""

from __future__ import annotations

import logging
import signal
import sys

import click

from kappa import metrics
from kappa.errors import KappaError
from kappa.settings import get_settings

__all__ = ["main"]


@click.group()
def main() -> None:
    """Kappa sink service."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--version", "version", default=None, help="Pipeline version (default KAPPA_VERSION).")
def serve(version: str | None) -> None:
    """Land the outputs of VERSION in ClickHouse until SIGTERM/SIGINT."""
    from sinks.service import SinkService

    settings = get_settings()
    service = SinkService(settings, version)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop())
    port = metrics.serve("sink", settings.metrics_port and settings.metrics_port + 2)
    logging.getLogger("kappa.sink").info("metrics on 127.0.0.1:%d", port)
    service.run()


@main.command()
@click.option("--version", "version", default=None)
def migrate(version: str | None) -> None:
    """Create the tables of VERSION (idempotent)."""
    from sinks import migrate as mig
    from sinks.backends import open_backend

    settings = get_settings()
    with open_backend(settings) as backend:
        click.echo(f"applied: {mig.apply(backend, version or settings.version) or 'nothing new'}")


@main.command()
@click.option("--version", "version", required=True)
def swap(version: str) -> None:
    """Point the serving views at VERSION."""
    from sinks import migrate as mig
    from sinks.backends import open_backend
    from sinks.views import swap_views

    with open_backend(get_settings()) as backend:
        mig.apply(backend, version)
        swap_views(backend, version)
    click.echo(f"serving views now read version {version}")


if __name__ == "__main__":
    try:
        main(standalone_mode=False)
    except KappaError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
