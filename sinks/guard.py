"""The read-only guard of ``kappa query``: the engine parses, then Kappa checks what it parsed.

Three layers, outermost first:

1. :func:`sinks.base.check_read_only` on the text: one statement, a read verb, no
   ``INTO OUTFILE``.
2. :func:`check_query` asks the engine itself: ``formatQuery`` reports a syntax error in the
   engine's own words, and ``EXPLAIN AST`` (parse only, nothing runs) shows every function
   the statement calls. Table functions other than the generators in :data:`SAFE_TABLE_FUNCTIONS`
   (``file``, ``url``, ``s3``, ``remote``, ``mysql``, ``executable``, ``Python``, ...) and
   scalar functions that read outside the engine (:data:`OUTSIDE_FUNCTIONS`) are refused.
3. The engine enforces ``readonly=1`` on every read-only connection: writes, DDL, setting
   changes and every table function that reaches a file, URL, other database or process
   fail inside ClickHouse even if a statement slipped past the layers above (``readonly=2``
   would not do: it lets those table functions run).
"""

from __future__ import annotations

import re

from kappa.errors import SinkError
from sinks.base import Backend, ReadOnlyViolation, check_read_only, quote

__all__ = ["OUTSIDE_FUNCTIONS", "SAFE_TABLE_FUNCTIONS", "QuerySyntaxError", "check_query",
           "outside_calls"]

# Table functions that only generate data inside the engine (compared lower-cased).
SAFE_TABLE_FUNCTIONS = frozenset({
    "numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generaterandom", "generate_series",
    "generateseries", "view", "null",
})
# Scalar functions that read outside the engine: ``file('/etc/passwd')`` returns the file.
OUTSIDE_FUNCTIONS = frozenset({"file", "catboostevaluate"})

_NODE = re.compile(r"^( *)(\w+)(?: (\S+))?")


class QuerySyntaxError(SinkError):
    """The engine could not parse the statement (its message says where)."""


def outside_calls(ast: str) -> list[str]:
    """Calls in an ``EXPLAIN AST`` listing that would reach outside the engine.

    >>> outside_calls('''SelectWithUnionQuery (children 1)
    ...  ExpressionList (children 1)
    ...   SelectQuery (children 2)
    ...    ExpressionList (children 1)
    ...     Function file (children 1)
    ...    TablesInSelectQuery (children 2)
    ...     TablesInSelectQueryElement (children 1)
    ...      TableExpression (children 1)
    ...       Function numbers (alias n) (children 1)
    ...     TablesInSelectQueryElement (children 1)
    ...      TableExpression (children 1)
    ...       Function url (children 1)''')
    ['file()', 'table function url()']
    """
    found: list[str] = []
    parents: list[tuple[int, str]] = []
    for line in ast.splitlines():
        m = _NODE.match(line)
        if not m:
            continue
        depth, node, name = len(m.group(1)), m.group(2), (m.group(3) or "")
        while parents and parents[-1][0] >= depth:
            parents.pop()
        if node == "Function":
            lower = name.lower()
            in_from = bool(parents) and parents[-1][1] == "TableExpression"
            if in_from and lower not in SAFE_TABLE_FUNCTIONS:
                found.append(f"table function {name}()")
            elif not in_from and lower in OUTSIDE_FUNCTIONS:
                found.append(f"{name}()")
        parents.append((depth, node))
    return found


def check_query(backend: Backend, sql: str) -> str:
    """``sql`` ready to run read-only on ``backend``, else QuerySyntaxError / ReadOnlyViolation.

    A syntax error is the engine's (``SELEC 1`` is a syntax error, not a refused verb).
    """
    text = check_read_only(sql, verbs=False)
    try:
        backend.query(f"SELECT formatQuery({quote(text)})", "TSVRaw")
    except SinkError as exc:
        if "SYNTAX_ERROR" in str(exc) or "Syntax error" in str(exc):
            raise QuerySyntaxError(_engine_message(str(exc))) from exc
        raise
    text = check_read_only(text)
    ast = backend.query(f"EXPLAIN AST {text}", "TSVRaw").decode("utf-8", "replace")
    calls = outside_calls(ast)
    if calls:
        raise ReadOnlyViolation(
            f"kappa query reads the pipeline's databases only: {', '.join(dict.fromkeys(calls))} "
            "reaches files, URLs, other databases or processes and is refused")
    return text


def _engine_message(msg: str) -> str:
    """The engine's syntax error without our backend's prefix or the ClickHouse version.

    >>> _engine_message("embedded ClickHouse refused: Code: 62. DB::Exception: Syntax error: "
    ...                 "failed at position 1 (SELEC). (SYNTAX_ERROR) (version 26.9.2.1)")
    'syntax error: failed at position 1 (SELEC). (SYNTAX_ERROR)'
    """
    m = re.search(r"Syntax error:?\s*(.*)", msg, re.S)
    body = m.group(1) if m else msg
    body = " ".join(re.sub(r"\s*\(version [\d.]+\)\.?", "", body).split())
    head, sep, expected = body.partition("Expected one of: ")
    if sep and len(expected) > 160:  # the engine lists every token it could have taken
        body = head + sep + expected[:160].rsplit(",", 1)[0] + ", ..."
    return "syntax error: " + body
