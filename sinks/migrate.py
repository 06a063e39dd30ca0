"""Versioned, idempotent DDL: ``sinks/migrations/NNN_*.sql`` templated by pipeline version.

Each version's storage lives in its own database (``kappa_<version>``) so a replay as a new
version never touches the live tables; :mod:`sinks.views` points the stable serving views
at one of them. Files run in name order; applied ones are recorded in
``<db>.schema_migrations`` and every statement is ``IF NOT EXISTS`` anyway, so applying
twice (or from two processes racing) is harmless.

A statement that is not idempotent by itself (a table rebuilt to change a key column's type)
carries a guard: a comment line ``-- only if: <SELECT>`` before it makes it run only while the
SELECT returns a non-zero value, so a migration interrupted halfway finishes on the next run.
(Guarded steps are not safe against two processes migrating the same server at once.)

>>> database("v1"), database("t-1a.b")
('kappa_v1', 'kappa_t_1a_b')
>>> split_statements("CREATE A;\\n-- c; d\\nCREATE B;\\n")
['CREATE A', '-- c; d\\nCREATE B']
>>> guard("-- why\\n-- only if: SELECT 1\\nDROP TABLE t"), guard("CREATE A")
('SELECT 1', None)
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from sinks.base import Backend, quote

__all__ = ["MIGRATIONS_DIR", "Migration", "apply", "database", "derived_statements", "guard", "migrations",
           "split_statements"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def database(version: str) -> str:
    """The database holding the tables of version ``version`` of the selected pipeline
    (``<its database>_<version>``)."""
    from kappa.pipeline import current

    return f"{current().database}_" + re.sub(r"[^A-Za-z0-9_]", "_", version)


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file: split at ``;`` that ends a line."""
    parts = re.split(r";[ \t]*(?:\n|$)", sql)
    out = []
    for part in parts:
        body = "\n".join(line for line in part.strip().splitlines())
        if any(line.strip() and not line.strip().startswith("--") for line in body.splitlines()):
            out.append(body.strip())
    return out


def guard(statement: str) -> str | None:
    """The ``-- only if: <SELECT>`` condition of ``statement``, or None when it always runs."""
    for line in statement.splitlines():
        if line.strip().startswith(_GUARD):
            return line.strip()[len(_GUARD):].strip()
    return None


_GUARD = "-- only if:"


@dataclass(frozen=True)
class Migration:
    """One SQL file: ``name`` (file stem) and its template."""

    name: str
    template: str

    def statements(self, version: str) -> list[str]:
        text = string.Template(self.template).substitute(db=database(version), version=version)
        return split_statements(text)


def migrations() -> list[Migration]:
    """The migration files, in order."""
    return [Migration(p.stem, p.read_text()) for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]


def apply(backend: Backend, version: str) -> list[str]:
    """Apply the missing migrations of ``version``; return the names applied now."""
    db = database(version)
    backend.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    backend.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (name String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY name "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    done = {row[0] for row in backend.rows(f"SELECT name FROM {db}.schema_migrations")}
    applied = []
    for mig in migrations():
        if mig.name in done:
            continue
        for stmt in mig.statements(version):
            condition = guard(stmt)
            if condition is None or int(backend.scalar(condition) or 0):
                backend.execute(stmt)
        backend.execute(f"INSERT INTO {db}.schema_migrations (name) VALUES ({quote(mig.name)})")
        applied.append(mig.name)
    for stmt in derived_statements(version):  # IF NOT EXISTS: a no-op once they are there
        backend.execute(stmt)
    return applied


def derived_statements(version: str) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` of the selected pipeline's stream, window and model-score tables."""
    from kappa.pipeline import current
    from sinks.ddl import create_statements

    return create_statements(current(), database(version))
