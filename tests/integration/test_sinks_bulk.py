"""Bulk Avro decode in the embedded engine (sinks/bulk.py) equals the per-message decode, and
refuses (so the caller decodes one by one) whenever one message in the batch is not clean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from schemas.fastpath import compile_writer
from schemas.serde import Decoder, Registry, schema_text
from sinks.bulk import BulkAvro, bulk_schema
from sinks.embedded import EmbeddedBackend
from sinks.rows import TABLES
from tests.unit.memory_registry import MemoryRegistryClient as _MemoryClient
from tests.unit.test_sinks_decode import _records

pytestmark = pytest.mark.integration

NOW = 1_700_000_000_999


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with EmbeddedBackend(Path(tmp_path_factory.mktemp("bulk")) / "ch") as b:
        yield b


def _setup(name: str) -> tuple[Decoder, bytes, Any]:
    registry = Registry("memory://", client=_MemoryClient())  # type: ignore[arg-type]
    schema_id = registry.register(f"{name}-value", schema_text(name))
    header = b"\x00" + schema_id.to_bytes(4, "big")
    dec = Decoder(registry, name)
    writer = registry.writer_schema(schema_id)["__kappa_plain"]
    return dec, header, bulk_schema(writer)


def _bulk(schema: Any, values: list[bytes]) -> BulkAvro:
    b = BulkAvro("kappa.v1.t", schema)
    for i, v in enumerate(values):
        b.add(v, i % 3, 100 + 2 * i, NOW)  # gaps in offsets, as transactions leave them
    return b


@pytest.mark.parametrize(("name", "table"), [("enriched_order", "orders"), ("fraud_score", "scores"),
                                             ("revenue_window", "revenue_windows")])
def test_bulk_decode_equals_per_message_decode(backend: EmbeddedBackend, name: str, table: str) -> None:
    dec, header, schema = _setup(name)
    assert schema is not None
    write = compile_writer(json.loads(schema_text(name)), header)
    assert write is not None
    recs = [r for r in _records(name, 3000, seed=9)
            if all(not isinstance(v, int) or -(2**62) < v < 2**62 for v in r.values())]
    values = [write(r) for r in recs]
    got = _bulk(schema, values).decode(backend, TABLES[table], NOW)
    assert got is not None
    rows = [(*dec.decode_row(v), "kappa.v1.t", i % 3, 100 + 2 * i) for i, v in enumerate(values)]
    want = TABLES[table].arrow_rows(rows, NOW)
    assert got.schema == want.schema
    for name_ in want.column_names:  # timestamps as ints (any int64 fits), NaN/-0.0 exact via repr
        a, b = got.column(name_), want.column(name_)
        if pa.types.is_timestamp(a.type):
            a, b = a.cast(pa.int64()), b.cast(pa.int64())
        assert repr(a.to_pylist()) == repr(b.to_pylist()), name_


@pytest.mark.parametrize("damage", ["truncated", "trailing", "utf8"])
def test_one_unclean_message_refuses_the_whole_batch(backend: EmbeddedBackend, damage: str) -> None:
    _dec, header, schema = _setup("enriched_order")
    write = compile_writer(json.loads(schema_text("enriched_order")), header)
    assert write is not None
    recs = _records("enriched_order", 50, seed=4)
    for r in recs:
        r["order_id"] = "abc"
    values = [write(r) for r in recs]
    v = values[20]
    values[20] = {"truncated": v[:-4], "trailing": v + b"\x02",
                  "utf8": v[:5] + v[5:].replace(b"\x06abc", b"\x06a\xff\xfe", 1)}[damage]
    assert values[20] != v
    assert _bulk(schema, values).decode(backend, TABLES["orders"], NOW) is None


def test_schemas_with_bytes_are_not_bulk_decoded() -> None:
    assert bulk_schema(json.loads(schema_text("rejected_event"))) is None
    assert bulk_schema(json.loads(schema_text("sample"))) is None
