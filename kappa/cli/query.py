"""``kappa query``: read-only SQL against the serving views, while the pipeline runs or not."""

from __future__ import annotations

import click

from kappa.settings import get_settings

__all__ = ["query"]


@click.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "tsv"]), default="table",
              show_default=True, help="Output format.")
def query(sql: str, fmt: str) -> None:
    """Run read-only SQL (SELECT/SHOW/DESCRIBE/EXPLAIN/WITH), e.g. SELECT count() FROM kappa.orders."""
    from sinks.query import query as run_query

    click.echo(run_query(get_settings(), sql, fmt), nl=False)
