"""The sink's decode fast path: the generated flat-record reader gives exactly fastavro's values."""

from __future__ import annotations

import io
import json
import math
import random
from typing import Any

import fastavro
import pytest

from schemas.fastpath import compile_reader
from schemas.serde import DecodeError, Decoder, Encoder, Registry, reader_schema, schema_names, schema_text
from tests.unit.memory_registry import MemoryRegistryClient

FLAT = [n for n in schema_names() if compile_reader(json.loads(schema_text(n))) is not None]




def _value(rng: random.Random, avro_type: Any) -> Any:
    if isinstance(avro_type, list):
        return None if rng.random() < 0.3 else _value(rng, next(t for t in avro_type if t != "null"))
    if isinstance(avro_type, dict):
        avro_type = avro_type["type"]
    if avro_type == "long":
        return rng.choice([0, -1, 63, 64, -65, 8191, 8192, 2**31, 2**62, -(2**63), 2**63 - 1,
                           1_700_000_000_000 + rng.randint(0, 10**9), rng.randint(-(2**63), 2**63 - 1)])
    if avro_type == "int":
        return rng.choice([0, -1, 64, -(2**31), 2**31 - 1, rng.randint(-(2**31), 2**31 - 1)])
    if avro_type == "double":
        return rng.choice([0.0, -0.0, math.inf, -math.inf, 1e-300, rng.uniform(-1e12, 1e12)])
    if avro_type == "float":
        return rng.choice([0.0, 1.5, -2.25])
    if avro_type == "boolean":
        return rng.random() < 0.5
    if avro_type == "string":
        return "".join(rng.choice("aZ9 é€😀") for _ in range(rng.choice([0, 1, 5, 63, 64, 300])))
    if avro_type == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 64, 200])))
    raise AssertionError(avro_type)


def _records(name: str, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    fields = json.loads(schema_text(name))["fields"]
    return [{f["name"]: _value(rng, f["type"]) for f in fields} for _ in range(n)]


def _fastavro_read(name: str, body: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(body), reader_schema(name), reader_schema(name))


@pytest.mark.parametrize("name", FLAT)
def test_generated_reader_equals_fastavro_on_random_records(name: str) -> None:
    read = compile_reader(json.loads(schema_text(name)))
    assert read is not None
    fields = [f["name"] for f in json.loads(schema_text(name))["fields"]]
    for rec in _records(name, 2000, seed=len(name)):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(schema_text(name))), rec)
        body = buf.getvalue()
        expected = _fastavro_read(name, body)
        got = read(b"HDR" + body, 3)
        assert repr(dict(zip(fields, got, strict=True))) == repr(expected)  # NaN, -0.0 exact
        assert [type(v) for v in got] == [type(expected[f]) for f in fields]


@pytest.mark.parametrize("name", FLAT)
def test_generated_reader_never_disagrees_on_corrupt_bytes(name: str) -> None:
    """Mutated, truncated and extended bodies: the reader raises, or agrees with fastavro."""
    read = compile_reader(json.loads(schema_text(name)))
    assert read is not None
    rng = random.Random(3)
    schema = fastavro.parse_schema(json.loads(schema_text(name)))
    fields = [f["name"] for f in json.loads(schema_text(name))["fields"]]
    for rec in _records(name, 300, seed=11):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, rec)
        body = bytearray(buf.getvalue())
        variants = [bytes(body[:rng.randrange(len(body) or 1)]), bytes(body) + b"\x00"]
        for _ in range(5):
            mutated = bytearray(body)
            if mutated:
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            variants.append(bytes(mutated))
        for v in variants:
            try:
                got = read(v, 0)
            except Exception:
                continue
            fo = io.BytesIO(v)
            expected = fastavro.schemaless_reader(fo, reader_schema(name), reader_schema(name))
            assert fo.tell() == len(v)
            assert repr(dict(zip(fields, got, strict=True))) == repr(expected)


@pytest.mark.parametrize("name", FLAT)
def test_decoder_rows_and_dicts_match_fastavro(name: str) -> None:
    registry = Registry("memory://", client=MemoryRegistryClient())  # type: ignore[arg-type]
    enc, dec = Encoder(registry, f"{name}-value", name), Decoder(registry, name)
    recs = _records(name, 200, seed=5)
    datas = enc.encode_many(recs)
    slow = [dec.decode(d) for d in datas]
    assert dec.decode_many(datas) == slow
    assert [dec.decode_row(d) for d in datas] == [tuple(r[f] for f in dec.fields) for r in slow]


def test_decode_row_errors_are_fastavros() -> None:
    registry = Registry("memory://", client=MemoryRegistryClient())  # type: ignore[arg-type]
    enc, dec = Encoder(registry, "enriched-value", "enriched_order"), Decoder(registry, "enriched_order")
    good = enc.encode(_records("enriched_order", 1, seed=1)[0])
    for bad in (b"", b"\x01\x00\x00\x00\x01abc", good[:-3], good + b"zz", b"\x00\x00\x00\x07\x99" + good[5:]):
        with pytest.raises(DecodeError) as fast:
            dec.decode_row(bad)
        with pytest.raises(DecodeError) as slow:
            dec.decode(bad)
        assert fast.value.reason == slow.value.reason


def test_other_writer_schemas_are_resolved_by_fastavro() -> None:
    registry = Registry("memory://", client=MemoryRegistryClient())  # type: ignore[arg-type]
    old = json.loads(schema_text("enriched_order"))
    old["fields"] = [f for f in old["fields"] if f["name"] != "fraud_score"]
    old_id = registry.register("enriched-value", json.dumps(old))
    rec = _records("enriched_order", 1, seed=2)[0]
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), rec)
    dec = Decoder(registry, "enriched_order")
    row = dict(zip(dec.fields, dec.decode_row(Encoder.frame(old_id, body.getvalue())), strict=True))
    assert row == {**rec, "fraud_score": None}
