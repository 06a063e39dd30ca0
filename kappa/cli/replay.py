"""``kappa replay``: reprocess the retained log as a new version; swap the views; clean up."""

from __future__ import annotations

import sys

import click

from kappa.settings import get_settings

__all__ = ["replay"]


@click.command()
@click.option("--from", "start", default="earliest", show_default=True,
              help="'earliest' or an ISO-8601 instant: recompute event time >= it (floored to the minute).")
@click.option("--version", "version", default=None, help="The version to build (a new name, e.g. v2).")
@click.option("--swap", is_flag=True, help="Once caught up: verify, then repoint the serving views at VERSION.")
@click.option("--cleanup", "cleanup_version", default=None, metavar="OLD",
              help="Drop OLD's tables, topics, groups and local state (refused for the live version).")
@click.option("--workers", default=1, show_default=True, help="Faust workers of the replay.")
@click.option("--max-seconds", default=None, type=float, help="Give up when not caught up after this long.")
def replay(start: str, version: str | None, swap: bool, cleanup_version: str | None, workers: int,
           max_seconds: float | None) -> None:
    """Replay the log as VERSION beside the live one (--swap to serve it), or --cleanup OLD.

    With the embedded ClickHouse engine the replay hosts VERSION's sink and answers
    `kappa query` itself, so a running `kappa run` on the same KAPPA_HOME must be stopped
    first (or use a ClickHouse server via KAPPA_CLICKHOUSE_URL). Knobs of the new version,
    e.g. KAPPA_CATEGORY_MAP, are read from the environment of this command.
    """
    from kappa import replay as rp

    settings = get_settings()
    if cleanup_version:
        if version or swap:
            raise click.UsageError("--cleanup OLD runs alone (no --version/--swap)")
        rp.cleanup(settings, cleanup_version, echo=click.echo)
        return
    if not version:
        raise click.UsageError("--version V is required (the new version to build)")
    result = rp.replay(settings, version, rp.parse_start(start), swap_views=swap, workers=workers,
                       echo=click.echo, max_seconds=max_seconds)
    sys.exit(0 if result.drained else 1)
