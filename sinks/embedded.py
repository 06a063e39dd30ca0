"""Embedded backend: the chdb engine (ClickHouse in-process) on a directory under KAPPA_HOME.

chdb locks its directory to one process, so the sink service owns the writer and serves
reads through :mod:`sinks.endpoint`; within that process a second, read-only connection on
the same directory is allowed (chdb shares one engine per process and path).
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path

import pyarrow as pa

from kappa.errors import SinkError
from sinks.base import Backend, quote

__all__ = ["EmbeddedBackend", "InjectedFailure", "LockedByAnotherProcess"]


# Formats with one row per line, which chdb can stream block by block.
_LINE_FORMATS = ("CSV", "TSV", "TabSeparated", "JSONEachRow", "JSONCompactEachRow", "JSONLines",
                 "NDJSON")


class InjectedFailure(SinkError):
    """An insert failed on purpose (``KAPPA_SINK_FAIL_INSERTS``), to exercise the retry path."""


class LockedByAnotherProcess(SinkError):
    """The embedded ClickHouse directory is held by another process."""


class EmbeddedBackend(Backend):
    """chdb on ``path``; ``readonly`` opens it with ClickHouse ``readonly=1``.

    ``readonly=1``, not chdb's ``mode=ro`` (``readonly=2``): level 1 also forbids changing
    settings and every table function that reaches files, URLs or processes.

    ``fail_inserts`` makes the next N :meth:`insert_arrow` calls raise InjectedFailure
    before touching the engine (the outage test of the embedded engine).
    """

    name = "embedded"

    def __init__(self, path: Path, readonly: bool = False, fail_inserts: int = 0) -> None:
        import chdb

        self.path = Path(path)
        self.readonly = readonly
        self.fail_inserts = fail_inserts
        self._lock = threading.Lock()
        self.path.mkdir(parents=True, exist_ok=True)
        conn_str = f"{self.path.resolve()}" + (
            "?output_format_pretty_single_large_number_tip_threshold=0&readonly=1" if readonly else "")
        try:
            self._conn = chdb.connect(conn_str)
        except Exception as exc:
            if "lock" in str(exc).lower() or "EmbeddedServer" in str(exc):
                raise LockedByAnotherProcess(
                    f"the embedded ClickHouse directory {self.path} is in use by another process "
                    "(a running sink service); query it through `kappa query`, or stop that process"
                ) from exc
            raise SinkError(f"cannot open embedded ClickHouse at {self.path}: {exc}") from exc

    def execute(self, sql: str) -> None:
        self._run(sql, "CSV")

    def query(self, sql: str, fmt: str = "TabSeparated") -> bytes:
        return self._run(sql, fmt)

    def stream(self, sql: str, fmt: str = "TabSeparated") -> Generator[bytes, None, None]:
        """Output block by block from chdb's streaming query, for row-per-line formats.

        chdb formats each block on its own, so a ``...WithNames`` header would repeat: it is
        kept once. Other formats (``Pretty*``, which stops at ``output_format_pretty_max_rows``
        anyway) come in one piece. The lock is held to the end: chdb answers nothing else on
        a connection while one of its streams is open.
        """
        if not fmt.startswith(_LINE_FORMATS):
            yield self._run(sql, fmt)
            return
        header = 2 if fmt.endswith("WithNamesAndTypes") else 1 if fmt.endswith("WithNames") else 0
        with self._lock:
            if self._conn is None:
                raise SinkError(f"embedded ClickHouse at {self.path} is closed")
            try:
                result = self._conn.send_query(sql, fmt)
            except Exception as exc:
                raise SinkError(f"embedded ClickHouse refused: {str(exc).strip()[:500]}") from exc
            try:
                first = True
                while True:
                    try:
                        chunk = result.fetch()
                    except Exception as exc:
                        raise SinkError(f"embedded ClickHouse refused: {str(exc).strip()[:500]}") from exc
                    if chunk is None:
                        return
                    data = chunk.bytes() if hasattr(chunk, "bytes") else bytes(chunk)
                    if header and not first:
                        data = data.split(b"\n", header)[-1]
                    first = False
                    if data:
                        yield data
            finally:
                result.close()

    def arrow(self, sql: str) -> pa.Table:
        """Result of a read statement as an Arrow table (no text round trip)."""
        with self._lock:
            if self._conn is None:
                raise SinkError(f"embedded ClickHouse at {self.path} is closed")
            try:
                return self._conn.query(sql, "ArrowTable")
            except Exception as exc:
                raise SinkError(f"embedded ClickHouse refused: {str(exc).strip()[:500]}") from exc

    def insert_arrow(self, table: str, data: pa.Table, token: str) -> None:
        if self.fail_inserts > 0:
            self.fail_inserts -= 1
            raise InjectedFailure(f"injected insert failure into {table} "
                                  f"({self.fail_inserts} more to come)")
        cols = ", ".join(f"`{c}`" for c in data.column_names)
        kappa_arrow = data  # noqa: F841 - read by name by chdb's Python() table function
        # optimize_on_insert = 0: no ReplacingMergeTree collapse inside the block (~25% faster
        # here); merges and the views' FINAL still keep one row per key.
        self._run(f"INSERT INTO {table} ({cols}) SETTINGS insert_deduplication_token = {quote(token)}, "
                  "optimize_on_insert = 0 SELECT * FROM Python(kappa_arrow)", "CSV")

    def insert_select(self, table: str, columns: list[str], select: str, token: str) -> None:
        """``INSERT INTO table (columns) <select>`` with the deduplication token (bulk path)."""
        if self.fail_inserts > 0:
            self.fail_inserts -= 1
            raise InjectedFailure(f"injected insert failure into {table} "
                                  f"({self.fail_inserts} more to come)")
        cols = ", ".join(f"`{c}`" for c in columns)
        self._run(f"INSERT INTO {table} ({cols}) SETTINGS insert_deduplication_token = {quote(token)}, "
                  f"optimize_on_insert = 0 {select}", "CSV")

    def _run(self, sql: str, fmt: str) -> bytes:
        with self._lock:
            if self._conn is None:
                raise SinkError(f"embedded ClickHouse at {self.path} is closed")
            try:
                # Python(name) resolves ``name`` by walking up the calling frames.
                res = self._conn.query(sql, fmt)
            except Exception as exc:
                raise SinkError(f"embedded ClickHouse refused: {str(exc).strip()[:500]}") from exc
        return res.bytes() if hasattr(res, "bytes") else bytes(res)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
