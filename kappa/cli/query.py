"""``kappa query``: read-only SQL against the serving views, while the pipeline runs or not."""

from __future__ import annotations

import os
import sys

import click

from kappa.settings import get_settings

__all__ = ["query"]


@click.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "tsv"]), default="table",
              show_default=True, help="Output format; json is one JSON array of row objects.")
def query(sql: str, fmt: str) -> None:
    """Run read-only SQL (SELECT/SHOW/DESCRIBE/EXPLAIN/WITH), e.g. SELECT count() FROM kappa.orders.

    Reads the pipeline's databases only: table functions that reach files, URLs, other
    databases or processes (file, url, s3, remote, mysql, executable, ...) are refused.
    Results stream, whatever their size. Text prints as UTF-8; any byte that is not UTF-8
    prints as a \\xNN escape (in json, inside its string, so the output stays valid JSON).
    """
    from sinks.query import query_stream

    out = sys.stdout.buffer
    try:
        for text in query_stream(get_settings(), sql, fmt):
            out.write(text.encode())
        out.flush()
    except BrokenPipeError:  # e.g. `kappa query ... | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
