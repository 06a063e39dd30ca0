"""Read-only queries, wherever the data is: the path behind ``kappa query``.

Order: a ClickHouse server when ``KAPPA_CLICKHOUSE_URL`` is set (sent with ``readonly=1``);
else the running sink's endpoint (address file under KAPPA_HOME); else the embedded
directory opened directly with ``readonly=1``. Every statement first passes
:func:`sinks.base.check_read_only`.

>>> FORMATS["csv"]
'CSVWithNames'
"""

from __future__ import annotations

import json
import os
from typing import Any

import requests

from kappa.errors import SinkError
from kappa.settings import Settings
from sinks.backends import embedded_path, endpoint_file, open_backend
from sinks.base import ReadOnlyViolation, check_read_only

__all__ = ["FORMATS", "endpoint_url", "query", "query_rows"]

FORMATS = {"table": "PrettyCompactMonoBlock", "csv": "CSVWithNames", "json": "JSONEachRow",
           "tsv": "TabSeparatedWithNames"}


def endpoint_url(settings: Settings) -> str | None:
    """URL of the running sink's query endpoint, or None when no live sink advertises one."""
    path = endpoint_file(settings)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(info["url"])


def _raw(settings: Settings, sql: str, ch_format: str) -> bytes:
    sql = check_read_only(sql)
    if not settings.clickhouse_url:
        url = endpoint_url(settings)
        if url is not None:
            try:
                resp = requests.post(f"{url}/query", params={"format": ch_format},
                                     data=sql.encode(), timeout=300)
            except requests.RequestException:
                resp = None  # the sink just exited: fall through to the directory
            if resp is not None:
                if resp.status_code == 403:
                    raise ReadOnlyViolation(resp.text)
                if resp.status_code != 200:
                    raise SinkError(resp.text)
                return resp.content
        if not (embedded_path(settings) / "metadata").exists():
            raise SinkError(f"no ClickHouse data in {embedded_path(settings)} yet: run `kappa run` "
                            "(or set KAPPA_HOME / KAPPA_CLICKHOUSE_URL)")
    with open_backend(settings, readonly=True) as backend:
        return backend.query(sql, ch_format)


def query(settings: Settings, sql: str, fmt: str = "table") -> str:
    """Result of read-only ``sql`` as text in ``fmt`` (table, csv, json, tsv).

    ``json`` is one JSON array of row objects.
    """
    if fmt not in FORMATS:
        raise SinkError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = _raw(settings, sql, FORMATS[fmt]).decode()
    if fmt == "json":
        return "[" + ",".join(line for line in out.splitlines() if line.strip()) + "]"
    return out


def query_rows(settings: Settings, sql: str) -> list[dict[str, Any]]:
    """Rows of read-only ``sql`` as dicts: the Python API for reports (e.g. ``kappa demo``)."""
    out = _raw(settings, sql, "JSONEachRow").decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]
