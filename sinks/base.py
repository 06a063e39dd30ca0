"""The contract every ClickHouse backend implements, and the read-only guard of ``kappa query``.

Two backends sit behind it (:mod:`sinks.embedded`: chdb on a local directory;
:mod:`sinks.clickhouse`: a server through clickhouse-connect). They run the same SQL and DDL,
so everything above them (migrations, writer, views, query) is written once.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Generator
from typing import Any

import pyarrow as pa

from kappa.errors import SinkError

__all__ = ["READ_ONLY_VERBS", "Backend", "ReadOnlyViolation", "check_read_only", "quote"]

READ_ONLY_VERBS = ("SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "EXISTS")

_COMMENTS = re.compile(r"(--[^\n]*|/\*.*?\*/)", re.S)
_WRITES_FILES = re.compile(r"\bINTO\s+OUTFILE\b", re.I)


class ReadOnlyViolation(SinkError):
    """A statement sent through the read-only query path would write or change something."""


def check_read_only(sql: str, verbs: bool = True) -> str:
    """Return ``sql`` stripped when it is one read-only statement, else raise ReadOnlyViolation.

    ``verbs=False`` checks only that it is one statement (before the engine parses it: a
    misspelt verb is a syntax error, see :func:`sinks.guard.check_query`).

    Why a check of our own on top of ClickHouse's ``readonly=1``: the user gets a clear
    message before anything reaches the engine, and ``INTO OUTFILE`` (which readonly allows)
    is refused too.

    >>> check_read_only("  -- top\\n select 1;")
    'select 1'
    >>> check_read_only("WITH 1 AS x SELECT x")
    'WITH 1 AS x SELECT x'
    >>> check_read_only("INSERT INTO kappa.orders VALUES (1)")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sinks.base.ReadOnlyViolation: kappa query is read-only: INSERT statements are refused ...
    >>> check_read_only("SELECT 1; DROP TABLE kappa.orders")
    Traceback (most recent call last):
    ...
    sinks.base.ReadOnlyViolation: kappa query is read-only and runs exactly one statement; remove the ';' in the middle
    """
    text = _COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not text:
        raise ReadOnlyViolation("kappa query got an empty statement; pass one SELECT")
    if ";" in _strip_literals(text):
        raise ReadOnlyViolation("kappa query is read-only and runs exactly one statement; remove the ';' in the middle")
    if not verbs:
        return text
    verb = re.match(r"[(\s]*([A-Za-z]+)", text)
    word = verb.group(1).upper() if verb else text.split()[0]
    if word not in READ_ONLY_VERBS:
        raise ReadOnlyViolation(
            f"kappa query is read-only: {word} statements are refused "
            f"(allowed: {', '.join(READ_ONLY_VERBS)})"
        )
    if _WRITES_FILES.search(_strip_literals(text)):
        raise ReadOnlyViolation("kappa query is read-only: INTO OUTFILE is refused; use --format csv > file")
    return text


def _strip_literals(sql: str) -> str:
    """``sql`` without quoted strings/identifiers, so a ';' inside a literal does not count.

    >>> _strip_literals("SELECT 'a;b', `c;d` FROM t")
    "SELECT '', `` FROM t"
    """
    return re.sub(r"'(?:[^'\\]|\\.)*'|`[^`]*`|\"[^\"]*\"",
                  lambda m: m.group(0)[0] * 2, sql)


def quote(value: str) -> str:
    """A ClickHouse string literal for ``value``.

    >>> quote("it's")
    "'it\\\\'s'"
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Backend(ABC):
    """One ClickHouse engine: run statements, read results, insert Arrow tables idempotently."""

    name: str = "?"
    readonly: bool = False

    @abstractmethod
    def execute(self, sql: str) -> None:
        """Run one statement (DDL, INSERT ... SELECT); SinkError when the engine refuses."""

    @abstractmethod
    def query(self, sql: str, fmt: str = "TabSeparated") -> bytes:
        """Run one read statement and return its output in ClickHouse format ``fmt``."""

    def stream(self, sql: str, fmt: str = "TabSeparated") -> Generator[bytes, None, None]:
        """Output of one read statement in ``fmt``, block by block (memory stays bounded).

        The default runs :meth:`query` and yields its output at once; backends that can
        stream override it.
        """
        yield self.query(sql, fmt)

    @abstractmethod
    def insert_arrow(self, table: str, data: pa.Table, token: str) -> None:
        """Insert ``data`` into ``table`` atomically; a repeat with the same ``token`` is a no-op.

        The token becomes ``insert_deduplication_token``, so the target table must have
        ``non_replicated_deduplication_window`` > 0 (every Kappa table does).
        """

    @abstractmethod
    def close(self) -> None:
        """Release the engine (the embedded one unlocks its directory)."""

    def rows(self, sql: str) -> list[list[Any]]:
        """Result rows of ``sql`` as Python lists (JSON types)."""
        out = self.query(sql, "JSONCompactEachRow")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def scalar(self, sql: str) -> Any:
        """The single value of a one-row, one-column query."""
        rows = self.rows(sql)
        return rows[0][0] if rows else None

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
