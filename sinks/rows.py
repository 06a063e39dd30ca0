"""Decoded records -> Arrow tables, one per ClickHouse table: the sink's fast path.

Why Arrow: ``INSERT ... SELECT * FROM Python(arrow_table)`` loads a column batch in one
call (~1.7M rows/s here), and epoch-millisecond ints become ``timestamp[ms, UTC]`` columns
that land exactly in ``DateTime64(3, 'UTC')`` (JSONEachRow mis-reads them).

>>> t = TABLES["sink_offsets"].arrow([{"topic": "x", "partition": 0, "next_offset": 5,
...                                    "updated_at": 1700000000123}])
>>> t.column("updated_at")[0].value, t.schema.field("partition").type
(1700000000123, DataType(int32))

The sink's hot path skips dicts: a decoded message is a tuple of its table's
:attr:`Table.fields` plus ``(kafka_topic, kafka_partition, kafka_offset)``, and
:meth:`Table.arrow_rows` turns a batch of them into columns with one ``zip``.

>>> scores = TABLES["scores"]
>>> scores.fields
('order_id', 'fraud_score', 'model', 'labelled_before', 'event_time', 'pipeline_version')
>>> t = scores.arrow_rows([("o1", 0.5, "fraud", 3, 1700000000123, "v1", "kappa.v1.scores", 2, 7)],
...                       ingested_at=1700000000999)
>>> t.column("event_time")[0].value, t.column("kafka_offset")[0].as_py(), t.column("ingested_at")[0].value
(1700000000123, 7, 1700000000999)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from kappa.pipeline import Pipeline, current
from kappa.topics import OutputTopics

__all__ = ["KAPPA_TABLES", "LINEAGE", "TABLES", "TS", "Table", "poison_row", "route", "tables_of"]

TS = pa.timestamp("ms", tz="UTC")
LINEAGE: tuple[tuple[str, pa.DataType], ...] = (
    ("kafka_topic", pa.string()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
    ("ingested_at", TS),
)
_LINEAGE_NAMES = frozenset(name for name, _ in LINEAGE)
_S, _I, _I32, _F, _B = pa.string(), pa.int64(), pa.int32(), pa.float64(), pa.bool_()


@dataclass(frozen=True)
class Table:
    """A table of a version database: its Avro input schema and its Arrow columns."""

    name: str
    schema: str | None
    columns: tuple[tuple[str, pa.DataType], ...]
    event_time: str | None = None
    """Column whose age at landing feeds ``kappa_sink_event_lag_seconds``."""

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c, t) for c, t in self.columns])

    @functools.cached_property
    def fields(self) -> tuple[str, ...]:
        """Columns a message carries (every column but the sink's lineage), in column order."""
        return tuple(c for c, _ in self.columns if c not in _LINEAGE_NAMES)

    def arrow_rows(self, rows: Sequence[tuple[Any, ...]], ingested_at: int) -> pa.Table:
        """Arrow table of ``rows``: :attr:`fields` values + (kafka_topic, partition, offset).

        One ``zip(*rows)`` makes the columns and one ``pa.array`` per column converts each
        with its declared type (epoch-ms ints -> ``timestamp[ms, UTC]``); ``ingested_at`` is
        one value for the whole batch. No dict per row: several times faster than
        :meth:`arrow` on dicts.
        """
        n = len(rows)
        schema = _SCHEMAS[self.name]
        names = (*self.fields, "kafka_topic", "kafka_partition", "kafka_offset")
        cols = dict(zip(names, zip(*rows, strict=True), strict=True)) if n else dict.fromkeys(names, ())
        arrays = []
        for f in schema:
            if f.name == "ingested_at":
                arrays.append(pa.repeat(pa.scalar(ingested_at, f.type), n))
            else:
                arrays.append(pa.array(cols[f.name], type=f.type, size=n))
        return pa.Table.from_arrays(arrays, schema=schema)

    def arrow(self, records: Sequence[dict[str, Any]]) -> pa.Table:
        """Arrow table of ``records`` (dicts holding every column; extra keys are ignored).

        ``from_pylist`` converts in C++: about twice as fast as one ``pa.array`` per column.
        """
        return pa.Table.from_pylist(list(records), schema=_SCHEMAS[self.name])


KAPPA_TABLES: tuple[Table, ...] = (
    Table("model_quality", "model_quality", (
        ("model", _S), ("bucket", TS), ("labelled", _I), ("accuracy", _F), ("roc_auc", _F),
        ("log_loss", _F), ("drift_detections", _I), ("pipeline_version", _S), ("bucket_index", _I),
        *LINEAGE)),
    Table("drift_events", "drift_event", (
        ("model", _S), ("detector", _S), ("labelled", _I), ("event_time", TS), ("action", _S),
        ("pipeline_version", _S), *LINEAGE), "event_time"),
    Table("rejected_events", "rejected_event", (
        ("source", _S), ("topic", _S), ("reason", _S), ("payload", pa.binary()),
        ("rejected_at", TS), ("stage", _S), ("pipeline_version", _S), *LINEAGE)),
    Table("sink_offsets", None, (
        ("topic", _S), ("partition", _I32), ("next_offset", _I), ("updated_at", TS))),
)
"""Tables every pipeline's version database has (``sinks/migrations``)."""


def tables_of(pipeline: Pipeline) -> dict[str, Table]:
    """Every table of a version of ``pipeline``: its streams', windows', sessions', joins' and
    scores' (derived from the definition, :mod:`sinks.ddl`), then :data:`KAPPA_TABLES`."""
    from kappa.pipeline.derive import Names
    from sinks.ddl import arrow_type, tables

    outputs = {o.table: o for o in Names(pipeline, "v").outputs()}
    out: dict[str, Table] = {}
    for name, derived in tables(pipeline).items():
        o = outputs[name]
        time = (pipeline.input(o.name).time if o.kind == "stream" else
                {"scores": "event_time", "session": "session_end", "join": "left_time"}.get(o.kind))
        cols = tuple((c, arrow_type(ct)) for c, ct in derived.columns)
        out[name] = Table(name, o.schema, cols, time)
    for own in KAPPA_TABLES:
        out.setdefault(own.name, own)
    return out


TABLES: dict[str, Table] = tables_of(current())
"""The tables of the selected pipeline (``--pipeline`` / ``KAPPA_PIPELINE``), by name."""

_SCHEMAS = {name: t.arrow_schema for name, t in TABLES.items()}


def route(outputs: OutputTopics, topic: str) -> Table:
    """The table that stores messages of ``topic``.

    >>> from kappa.topics import output_topics
    >>> o = output_topics("v1")
    >>> route(o, o.window).name, route(o, "t1.orders.dlq").name, route(o, o.rejected).name
    ('revenue_windows', 'rejected_events', 'rejected_events')
    """
    name = _routes(outputs.version).get(topic)
    if name is None:
        if topic.endswith(".dlq"):
            return TABLES["rejected_events"]
        raise KeyError(f"topic {topic} is not an output of pipeline version {outputs.version}")
    return TABLES[name]


@functools.cache
def _routes(version: str) -> dict[str, str]:
    from kappa.pipeline.derive import Names

    return {o.topic: o.table for o in Names(current(), version).outputs()}


def poison_row(topic: str, partition: int, offset: int, value: bytes | None, reason: str,
               timestamp_ms: int, version: str | None = None) -> dict[str, Any]:
    """A rejected_events row (stage ``sink``, of pipeline ``version``) for a message the sink
    cannot decode.

    ``rejected_at`` is the message's own timestamp, so a re-delivery yields the same row.

    >>> poison_row("kappa.v1.scores", 2, 7, b"x", "not Avro", 5)["source"]
    'kappa.v1.scores/2/7'
    """
    return {"source": f"{topic}/{partition}/{offset}", "topic": topic,
            "reason": f"sink could not decode the message: {reason}", "payload": value or b"",
            "rejected_at": timestamp_ms, "stage": "sink", "pipeline_version": version}
