"""``kappa up`` / ``kappa down`` / ``kappa status``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from kappa import stack
from kappa.settings import Settings, get_settings

__all__ = ["down", "status", "up"]


def _print(rows: list[stack.ComponentStatus]) -> None:
    for r in rows:
        if r.kind == "metrics":
            continue
        mark = click.style("healthy", fg="green") if r.healthy else click.style("DOWN", fg="red")
        who = f"pid {r.pid}, {r.rss_bytes / 2**20:.0f} MiB" if r.pid else ("external" if not r.managed else "-")
        click.echo(f"{r.name:<10} {mark:<18} {r.address:<45} {who:<24} {r.detail}")


@click.command()
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for each component.")
@click.option("--with-prometheus", is_flag=True,
              help="Also run a local Prometheus (Debian package) that scrapes every Kappa process.")
@click.option("--brokers", type=click.IntRange(min=1), default=None,
              help="KRaft nodes (each broker + controller); 3 or more replicate every topic 3 times "
                   "with min.insync.replicas=2. Default: the count this KAPPA_HOME was started with, else 1.")
def up(timeout: float, with_prometheus: bool, brokers: int | None) -> None:
    """Start the local stack (Kafka + schema registry) in the background; no-op when up."""
    from kappa.kafka import replication

    settings = get_settings()
    t0 = time.monotonic()
    rows = stack.up(settings, timeout=timeout, with_prometheus=with_prometheus,
                    echo=lambda line: click.echo(line, err=True), brokers=brokers)
    _print(rows)
    click.echo("topics: " + replication(settings, stack.endpoints(settings).kafka_bootstrap).describe())
    click.echo(f"stack up in {time.monotonic() - t0:.1f}s (state in {settings.home})")


def _print_metrics_endpoints(home: Path) -> None:
    """The /metrics endpoints of running Kappa processes (registered by kappa.metrics.serve)."""
    from kappa.metrics import list_targets

    targets = list_targets(home)
    if targets:
        click.echo("metrics endpoints:")
    for component, address in targets:
        click.echo(f"  {component:<12} http://{address}/metrics")


def _print_serving_version(settings: Settings) -> None:
    """The version the serving views read, as recorded by the last swap (read without ClickHouse)."""
    from kappa.versions import read_live

    live = read_live(settings)
    if live is None:
        click.echo(f"serving version: {settings.version} (no swap recorded: the views read the first "
                   "version that ran)")
    else:
        click.echo(f"serving version: {live.version} (swapped at {live.swapped_at}"
                   + (f", was {live.previous})" if live.previous else ")"))


@click.command()
def down() -> None:
    """Stop every process ``kappa up`` started (cleanly, then forcefully)."""
    stopped = stack.down(get_settings())
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable status.")
def status(as_json: bool) -> None:
    """Print each component, the running `kappa run` and the metrics endpoints; exit 0 only when
    every stack component is healthy (--json: rows of kind stack, pipeline and metrics)."""
    settings = get_settings()
    rows = stack.status(settings)
    if as_json:
        click.echo(json.dumps(stack.manager.as_dict(rows), indent=2))
    else:
        _print(rows)
        _print_serving_version(settings)
        _print_metrics_endpoints(settings.home)
    components = [r for r in rows if r.kind == "stack"]
    sys.exit(0 if components and all(r.healthy for r in components) else 1)
