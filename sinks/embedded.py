"""Embedded backend: the chdb engine (ClickHouse in-process) on a directory under KAPPA_HOME.

chdb locks its directory to one process, so the sink service owns the writer and serves
reads through :mod:`sinks.endpoint`; within that process a second, read-only connection on
the same directory is allowed (chdb shares one engine per process and path).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

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


LOCK_WAIT_S = 30.0
"""How long opening the embedded directory waits for another process to let go of it: a
``kappa query`` holds it for the length of one query, so a sink or a replay starting meanwhile
waits instead of failing (a running sink holds it for good: callers check its endpoint first)."""


def lock_holder(path: Path) -> str | None:
    """``pid N (command)`` of a process that has ``path``'s lock file (``status``) open, if any.

    >>> lock_holder(Path("/nonexistent")) is None
    True
    """
    target = str((Path(path) / "status").resolve())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != target:
                    continue
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            return f"pid {pid} ({cmd[:120]})"
    return None


def _refused(exc: Exception) -> SinkError:
    """An engine error as the SinkError callers handle (its text, cut to 500 characters)."""
    return SinkError(f"embedded ClickHouse refused: {str(exc).strip()[:500]}")


class EmbeddedBackend(Backend):
    """chdb on ``path``; ``readonly`` opens it with ClickHouse ``readonly=1``.

    ``readonly=1``, not chdb's ``mode=ro`` (``readonly=2``): level 1 also forbids changing
    settings and every table function that reaches files, URLs or processes.

    ``fail_inserts`` makes the next N :meth:`insert_arrow` calls raise InjectedFailure
    before touching the engine (the outage test of the embedded engine).
    """

    name = "embedded"

    def __init__(self, path: Path, readonly: bool = False, fail_inserts: int = 0,
                 wait_s: float = LOCK_WAIT_S) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.fail_inserts = fail_inserts
        self._lock = threading.Lock()
        self.path.mkdir(parents=True, exist_ok=True)
        conn_str = f"{self.path.resolve()}" + (
            "?output_format_pretty_single_large_number_tip_threshold=0&readonly=1" if readonly else "")
        self._conn = self._connect(conn_str, wait_s)
        if not readonly:
            self._warm_up()

    def _warm_up(self) -> None:
        """Read an empty Arrow table through ``Python()`` once: the first use of that table
        function costs ~0.3 s here, which would otherwise delay the first batch's insert."""
        kappa_arrow = pa.table({"x": pa.array([], pa.int8())})  # noqa: F841 - read by chdb by name
        self._run("SELECT count() FROM Python(kappa_arrow)", "CSV")

    def _connect(self, conn_str: str, wait_s: float) -> Any:
        """chdb's connection; while another process holds the directory, retried for ``wait_s``."""
        import chdb

        deadline, pause = time.monotonic() + wait_s, 0.05
        while True:
            try:
                return chdb.connect(conn_str)
            except Exception as exc:
                if not ("lock" in str(exc).lower() or "EmbeddedServer" in str(exc)):
                    raise SinkError(f"cannot open embedded ClickHouse at {self.path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    holder = lock_holder(self.path) or "another process (gone by now)"
                    raise LockedByAnotherProcess(
                        f"the embedded ClickHouse directory {self.path} is held by {holder} "
                        f"(waited {wait_s:.0f}s); query a running pipeline through `kappa query`, "
                        "or stop that process") from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

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
            conn = self._connection()
            try:
                result = conn.send_query(sql, fmt)
            except Exception as exc:
                raise _refused(exc) from exc
            try:
                first = True
                while True:
                    try:
                        chunk = result.fetch()
                    except Exception as exc:
                        raise _refused(exc) from exc
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
            conn = self._connection()
            try:
                return conn.query(sql, "ArrowTable")
            except Exception as exc:
                raise _refused(exc) from exc

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

    def _connection(self) -> Any:
        """The open chdb connection (the caller holds ``_lock``); SinkError once closed."""
        if self._conn is None:
            raise SinkError(f"embedded ClickHouse at {self.path} is closed")
        return self._conn

    def _run(self, sql: str, fmt: str) -> bytes:
        with self._lock:
            conn = self._connection()
            try:
                # Python(name) resolves ``name`` by walking up the calling frames.
                res = conn.query(sql, fmt)
            except Exception as exc:
                raise _refused(exc) from exc
        return res.bytes() if hasattr(res, "bytes") else bytes(res)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
