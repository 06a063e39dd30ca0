"""A bad-input flood into the input topics while ``kappa run`` processes a generator run.

Flood (every message's topic/partition/offset recorded from its delivery report): random bytes,
the Confluent header with unknown schema ids, truncated Avro, valid Avro of the wrong schema
(a users record on orders, an order on users), ~1 MB payloads, plus a malformed JSONL file
through ``kappa produce --file``. Required: the pipeline keeps running (no child restarts),
every bad message is one ``kappa.rejected_events`` row with a reason (by its source offset),
the generator's results are untouched, and the counts reconcile exactly:
published = landed + rejected + duplicates.
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from kappa.kafka import client_config
from schemas.serde import Encoder, Registry
from tests.reliability.conftest import KAPPA, Pipe, assert_orders_match, rng

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

HUGE = 1_000_000


def _order(i: int) -> dict[str, Any]:
    return {"order_id": f"flood-{i}", "user_id": 1 + i % 50, "amount": 10.0, "currency": "EUR",
            "category": "books", "payment_method": "card", "ip_country": "DE",
            "event_time": 1_700_000_000_000}


def _flood(pipe: Pipe) -> dict[tuple[str, int, int], str]:
    """Publish the flood; return {(topic, partition, offset): kind} of every message."""
    r = rng("flood")
    reg = Registry(pipe.stack.schema_registry_url)
    enc_order = Encoder(reg, f"{pipe.inputs.topic('orders')}-value", "orders")
    enc_user = Encoder(reg, f"{pipe.inputs.topic('users')}-value", "users")
    user = {"user_id": 7, "country": "DE", "segment": "vip", "signup_time": 1_600_000_000_000,
            "updated_at": 1_600_000_000_000}
    o, u = pipe.inputs.topic("orders"), pipe.inputs.topic("users")
    msgs: list[tuple[str, bytes, str]] = []
    for _ in range(20):
        msgs.append((o, r.randbytes(r.randint(1, 300)), "random"))
    for _ in range(5):
        msgs.append((u, r.randbytes(r.randint(1, 300)), "random"))
    for i in range(10):
        body = enc_order.encode(_order(i))[5:]
        msgs.append((o, struct.pack(">bI", 0, 900_000_000 + i) + body, "unknown_schema_id"))
    for i in range(10):
        full = enc_order.encode(_order(100 + i))
        msgs.append((o, full[:r.randint(6, len(full) - 1)], "truncated"))
    for i in range(10):
        msgs.append((o, enc_user.encode({**user, "user_id": 100 + i}), "wrong_schema"))
    for i in range(5):
        msgs.append((u, enc_order.encode(_order(200 + i)), "wrong_schema"))
    for _ in range(3):
        msgs.append((o, b"\x00" + r.randbytes(HUGE), "huge"))
    r.shuffle(msgs)
    sent: dict[tuple[str, int, int], str] = {}
    errors: list[str] = []

    def report(kind: str) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{kind}: {err}")
            else:
                sent[(msg.topic(), msg.partition(), msg.offset())] = kind
        return on_delivery

    prod = Producer(client_config(pipe.settings(), pipe.stack.kafka_bootstrap, **{
        "enable.idempotence": True, "acks": "all", "message.max.bytes": 2 * HUGE,
        "partitioner": "murmur2_random"}))
    for i, (topic, value, kind) in enumerate(msgs):
        prod.produce(topic, value, str(1 + i % 50).encode(), on_delivery=report(kind))
    assert prod.flush(60) == 0
    assert not errors, errors
    assert len(sent) == len(msgs)
    return sent


BAD_LINES = [
    "{not json",
    '{"order_id": "file-missing-fields"}',
    '{"order_id": "file-bad-type", "user_id": "abc", "amount": 1.0, "currency": "EUR", '
    '"category": "books", "payment_method": "card", "ip_country": "DE", "event_time": 1700000000000}',
    "[1, 2, 3]",
]


def test_flood_lands_in_rejected_and_reconciles(make_pipe: Callable[..., Pipe]) -> None:
    pipe = make_pipe()
    manifest = pipe.publish()
    proc = pipe.run()
    pipe.wait_emitted(0.05, manifest.valid_unique_orders, proc)  # the flood hits a running pipeline
    sent = _flood(pipe)
    good = [{**_order(900 + i), "order_id": f"file-ok-{i}",
             "event_time": manifest.start_ms - 86_400_000} for i in range(2)]  # a day late
    lines = [json.dumps(good[0]), *BAD_LINES, json.dumps(good[1])]
    path = pipe.home / "malformed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    produced = subprocess.run([KAPPA, "produce", "--file", str(path), "--topic", pipe.inputs.topic("orders")],
                              env=pipe.env(), capture_output=True, text=True, timeout=120)
    assert produced.returncode == 1, produced.stdout + produced.stderr
    for n in range(2, 2 + len(BAD_LINES)):
        assert f":{n}:" in produced.stderr, produced.stderr
    pipe.wait(proc)
    assert "exited with" not in pipe.log(), "a child died on bad input"

    # the generator's results are untouched, except the 2 good (too late) file rows in kappa.orders
    rows = {r["order_id"]: r for r in pipe.q(
        "SELECT order_id, late FROM kappa.orders WHERE order_id LIKE 'file-%'")}
    assert {k: bool(v["late"]) for k, v in rows.items()} == {"file-ok-0": True, "file-ok-1": True}
    rejected = pipe.q("SELECT source, reason, stage, length(payload) AS size FROM kappa.rejected_events")
    by_source = {r["source"]: r for r in rejected}
    assert len(by_source) == len(rejected), "a rejected event landed twice"
    # every flood message, by its offset, with an "undecodable" reason
    for (topic, partition, offset), kind in sent.items():
        row = by_source.get(f"{topic}/{partition}/{offset}")
        assert row is not None, f"{kind} message {topic}/{partition}/{offset} not in rejected_events"
        assert row["reason"].startswith("undecodable"), (kind, row["reason"])
        if kind == "huge":
            assert "cut to" in row["reason"] and 0 < int(row["size"]) <= HUGE
    producer_rows = [r for r in rejected if r["stage"] == "producer"]
    assert sorted(int(r["source"].rsplit(":", 1)[1]) for r in producer_rows) == [2, 3, 4, 5]
    assert all(r["reason"] for r in rejected)
    codes = Counter(r["reason"].split(":")[0] for r in rejected if r["stage"] == "processor"
                    and not r["reason"].startswith("undecodable"))
    assert codes == Counter(manifest.invalid)

    # reconciliation over the orders topic: published = landed + rejected + duplicates
    flood_orders = sum(1 for (t, _, _) in sent if t == pipe.inputs.topic("orders"))
    flood_users = len(sent) - flood_orders
    landed = pipe.no_duplicates()
    rejected_orders = sum(1 for r in rejected if r["source"].startswith(pipe.inputs.topic("orders"))
                          or r["stage"] == "producer")
    published = manifest.orders_published + flood_orders + len(lines)
    assert landed == manifest.valid_unique_orders + len(good)
    assert rejected_orders == manifest.invalid_total + flood_orders + len(BAD_LINES)
    assert published == landed + rejected_orders + manifest.duplicates
    assert len(rejected) == rejected_orders + flood_users
    print(f"orders: published {published:,} (generator {manifest.orders_published:,} + flood "
          f"{flood_orders} + file {len(lines)}) = landed {landed:,} + rejected {rejected_orders} + "
          f"duplicates {manifest.duplicates}; users flood {flood_users} rejected; "
          f"flood by kind {dict(Counter(sent.values()))}")
    _assert_generator_results(pipe, manifest)


def _assert_generator_results(pipe: Pipe, manifest: Any) -> None:
    """Views equal the manifest once the 2 file rows (late, so no revenue) are left out."""
    from dataclasses import replace

    totals = {c: dict(t) for c, t in manifest.valid_totals.items()}
    totals["EUR"] = {"count": totals["EUR"]["count"] + 2, "amount": round(totals["EUR"]["amount"] + 20.0, 2)}
    assert_orders_match(pipe, replace(manifest, valid_unique_orders=manifest.valid_unique_orders + 2,
                                      valid_totals=totals))
