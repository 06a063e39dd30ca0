"""ClickHouse DDL derived from a pipeline definition: tables from the outputs' Avro schemas.

Types: ``string`` -> ``String`` (``LowCardinality(String)`` for declared low-cardinality
fields and Kappa's own label-like columns), ``long`` -> ``Int64``, ``int`` -> ``Int32``,
``double`` -> ``Float64``, ``float`` -> ``Float32``, ``boolean`` -> ``Bool``, ``bytes`` ->
``String``, ``timestamp-millis`` -> ``DateTime64(3, 'UTC')``, a union with null ->
``Nullable(...)``. Every table gets the sink's lineage columns and is a ReplacingMergeTree
keyed so a re-delivered row replaces its earlier copy: a stream's by its declared id (else
its source partition and offset), a window's by start and keys, a session's by its keys and
start, an interval join's by its row key (left id, right id), with the highest revision winning.
The same statements serve the embedded engine and a ClickHouse server.

>>> from kappa.pipeline import DEFAULT, load
>>> t = tables(load(DEFAULT))["orders"]
>>> t.columns[3], t.columns[8], t.order_by, t.version_column
(('currency', 'LowCardinality(String)'), ('user_country', 'Nullable(String)'), ('order_id',), 'kafka_offset')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from kappa.pipeline.definition import Pipeline
from kappa.pipeline.derive import Names, schema_json

__all__ = ["DerivedTable", "arrow_type", "clickhouse_type", "create_statements", "tables"]

LINEAGE_COLUMNS = (("kafka_topic", "LowCardinality(String)"), ("kafka_partition", "Int32"),
                   ("kafka_offset", "Int64"), ("ingested_at", "DateTime64(3, 'UTC')"))
_LOW = frozenset({"pipeline_version", "model", "stage", "detector", "action"})
_PRIMITIVE = {"string": "String", "bytes": "String", "long": "Int64", "int": "Int32", "double": "Float64",
              "float": "Float32", "boolean": "Bool"}
_ARROW = {"String": pa.string(), "Int64": pa.int64(), "Int32": pa.int32(), "Float64": pa.float64(),
          "Float32": pa.float32(), "Bool": pa.bool_(), "DateTime64(3, 'UTC')": pa.timestamp("ms", tz="UTC")}


def clickhouse_type(avro: Any, low_cardinality: bool = False) -> str:
    """ClickHouse column type of an Avro field type.

    >>> clickhouse_type(["null", {"type": "long", "logicalType": "timestamp-millis"}])
    "Nullable(DateTime64(3, 'UTC'))"
    >>> clickhouse_type("string", low_cardinality=True), clickhouse_type(["null", "string"], True)
    ('LowCardinality(String)', 'LowCardinality(Nullable(String))')
    """
    if isinstance(avro, list):
        rest = [t for t in avro if t != "null"]
        if len(rest) != 1:
            raise ValueError(f"unions other than [null, T] have no column type: {avro}")
        inner = f"Nullable({clickhouse_type(rest[0])})"
        return f"LowCardinality({inner})" if low_cardinality and inner == "Nullable(String)" else inner
    if isinstance(avro, dict):
        if avro.get("logicalType") == "timestamp-millis":
            return "DateTime64(3, 'UTC')"
        return clickhouse_type(avro["type"], low_cardinality)
    if avro not in _PRIMITIVE:
        raise ValueError(f"Avro type {avro!r} has no column type (use primitives, timestamp-millis, [null, T])")
    t = _PRIMITIVE[avro]
    return f"LowCardinality({t})" if low_cardinality and t == "String" else t


def arrow_type(column_type: str) -> pa.DataType:
    """Arrow type the sink builds a column of ClickHouse type ``column_type`` with."""
    t = column_type
    for wrapper in ("LowCardinality(", "Nullable("):
        if t.startswith(wrapper):
            t = t[len(wrapper):-1]
    return _ARROW[t]


@dataclass(frozen=True)
class DerivedTable:
    """A table of a version database, derived from one output."""

    name: str
    columns: tuple[tuple[str, str], ...]
    order_by: tuple[str, ...]
    version_column: str
    topic_kind: str

    def create(self, db: str) -> str:
        cols = ",\n".join(f"    {n} {t}" for n, t in self.columns)
        order = self.order_by[0] if len(self.order_by) == 1 else f"({', '.join(self.order_by)})"
        types = dict(self.columns)
        # a window keyed by an enriched field groups the events whose key was unknown under null
        nullable_key = any("Nullable" in types.get(c, "") for c in self.order_by)
        return (f"CREATE TABLE IF NOT EXISTS {db}.{self.name} (\n{cols}\n) "
                f"ENGINE = ReplacingMergeTree({self.version_column})\nORDER BY {order}\n"
                "SETTINGS non_replicated_deduplication_window = 1000"
                + (", allow_nullable_key = 1" if nullable_key else ""))


def tables(pipeline: Pipeline) -> dict[str, DerivedTable]:
    """The tables of the pipeline's stream, window, session, join and model-score outputs (Kappa's own tables
    — rejected_events, model_quality, drift_events, sink_offsets — are the same for every
    pipeline: ``sinks/migrations``)."""
    names = Names(pipeline, "v")
    out: dict[str, DerivedTable] = {}
    for o in names.outputs():
        if o.kind not in ("stream", "window", "session", "join", "scores"):
            continue
        schema = json.loads(schema_json(pipeline, o))
        if o.kind == "stream":
            inp = pipeline.input(o.name)
            low = set(inp.low_cardinality) | _LOW
            order: tuple[str, ...] = (inp.id,) if inp.id else ("source_partition", "source_offset")
            version = "kafka_offset"
        elif o.kind == "scores":
            low = set(_LOW)
            order = (pipeline.models[o.name].on,)
            version = "kafka_offset"
        elif o.kind == "session":
            se = pipeline.sessions[o.name]
            low = set(pipeline.input(se.stream).low_cardinality) & set(se.keys) | _LOW
            order = (*se.keys, "session_start")
            version = "revision"
        elif o.kind == "join":
            # an unmatched row's right_id is null: the sorting key reads it as ''
            low = set(_LOW)
            order = ("left_id", "ifNull(right_id, '')")
            version = "revision"
        else:
            w = pipeline.windows[o.name]
            stream_low = set(pipeline.input(w.stream).low_cardinality)
            low = {k for k in w.keys if k in stream_low} | _LOW | set(w.keys)
            order = ("window_start", *w.keys)
            version = "revision"
        cols = tuple((f["name"], clickhouse_type(f["type"], f["name"] in low)) for f in schema["fields"])
        out[o.table] = DerivedTable(o.table, (*cols, *LINEAGE_COLUMNS), order, version, o.kind)
    return out


def create_statements(pipeline: Pipeline, db: str) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` of every derived table in database ``db``."""
    return [t.create(db) for t in tables(pipeline).values()]
