"""ClickHouse DDL derived from pipeline definitions: the e-commerce example derives the tables its
migration wrote by hand; a new pipeline's tables are created by the real embedded engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kappa.pipeline import DEFAULT, load
from sinks.ddl import arrow_type, create_statements, tables
from sinks.embedded import EmbeddedBackend
from sinks.migrate import MIGRATIONS_DIR
from sinks.rows import TABLES
from tests.unit.test_pipeline_definition import GOOD, project


def _migration_table(name: str) -> tuple[list[tuple[str, str]], str, str]:
    sql = (MIGRATIONS_DIR / "001_tables.sql").read_text()
    m = re.search(r"CREATE TABLE IF NOT EXISTS \$\{db\}\." + name + r" \((.*?)\n\) ENGINE = ReplacingMergeTree\((\w+)\)"
                  r"\nORDER BY ([^\n]+)", sql, re.S)
    assert m, name
    cols = [tuple(line.strip().rstrip(",").split(" ", 1)) for line in m.group(1).strip().splitlines()]
    return cols, m.group(2), m.group(3).strip("()")  # type: ignore[return-value]


@pytest.mark.parametrize("table", ["orders", "revenue_windows"])
def test_the_ecommerce_tables_derive_as_the_migration_wrote_them(table: str) -> None:
    derived = tables(load(DEFAULT))[table]
    columns, version, order_by = _migration_table(table)
    assert list(derived.columns) == columns
    assert derived.version_column == version and ", ".join(derived.order_by) == order_by


@pytest.mark.parametrize("table", ["orders", "revenue_windows"])
def test_the_ecommerce_tables_derive_the_sinks_arrow_columns(table: str) -> None:
    derived = tables(load(DEFAULT))[table]
    assert [(n, arrow_type(t)) for n, t in derived.columns] == [(n, t) for n, t in TABLES[table].columns]


def test_a_new_pipelines_tables_are_created_by_the_engine(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    pipe = load(project(tmp_path / "p", GOOD))
    with EmbeddedBackend(tmp_path / "clickhouse") as b:
        b.execute("CREATE DATABASE IF NOT EXISTS t_v1")
        for statement in create_statements(pipe, "t_v1"):
            b.execute(statement)
        got = b.rows("SELECT table, name, type FROM system.columns WHERE database = 't_v1' "
                     "ORDER BY table, position")
    events = [(n, t) for table, n, t in got if table == "events"]
    assert events[:6] == [("event_id", "String"), ("device", "String"), ("value", "Float64"),
                          ("label", "String"), ("at", "DateTime64(3, 'UTC')"), ("site", "Nullable(String)")]
    windows = [(n, t) for table, n, t in got if table == "per_site"]
    assert windows[:5] == [("window_start", "DateTime64(3, 'UTC')"), ("window_end", "DateTime64(3, 'UTC')"),
                           ("site", "LowCardinality(Nullable(String))"), ("n", "Int64"), ("mean", "Float64")]
