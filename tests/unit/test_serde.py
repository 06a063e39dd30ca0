"""Serde: the generated writer is byte-identical to fastavro; decoding resolves and reports."""

from __future__ import annotations

import io
import json
import math
import random
from typing import Any

import fastavro
import pytest

from schemas.fastpath import compile_writer, zigzag_varint, zigzag_varint_slow
from schemas.serde import (
    DecodeError,
    Decoder,
    Encoder,
    Registry,
    load_schema,
    schema_names,
    schema_text,
    subject,
)
from tests.unit.memory_registry import MemoryRegistryClient


@pytest.fixture
def registry() -> Registry:
    return Registry("memory://", client=MemoryRegistryClient())  # type: ignore[arg-type]


def _order(rng: random.Random, i: int) -> dict[str, Any]:
    return {"order_id": f"o-{i}-{'é' * rng.randint(0, 3)}", "user_id": rng.choice([1, 63, 64, 8191,
            8192, 2**31, 2**62, -(2**63), 2**63 - 1]), "amount": rng.uniform(-1e9, 1e9),
            "currency": rng.choice(["EUR", "USD", ""]), "category": "c" * rng.randint(0, 200),
            "payment_method": "card", "ip_country": "DE",
            "event_time": rng.randint(-(2**45), 2**45)}


def _fastavro_bytes(name: str, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, load_schema(name), record)
    return buf.getvalue()


def test_varint_tables_match_reference() -> None:
    rng = random.Random(1)
    values = [0, 1, -1, 8191, 8192, -8192, 2**62, 2**63 - 1, -(2**63)]
    values += [rng.randint(-(2**63), 2**63 - 1) for _ in range(2000)]
    values += [1_700_000_000_000 + rng.randint(0, 10**7) for _ in range(2000)]
    for n in values:
        assert zigzag_varint(n) == zigzag_varint_slow(n), n
    for n in (2**63, -(2**63) - 1, 2**70):
        with pytest.raises(OverflowError):
            zigzag_varint(n)


def test_generated_writer_is_byte_identical_to_fastavro() -> None:
    rng = random.Random(7)
    write = compile_writer(json.loads(schema_text("orders")), b"")
    assert write is not None
    for i in range(3000):
        rec = _order(rng, i)
        assert write(rec) == _fastavro_bytes("orders", rec)


@pytest.mark.parametrize("name", ["users", "orders", "order_labels", "enriched_order",
                                  "revenue_window", "rejected_event", "fraud_score"])
def test_flat_schemas_compile(name: str) -> None:
    assert compile_writer(json.loads(schema_text(name)), b"") is not None


def test_sample_schema_uses_fastavro(registry: Registry) -> None:
    assert compile_writer(json.loads(schema_text("sample")), b"") is None
    enc, dec = Encoder(registry, "s-value", "sample"), Decoder(registry, "sample")
    rec = {"index": 3, "x": {"a": 1.5, "b": "x", "c": None, "d": True}, "y": True}
    assert dec.decode(enc.encode(rec)) == rec


def test_round_trip_and_framing(registry: Registry) -> None:
    enc = Encoder(registry, subject("orders"), "orders")
    dec = Decoder(registry, "orders")
    recs = [_order(random.Random(i), i) for i in range(50)]
    datas = enc.encode_many(recs)
    assert all(d[:1] == b"\x00" for d in datas)
    for rec, got in zip(recs, dec.decode_many(datas), strict=True):
        assert isinstance(got, dict)
        assert got == rec or (math.isnan(rec["amount"]) and math.isnan(got["amount"]))


def test_encode_errors_come_from_fastavro(registry: Registry) -> None:
    enc = Encoder(registry, "orders-value", "orders")
    good = _order(random.Random(0), 0)
    for bad in ({**good, "user_id": "x"}, {**good, "amount": "abc"},
                {k: v for k, v in good.items() if k != "currency"}, {**good, "user_id": 2**64}):
        with pytest.raises((ValueError, TypeError, OverflowError)):
            enc.encode(bad)


def test_defaults_and_datetimes_fall_back_to_fastavro(registry: Registry) -> None:
    import datetime as dt

    enc, dec = Encoder(registry, "rejected-value", "rejected_event"), Decoder(registry, "rejected_event")
    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rec = {"source": "f:1", "topic": "orders", "reason": "r", "payload": b"raw", "rejected_at": when}
    got = dec.decode(enc.encode(rec))
    assert got["stage"] == "processor" and got["rejected_at"] == int(when.timestamp() * 1000)


def test_decode_many_reports_bad_items_in_place(registry: Registry) -> None:
    enc, dec = Encoder(registry, "orders-value", "orders"), Decoder(registry, "orders")
    good = enc.encode(_order(random.Random(0), 0))
    out = dec.decode_many([good, b"", b"\x01\x00\x00\x00\x01abc", good[:-3], good + b"zz",
                           b"\x00\x00\x00\x03\x99" + good[5:], good])
    assert isinstance(out[0], dict) and isinstance(out[-1], dict)
    reasons = [o.reason for o in out[1:-1] if isinstance(o, DecodeError)]
    assert len(reasons) == 5
    assert "need >= 5" in reasons[0] and "magic byte" in reasons[1]
    assert "truncated" in reasons[2] or "corrupt" in reasons[2]
    assert "trailing" in reasons[3] and "unknown schema id" in reasons[4]


def test_old_writer_resolves_against_new_reader(registry: Registry) -> None:
    old = json.loads(schema_text("orders"))
    old["fields"] = [f for f in old["fields"] if f["name"] != "ip_country"]
    old_id = registry.register("orders-value", json.dumps(old))
    body = io.BytesIO()
    rec = _order(random.Random(1), 1)
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), rec)
    with pytest.raises(DecodeError, match="cannot be read as orders"):
        Decoder(registry, "orders").decode(Encoder.frame(old_id, body.getvalue()))
    new = json.loads(schema_text("orders"))
    new["fields"].append({"name": "coupon", "type": ["null", "string"], "default": None})
    new_reader = fastavro.parse_schema(new)
    framed = Encoder(registry, "orders-value", "orders").encode(rec)
    got: Any = fastavro.schemaless_reader(io.BytesIO(framed[5:]), load_schema("orders"), new_reader)
    assert got["coupon"] is None and got["order_id"] == rec["order_id"]


def test_every_schema_has_field_docs() -> None:
    for name in schema_names():
        raw = json.loads(schema_text(name))
        assert raw.get("doc"), name
        assert all(f.get("doc") for f in raw["fields"]), name
