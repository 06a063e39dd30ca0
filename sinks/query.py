"""Read-only queries, wherever the data is: the path behind ``kappa query``.

Order: a ClickHouse server when ``KAPPA_CLICKHOUSE_URL`` is set (sent with ``readonly=1``);
else the running sink's endpoint (address and token in a 0600 file under KAPPA_HOME); else
the embedded directory opened directly with ``readonly=1``. Every statement passes
:func:`sinks.guard.check_query` on the engine that runs it.

Results stream block by block, so memory stays bounded whatever their size. Output is text:
UTF-8 prints as it is, any other byte as a ``\\xNN`` escape (in ``json``, inside the string,
as the JSON text ``\\\\xNN``), so a raw Avro payload never breaks the output or its format.

>>> FORMATS["csv"]
'CSVWithNames'
"""

from __future__ import annotations

import codecs
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

import requests

from kappa.errors import SinkError
from kappa.settings import Settings
from sinks.backends import embedded_path, endpoint_file, open_backend
from sinks.base import ReadOnlyViolation, check_read_only
from sinks.endpoint import TOKEN_HEADER
from sinks.guard import QuerySyntaxError, check_query

__all__ = ["FORMATS", "endpoint_url", "query", "query_rows", "query_stream", "text_chunks"]

FORMATS = {"table": "TabSeparatedWithNames", "csv": "CSVWithNames", "json": "JSONEachRow",
           "tsv": "TabSeparatedWithNames"}
"""Engine format per ``--format``; ``table`` is drawn here from the TSV stream (:func:`table_lines`):
the engine's Pretty formats either hold the whole result (MonoBlock) or draw each block apart."""
TABLE_MAX_ROWS = 10_000
"""``--format table`` draws at most this many rows and counts the rest, as ClickHouse's Pretty
formats do (``output_format_pretty_max_rows``): its memory is bounded by them, not the result."""
_NUMBER = re.compile(r"-?(\d+(\.\d*)?([eE][-+]?\d+)?|inf|nan)")

_CHUNK = 1 << 16


def _json_escape(exc: UnicodeError) -> tuple[str, int]:
    """Decode error handler: each invalid byte as the JSON text ``\\\\xNN`` (a literal ``\\xNN``)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(f"\\\\x{b:02x}" for b in bad), exc.end


codecs.register_error("kappa-json-escape", _json_escape)


def endpoint_info(settings: Settings) -> tuple[str, str] | None:
    """(URL, token) of the running sink's query endpoint, or None when no live sink offers one."""
    path = endpoint_file(settings)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(info["url"]), str(info.get("token", ""))


def endpoint_url(settings: Settings) -> str | None:
    """URL of the running sink's query endpoint, or None when no live sink advertises one."""
    info = endpoint_info(settings)
    return info[0] if info else None


def _from_endpoint(settings: Settings, sql: str, ch_format: str) -> requests.Response | None:
    """The endpoint's streaming response, or None when no endpoint answers (use the directory)."""
    info = endpoint_info(settings)
    if info is None:
        return None
    url, token = info
    try:
        resp = requests.post(f"{url}/query", params={"format": ch_format}, data=sql.encode(),
                             headers={TOKEN_HEADER: token}, timeout=(10, 300), stream=True)
    except requests.RequestException:
        return None  # the sink just exited: fall through to the directory
    if resp.status_code != 200:
        text = resp.text.strip()
        resp.close()
        if resp.status_code == 403:
            raise ReadOnlyViolation(text)
        if resp.status_code == 422:
            raise QuerySyntaxError(text)
        raise SinkError(text)
    return resp


def _endpoint_chunks(resp: requests.Response) -> Iterator[bytes]:
    with resp:
        try:
            yield from resp.iter_content(_CHUNK)
        except requests.RequestException as exc:
            raise SinkError(f"the sink's query endpoint stopped mid-result ({type(exc).__name__}); "
                            "the output above is incomplete") from exc


def raw_stream(settings: Settings, sql: str, ch_format: str) -> Iterator[bytes]:
    """Output of read-only ``sql`` in ClickHouse format ``ch_format``, block by block."""
    check_read_only(sql, verbs=False)
    if settings.clickhouse_url:
        with open_backend(settings, readonly=True) as backend:
            yield from backend.stream(check_query(backend, sql), ch_format)
        return
    from sinks.embedded import LOCK_WAIT_S, LockedByAnotherProcess

    # The sink may be starting or stopping (directory locked, no endpoint yet or any more), or a
    # replay may hold the directory for a moment: ask the endpoint again, then the directory,
    # until one answers.
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        resp = _from_endpoint(settings, sql, ch_format)
        if resp is not None:
            yield from _endpoint_chunks(resp)
            return
        if not (embedded_path(settings) / "metadata").exists():
            raise SinkError(f"no ClickHouse data in {embedded_path(settings)} yet: run `kappa run` "
                            "(or set KAPPA_HOME / KAPPA_CLICKHOUSE_URL)")
        try:
            backend = open_backend(settings, readonly=True, wait_s=1.0)
        except LockedByAnotherProcess:
            if time.monotonic() >= deadline:
                raise
            continue
        with backend:
            yield from backend.stream(check_query(backend, sql), ch_format)
        return


def text_chunks(chunks: Iterable[bytes], fmt: str) -> Iterator[str]:
    """Engine output as text in ``fmt``; ``json`` becomes one JSON array and a newline.

    Bytes that are not UTF-8 become ``\\xNN`` escapes (JSON-escaped in ``json``).
    """
    errors = "kappa-json-escape" if fmt.startswith("json") else "backslashreplace"
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    if fmt != "json":
        for chunk in chunks:
            text = decoder.decode(chunk)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
        return
    sep, rest = "[", ""
    for chunk in chunks:
        lines = (rest + decoder.decode(chunk)).split("\n")
        rest = lines.pop()
        rows = [line for line in lines if line.strip()]
        if rows:
            yield sep + ",".join(rows)
            sep = ","
    rest += decoder.decode(b"", final=True)
    if rest.strip():
        yield sep + rest.strip()
        sep = ","
    yield ("[]" if sep == "[" else "]") + "\n"


def query_stream(settings: Settings, sql: str, fmt: str = "table") -> Iterator[str]:
    """Result of read-only ``sql`` as text in ``fmt`` (table, csv, json, tsv), chunk by chunk."""
    if fmt not in FORMATS:
        raise SinkError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    chunks = text_chunks(raw_stream(settings, sql, FORMATS[fmt]), "tsv" if fmt == "table" else fmt)
    return table_lines(chunks) if fmt == "table" else chunks


def _lines(chunks: Iterable[str]) -> Iterator[str]:
    rest = ""
    for chunk in chunks:
        parts = (rest + chunk).split("\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def table_lines(tsv: Iterable[str], max_rows: int = TABLE_MAX_ROWS) -> Iterator[str]:
    r"""A TSV-with-names stream drawn as a box table: the first ``max_rows`` rows, then a count.

    >>> print("".join(table_lines(["n\ts\n1\ta\n", "22\tbb\n3\tc\n"], max_rows=2)), end="")
    ┌──n─┬─s──┐
    │  1 │ a  │
    │ 22 │ bb │
    └────┴────┘
    Showed 2 out of 3 rows.
    """
    lines = _lines(tsv)
    header = next(lines, None)
    if header is None:
        return
    names = header.split("\t")
    rows: list[list[str]] = []
    total = 0
    for line in lines:
        total += 1
        if len(rows) < max_rows:
            rows.append(line.split("\t"))
    widths = [max([len(n), *(len(r[i]) if i < len(r) else 0 for r in rows)]) for i, n in enumerate(names)]
    numeric = [bool(rows) and all(_NUMBER.fullmatch(r[i]) for r in rows if i < len(r) and r[i] != "\\N")
               for i in range(len(names))]

    def cell(text: str, i: int) -> str:
        return text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])

    top = "┬".join(("─" + (n.rjust(w) if num else n.ljust(w)) + "─").replace(" ", "─")
                   for n, w, num in zip(names, widths, numeric, strict=True))
    yield f"┌{top}┐\n"
    for r in rows:
        yield "│ " + " │ ".join(cell(r[i] if i < len(r) else "", i) for i in range(len(names))) + " │\n"
    yield "└" + "┴".join("─" * (w + 2) for w in widths) + "┘\n"
    if total > len(rows):
        yield f"Showed {len(rows):,} out of {total:,} rows.\n"


def query(settings: Settings, sql: str, fmt: str = "table") -> str:
    """Result of read-only ``sql`` as one string in ``fmt``; ``json`` is one JSON array of rows."""
    return "".join(query_stream(settings, sql, fmt))


def query_rows(settings: Settings, sql: str) -> list[dict[str, Any]]:
    """Rows of read-only ``sql`` as dicts: the Python API for reports (e.g. ``kappa demo``)."""
    out = "".join(text_chunks(raw_stream(settings, sql, "JSONEachRow"), "jsonl"))
    return [json.loads(line) for line in out.split("\n") if line.strip()]
