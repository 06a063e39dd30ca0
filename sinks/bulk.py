"""Bulk Avro for the sink's busiest tables: a batch of raw messages -> one INSERT in the engine.

Why: decoding Avro in Python costs microseconds per message and was the sink's bottleneck;
so was carrying decoded rows back into Python as Arrow only to send them into the engine
again. The embedded engine reads Avro in C++: the batch's messages are written, untouched,
as one Avro object-container block whose record schema is the writer schema with a
``fixed(5)`` field in front (the Confluent header: magic byte + schema id) and a
``fixed(16)`` lineage field behind (a per-batch random nonce, then partition int32 and offset
int64, built with numpy for each consumed chunk as it is added, so the thread that lands the
batch does no per-message work). One ``INSERT ... SELECT ... FROM file(.., 'Avro')`` then lands
the batch: kafka_partition/kafka_offset come from the lineage field.

Why that is safe: a body carries no length, so a corrupt message could shift every record
after it. The SELECT therefore checks, on every row, that the header field equals the
batch's header, that the lineage starts with the nonce, and that every string is valid
UTF-8 (as fastavro would); ``throwIf`` fails the statement on the first row that does not
hold, before any row of its block is written. A refused batch (or any engine error other
than an injected outage) makes :meth:`BulkAvro.insert` return False and the caller decodes
those messages one by one, which finds and reports the poison ones. The refused statement
used its own deduplication token, so rows it may have written from earlier blocks (all
checked) are simply replaced by key by the per-message insert. Only messages whose writer
schema is the reader schema, of schemas without ``bytes`` fields, take this path.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kappa.errors import SinkError
from schemas.fastpath import zigzag_varint
from sinks.base import quote
from sinks.rows import Table

__all__ = ["BulkAvro", "avro_container", "bulk_schema"]

_HEADER = "_kappa_header"
_LINEAGE = "_kappa_lineage"
_LINEAGE_TYPE = np.dtype([("n", "V4"), ("p", "<i4"), ("o", "<i8")])


def bulk_schema(writer: dict[str, Any]) -> dict[str, Any] | None:
    """``writer`` (JSON form) framed by the header and lineage fields, or None if not bulk-able.

    >>> s = bulk_schema({"type": "record", "name": "T", "fields": [{"name": "a", "type": "long"}]})
    >>> [f["name"] for f in s["fields"]]
    ['_kappa_header', 'a', '_kappa_lineage']
    >>> bulk_schema({"type": "record", "name": "T", "fields": [{"name": "b", "type": "bytes"}]})
    """
    if not isinstance(writer, dict) or writer.get("type") != "record":
        return None

    def plain(t: Any) -> bool:
        if isinstance(t, list):
            return len(t) == 2 and "null" in t and all(plain(x) for x in t if x != "null")
        if isinstance(t, dict):
            return t.get("logicalType") in (None, "timestamp-millis") and plain(t.get("type"))
        return t in ("long", "int", "double", "float", "boolean", "string")

    if not all(plain(f["type"]) for f in writer["fields"]):
        return None
    header = {"type": "fixed", "name": "KappaSinkHeader", "namespace": "kappa.sink", "size": 5}
    lineage = {"type": "fixed", "name": "KappaSinkLineage", "namespace": "kappa.sink", "size": 16}
    return {**writer, "fields": [{"name": _HEADER, "type": header}, *writer["fields"],
                                 {"name": _LINEAGE, "type": lineage}]}


def _strings(schema: dict[str, Any]) -> list[str]:
    """Names of the string fields (plain or nullable) of a :func:`bulk_schema`."""
    def is_string(t: Any) -> bool:
        return t == "string" or (isinstance(t, list) and "string" in t)

    return [f["name"] for f in schema["fields"] if is_string(f["type"])]


def _is_long(t: Any) -> bool:
    """A plain (or nullable) ``long`` without a logical type."""
    if isinstance(t, list):
        return any(_is_long(x) for x in t if x != "null")
    return t == "long" or (isinstance(t, dict) and t.get("type") == "long" and "logicalType" not in t)


def avro_container(schema: dict[str, Any], body: bytes, count: int, sync: bytes) -> bytes:
    """An Avro object-container file with one uncompressed block of ``count`` records."""
    return _container_head(schema, count, len(body), sync) + body + sync


def _container_head(schema: dict[str, Any], count: int, size: int, sync: bytes) -> bytes:
    """What precedes a block of ``count`` records (``size`` bytes) in :func:`avro_container`."""
    meta = {b"avro.schema": json.dumps(schema).encode(), b"avro.codec": b"null"}
    head = [b"Obj\x01", zigzag_varint(len(meta))]
    for k, v in meta.items():
        head += [zigzag_varint(len(k)), k, zigzag_varint(len(v)), v]
    head += [b"\x00", sync, zigzag_varint(count), zigzag_varint(size)]
    return b"".join(head)


@dataclass
class BulkAvro:
    """Raw messages of one table and one topic, all framed with ``header``, waiting for one insert.

    ``decode_row`` decodes one message into the table's field values: the per-message path
    when the engine refuses the batch, and the newest event time for the sink's lag metric.
    ``nonce`` starts every lineage field of this batch (random, drawn once per batch).
    """

    topic: str
    schema: dict[str, Any]
    header: bytes
    decode_row: Callable[[bytes], tuple[Any, ...]]
    values: list[bytes] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    nonce: bytes = field(default_factory=lambda: os.urandom(4))
    _body: list[bytes] = field(default_factory=list, init=False, repr=False)
    """The container's block so far, one piece per :meth:`extend` (``header+body, lineage`` of
    each of its messages)."""

    def extend(self, values: list[bytes], partitions: list[int], offsets: list[int],
               timestamps: list[int]) -> None:
        """Add one consumed chunk; its piece of the container's block is built here, while the
        chunk is fresh in the cache, so :meth:`insert` only writes the pieces out."""
        self.values += values
        self.partitions += partitions
        self.offsets += offsets
        self.timestamps += timestamps
        n = len(values)
        lineage = np.empty(n, dtype=_LINEAGE_TYPE)
        lineage["n"] = np.frombuffer(self.nonce, dtype="V4")[0]
        lineage["p"], lineage["o"] = partitions, offsets
        chunks: list[bytes | None] = [None] * (2 * n)
        chunks[0::2] = values
        chunks[1::2] = lineage.view("V16").tolist()  # one 16-byte bytes object per message
        self._body.append(b"".join(chunks))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.values)

    def container(self) -> bytes:
        """The batch as one Avro container: ``header+body, lineage`` per message."""
        return b"".join(self._container_parts())

    def _container_parts(self) -> list[bytes]:
        sync = os.urandom(16)
        size = sum(map(len, self._body))
        return [_container_head(self.schema, len(self.values), size, sync), *self._body, sync]

    def select(self, table: Table, path: str, nonce: bytes, ingested_at: int) -> tuple[list[str], str]:
        """(columns, ``SELECT``) that reads the container at ``path`` into ``table``'s columns,
        failing on the first row that is not aligned or not valid UTF-8 (see module doc)."""
        checks = [f"{_HEADER} != unhex('{self.header.hex()}')",
                  f"substring({_LINEAGE}, 1, 4) != unhex('{nonce.hex()}')",
                  *(f"NOT ifNull(isValidUTF8(`{s}`), 1)" for s in _strings(self.schema))]
        fields = {f["name"] for f in self.schema["fields"]}
        # epoch-ms longs (the writer schema of the plain decode has no logical types) into
        # DateTime64 columns: the engine's own Int64 -> DateTime64 cast would read seconds
        millis = {f["name"]: f"fromUnixTimestamp64Milli(`{f['name']}`, 'UTC')" for f in self.schema["fields"]
                  if _is_long(f["type"])}
        exprs = {
            "kafka_topic": quote(self.topic),
            "kafka_partition": f"reinterpretAsInt32(substring({_LINEAGE}, 5, 4)) + _kappa_bad",
            "kafka_offset": f"reinterpretAsInt64(substring({_LINEAGE}, 9, 8))",
            "ingested_at": f"fromUnixTimestamp64Milli(toInt64({int(ingested_at)}), 'UTC')",
        }
        cols = [c for c, _ in table.columns if c in exprs or c in fields]
        exprs.update({c: millis[c] for c, t in table.columns if pa.types.is_timestamp(t) and c in millis})
        select = (f"SELECT {', '.join(exprs.get(c, f'`{c}`') for c in cols)} FROM ("
                  f"SELECT *, throwIf({' OR '.join(checks)}, 'kappa: bulk record misaligned or not UTF-8') "
                  f"AS _kappa_bad FROM file({quote(path)}, 'Avro')) "
                  "SETTINGS schema_inference_use_cache_for_file = 0, max_threads = 1")
        return cols, select

    def insert(self, backend: Any, table: Table, target: str, token: str, ingested_at: int,
               tmp_dir: Path | None = None) -> bool:
        """Insert the batch into ``target``; False when the engine refuses it (decode per message).

        An outage (an :class:`~sinks.embedded.InjectedFailure` or a closed engine) raises, so
        the writer retries it like any failed insert.
        """
        from sinks.embedded import InjectedFailure

        directory = tmp_dir or Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
        path = directory / f"kappa-sink-{uuid.uuid4().hex}.avro"
        try:
            with path.open("wb") as out:
                out.writelines(self._container_parts())
            cols, select = self.select(table, str(path), self.nonce, ingested_at)
            backend.insert_select(target, cols, select, token)
        except InjectedFailure:
            raise
        except SinkError as exc:
            if "is closed" in str(exc):
                raise
            return False
        except OSError:  # no room for the file: the per-message path needs none
            return False
        finally:
            path.unlink(missing_ok=True)
        return True
