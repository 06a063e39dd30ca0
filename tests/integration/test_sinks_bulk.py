"""The bulk insert in the embedded engine (sinks/bulk.py) lands exactly what the per-message
path lands, and refuses (so the caller decodes one by one) whenever one message in the batch
is not clean; an injected outage raises instead, so the writer retries it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.fastpath import compile_writer
from schemas.serde import Decoder, Registry, schema_text
from sinks import migrate
from sinks.bulk import BulkAvro, bulk_schema
from sinks.embedded import EmbeddedBackend, InjectedFailure
from sinks.rows import TABLES
from tests.unit.memory_registry import MemoryRegistryClient as _MemoryClient
from tests.unit.test_sinks_decode import _records

pytestmark = pytest.mark.integration

NOW = 1_700_000_000_999


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with EmbeddedBackend(Path(tmp_path_factory.mktemp("bulk")) / "ch") as b:
        yield b


_DBS = iter(range(10**6))


def _db(backend: EmbeddedBackend) -> str:
    """A fresh version database (every table migrated) for one test."""
    version = f"bulk{next(_DBS)}"
    migrate.apply(backend, version)
    return migrate.database(version)


def _setup(name: str) -> tuple[Decoder, bytes, Any]:
    registry = Registry("memory://", client=_MemoryClient())  # type: ignore[arg-type]
    schema_id = registry.register(f"{name}-value", schema_text(name))
    header = b"\x00" + schema_id.to_bytes(4, "big")
    dec = Decoder(registry, name)
    writer = registry.writer_schema(schema_id)["__kappa_plain"]
    return dec, header, bulk_schema(writer)


def _bulk(schema: Any, values: list[bytes], header: bytes, dec: Decoder) -> BulkAvro:
    b = BulkAvro("kappa.v1.t", schema, header, dec.decode_row)
    n = len(values)  # gaps in offsets, as transactions leave them
    b.extend(values, [i % 3 for i in range(n)], [100 + 2 * i for i in range(n)], [NOW] * n)
    return b


@pytest.mark.parametrize(("name", "table"), [("enriched_order", "orders"), ("fraud_score", "scores"),
                                             ("revenue_window", "revenue_windows")])
def test_bulk_insert_equals_per_message_insert(backend: EmbeddedBackend, name: str, table: str) -> None:
    dec, header, schema = _setup(name)
    assert schema is not None
    write = compile_writer(json.loads(schema_text(name)), header)
    assert write is not None
    recs = [r for r in _records(name, 3000, seed=9)
            if all(not isinstance(v, int) or -(2**62) < v < 2**62 for v in r.values())]
    values = [write(r) for r in recs]
    bulk_db, row_db = _db(backend), _db(backend)
    assert _bulk(schema, values, header, dec).insert(backend, TABLES[table], f"{bulk_db}.{table}", "t1", NOW)
    rows = [(*dec.decode_row(v), "kappa.v1.t", i % 3, 100 + 2 * i) for i, v in enumerate(values)]
    backend.insert_arrow(f"{row_db}.{table}", TABLES[table].arrow_rows(rows, NOW), "t1")
    cols = ", ".join(f"toUnixTimestamp64Milli(`{c}`)" if c in ("event_time", "window_start", "user_signup_time",
                                                 "ingested_at") else f"`{c}`"
                     for c, _ in TABLES[table].columns)
    order = "kafka_partition, kafka_offset"
    got = backend.arrow(f"SELECT {cols} FROM {bulk_db}.{table} ORDER BY {order}")
    want = backend.arrow(f"SELECT {cols} FROM {row_db}.{table} ORDER BY {order}")
    assert got.num_rows == want.num_rows == len(values)
    for i in range(want.num_columns):  # NaN/-0.0 exact via repr
        a, b = got.column(i), want.column(i)
        assert repr(a.to_pylist()) == repr(b.to_pylist()), want.column_names[i]


def test_a_resent_bulk_is_dropped_by_its_token(backend: EmbeddedBackend) -> None:
    dec, header, schema = _setup("enriched_order")
    write = compile_writer(json.loads(schema_text("enriched_order")), header)
    assert write is not None
    values = [write(r) for r in _records("enriched_order", 100, seed=5)]
    db = _db(backend)
    for _ in range(2):
        assert _bulk(schema, values, header, dec).insert(backend, TABLES["orders"], f"{db}.orders", "same", NOW)
    assert backend.scalar(f"SELECT count() FROM {db}.orders") == 100


def test_an_injected_outage_raises_instead_of_refusing(backend: EmbeddedBackend) -> None:
    dec, header, schema = _setup("enriched_order")
    write = compile_writer(json.loads(schema_text("enriched_order")), header)
    assert write is not None
    values = [write(r) for r in _records("enriched_order", 10, seed=6)]
    db, b = _db(backend), backend
    b.fail_inserts = 1
    with pytest.raises(InjectedFailure):
        _bulk(schema, values, header, dec).insert(b, TABLES["orders"], f"{db}.orders", "x", NOW)
    assert _bulk(schema, values, header, dec).insert(b, TABLES["orders"], f"{db}.orders", "x", NOW)
    assert b.scalar(f"SELECT count() FROM {db}.orders") == 10


@pytest.mark.parametrize("damage", ["truncated", "trailing", "utf8"])
def test_one_unclean_message_refuses_the_whole_batch(backend: EmbeddedBackend, damage: str) -> None:
    dec, header, schema = _setup("enriched_order")
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
    db = _db(backend)
    assert not _bulk(schema, values, header, dec).insert(backend, TABLES["orders"], f"{db}.orders", "d", NOW)
    assert backend.scalar(f"SELECT count() FROM {db}.orders WHERE kafka_offset >= 140") == 0


def test_schemas_with_bytes_are_not_bulk_decoded() -> None:
    assert bulk_schema(json.loads(schema_text("rejected_event"))) is None
    assert bulk_schema(json.loads(schema_text("sample"))) is None
