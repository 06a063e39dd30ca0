"""ClickHouse DDL derived from pipeline definitions: the e-commerce example derives the tables its
migration and the sink wrote by hand before (kept here as the oracle); a new pipeline's tables are
created by the real embedded engine."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from kappa.pipeline import DEFAULT, load
from sinks.ddl import arrow_type, create_statements, tables
from sinks.embedded import EmbeddedBackend
from sinks.rows import LINEAGE, TABLES
from tests.unit.test_pipeline_definition import GOOD, project

HAND_WRITTEN_DDL = """
CREATE TABLE IF NOT EXISTS ${db}.orders (
    order_id String,
    user_id Int64,
    amount Float64,
    currency LowCardinality(String),
    category LowCardinality(String),
    payment_method LowCardinality(String),
    ip_country LowCardinality(String),
    event_time DateTime64(3, 'UTC'),
    user_country Nullable(String),
    user_segment Nullable(String),
    user_signup_time Nullable(DateTime64(3, 'UTC')),
    fraud_score Nullable(Float64),
    late Bool,
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    pipeline_version LowCardinality(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY order_id
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ${db}.revenue_windows (
    window_start DateTime64(3, 'UTC'),
    category LowCardinality(String),
    currency LowCardinality(String),
    orders Int64,
    revenue Float64,
    revision Int64,
    final Bool,
    pipeline_version LowCardinality(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(revision)
ORDER BY (window_start, category, currency)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ${db}.scores (
    order_id String,
    fraud_score Float64,
    model LowCardinality(String),
    labelled_before Int64,
    event_time DateTime64(3, 'UTC'),
    pipeline_version LowCardinality(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY order_id
SETTINGS non_replicated_deduplication_window = 1000;
"""
"""What sinks/migrations/001_tables.sql created for the e-commerce streams, windows and scores before they were
derived."""
_S, _I, _I32, _F, _B = pa.string(), pa.int64(), pa.int32(), pa.float64(), pa.bool_()
TS = pa.timestamp("ms", tz="UTC")
HAND_WRITTEN_ARROW = {
    "orders": [("order_id", _S), ("user_id", _I), ("amount", _F), ("currency", _S), ("category", _S),
               ("payment_method", _S), ("ip_country", _S), ("event_time", TS), ("user_country", _S),
               ("user_segment", _S), ("user_signup_time", TS), ("fraud_score", _F), ("late", _B),
               ("source_topic", _S), ("source_partition", _I32), ("source_offset", _I),
               ("pipeline_version", _S), *LINEAGE],
    "revenue_windows": [("window_start", TS), ("category", _S), ("currency", _S), ("orders", _I),
                        ("revenue", _F), ("revision", _I), ("final", _B), ("pipeline_version", _S), *LINEAGE],
    "scores": [("order_id", _S), ("fraud_score", _F), ("model", _S), ("labelled_before", _I),
               ("event_time", TS), ("pipeline_version", _S), *LINEAGE],
}
"""The sink's hand-written Arrow columns of those tables (sinks/rows.py before)."""


def _migration_table(name: str) -> tuple[list[tuple[str, str]], str, str]:
    sql = HAND_WRITTEN_DDL
    m = re.search(r"CREATE TABLE IF NOT EXISTS \$\{db\}\." + name + r" \((.*?)\n\) ENGINE = ReplacingMergeTree\((\w+)\)"
                  r"\nORDER BY ([^\n]+)", sql, re.S)
    assert m, name
    cols = [tuple(line.strip().rstrip(",").split(" ", 1)) for line in m.group(1).strip().splitlines()]
    return cols, m.group(2), m.group(3).strip("()")  # type: ignore[return-value]


@pytest.mark.parametrize("table", ["orders", "revenue_windows", "scores"])
def test_the_ecommerce_tables_derive_as_the_migration_wrote_them(table: str) -> None:
    derived = tables(load(DEFAULT))[table]
    columns, version, order_by = _migration_table(table)
    assert list(derived.columns) == columns
    assert derived.version_column == version and ", ".join(derived.order_by) == order_by


@pytest.mark.parametrize("table", ["orders", "revenue_windows", "scores"])
def test_the_ecommerce_tables_derive_the_sinks_arrow_columns(table: str) -> None:
    derived = tables(load(DEFAULT))[table]
    assert [(n, arrow_type(t)) for n, t in derived.columns] == HAND_WRITTEN_ARROW[table]
    assert list(TABLES[table].columns) == HAND_WRITTEN_ARROW[table]


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
