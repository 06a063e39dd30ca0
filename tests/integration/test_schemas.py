"""Schemas against the real registry: round trips, evolution, and `kappa schemas check`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kappa.pipeline import current
from schemas.serde import Decoder, Encoder, Registry, schema_names, schema_text, subject
from tests.conftest import Stack

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))
T = 1_700_000_000_000

SAMPLES: dict[str, dict[str, Any]] = {
    "users": {"user_id": 1, "country": "DE", "segment": "new", "signup_time": T - 5, "updated_at": T},
    "orders": {"order_id": "o-1", "user_id": 2, "amount": 9.99, "currency": "EUR", "category": "books",
               "payment_method": "card", "ip_country": "FR", "event_time": T},
    "order_labels": {"order_id": "o-1", "is_fraud": True, "label_time": T + 60_000},
    "sample": {"index": 0, "x": {"a": 1.0, "b": "s", "c": None, "d": False}, "y": True},
    "rejected_event": {"source": "f.jsonl:3", "topic": "orders", "reason": "bad_json: x",
                       "payload": b"{oops", "rejected_at": T, "stage": "producer"},
    "enriched_order": {"order_id": "o-1", "user_id": 2, "amount": 9.99, "currency": "EUR",
                       "category": "books", "payment_method": "card", "ip_country": "FR",
                       "event_time": T, "user_country": None, "user_segment": "vip",
                       "user_signup_time": T - 1, "fraud_score": 0.25, "late": False,
                       "source_topic": "orders", "source_partition": 3, "source_offset": 42,
                       "pipeline_version": "v1"},
    "revenue_window": {"window_start": T, "category": "books", "currency": "EUR", "orders": 3,
                       "revenue": 30.5, "revision": 2, "final": True, "pipeline_version": "v1"},
    "fraud_score": {"order_id": "o-1", "fraud_score": 0.1, "model": "fraud", "labelled_before": 7,
                    "event_time": T, "pipeline_version": "v1"},
    "model_quality": {"model": "fraud", "bucket": T, "labelled": 10, "accuracy": 0.9,
                      "roc_auc": 0.8, "log_loss": 0.3, "drift_detections": 1, "pipeline_version": "v1",
                      "bucket_index": T},
    "drift_event": {"model": "fraud", "detector": "ADWIN", "labelled": 100, "event_time": T,
                    "action": "reset", "pipeline_version": "v1"},
}


def test_every_schema_has_a_sample() -> None:
    assert set(SAMPLES) == set(schema_names())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_through_the_registry(stack: Stack, unique: Callable[[str], str], name: str) -> None:
    registry = Registry(stack.schema_registry_url)
    enc = Encoder(registry, subject(unique(name)), name)
    data = enc.encode(SAMPLES[name])
    # a fresh Registry: the decoder must fetch the writer schema by id from the registry
    dec = Decoder(Registry(stack.schema_registry_url), name)
    assert dec.decode(data) == SAMPLES[name]
    assert dec.decode_many([data, b"junk"])[0] == SAMPLES[name]


def test_evolution_old_events_decode_with_the_new_reader(stack: Stack, unique: Callable[[str], str],
                                                         tmp_path: Path) -> None:
    """v1 writer (the working tree) -> v2 reader with an added optional field."""
    subj = subject(unique("orders"))
    registry = Registry(stack.schema_registry_url)
    registry.client.set_compatibility(subj, "BACKWARD")
    old_bytes = Encoder(registry, subj, "orders").encode(SAMPLES["orders"])
    v2 = json.loads(schema_text("orders"))
    v2["fields"].append({"name": "coupon", "type": ["null", "string"], "default": None,
                         "doc": "Coupon code."})
    v2_id = registry.register(subj, json.dumps(v2))  # the registry accepts the evolution
    import fastavro

    from schemas.serde import _plain, split_frame

    writer_id, body = split_frame(old_bytes)
    assert writer_id != v2_id
    writer = registry.writer_schema(writer_id)
    import io

    got = fastavro.schemaless_reader(io.BytesIO(body), writer, fastavro.parse_schema(_plain(v2)))
    assert got == {**SAMPLES["orders"], "coupon": None}
    # and the working-tree decoder reads events written by the *newer* writer too
    new_body = io.BytesIO()
    fastavro.schemaless_writer(new_body, fastavro.parse_schema(_plain(v2)),
                               {**SAMPLES["orders"], "coupon": "X1"})
    decoded = Decoder(registry, "orders").decode(Encoder.frame(v2_id, new_body.getvalue()))
    assert decoded == SAMPLES["orders"]


def _kappa(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAPPA, *args], env=env, capture_output=True, text=True, timeout=120)


def test_check_refuses_an_incompatible_change_naming_the_field(
        stack: Stack, unique: Callable[[str], str], tmp_path: Path) -> None:
    env = stack.env(tmp_path)
    prefix = unique("chk") + "."
    reg = _kappa(["schemas", "register", "--topic-prefix", prefix], env)
    assert reg.returncode == 0, reg.stderr
    assert f"{prefix}orders-value" in reg.stdout

    ok = _kappa(["schemas", "check", "--topic-prefix", prefix], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "INCOMPATIBLE" not in ok.stdout

    candidate = tmp_path / "avro"
    shutil.copytree(current().schema_dir, candidate)
    orders = json.loads((candidate / "orders.avsc").read_text())
    for f in orders["fields"]:
        if f["name"] == "amount":
            f["type"] = "string"
    orders["fields"].append({"name": "channel", "type": "string", "doc": "required, no default"})
    (candidate / "orders.avsc").write_text(json.dumps(orders))
    labels = json.loads((candidate / "order_labels.avsc").read_text())
    labels["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    (candidate / "order_labels.avsc").write_text(json.dumps(labels))

    bad = _kappa(["schemas", "check", "--topic-prefix", prefix, "--schema-dir", str(candidate)], env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "field 'amount': type changed from double to string" in bad.stdout
    assert "field 'channel': added without a default" in bad.stdout
    lines = {line.split()[0]: line for line in bad.stdout.splitlines() if line.startswith(prefix)}
    assert "INCOMPATIBLE" in lines[f"{prefix}orders-value"]
    assert "compatible" in lines[f"{prefix}order_labels-value"]  # optional field: fine
    assert "INCOMPATIBLE" not in lines[f"{prefix}order_labels-value"]


def test_model_quality_bucket_as_a_time_is_backward_compatible_with_the_long(
        stack: Stack, unique: Callable[[str], str], tmp_path: Path) -> None:
    """bucket: long -> timestamp-millis long, and bucket_index added with a default: the registry
    accepts it under BACKWARD, ``kappa schemas check`` says compatible, old records decode."""
    version = unique("t").replace("-", "")
    from schemas.catalog import topic_schemas

    topic = next(t for t, name in topic_schemas(version).items() if name == "model_quality")
    subj = subject(topic)
    new = json.loads(schema_text("model_quality"))
    old = {**new, "fields": [{**f, "type": "long"} if f["name"] == "bucket" else f
                             for f in new["fields"] if f["name"] != "bucket_index"]}
    registry = Registry(stack.schema_registry_url)
    registry.client.set_compatibility(subj, "BACKWARD")
    old_id = registry.register(subj, json.dumps(old))
    import io

    import fastavro

    body = io.BytesIO()
    record = {k: v for k, v in SAMPLES["model_quality"].items() if k != "bucket_index"}
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), record)

    check = _kappa(["schemas", "check", "--version", version], stack.env(tmp_path))
    assert check.returncode == 0, check.stdout + check.stderr
    line = next(x for x in check.stdout.splitlines() if x.startswith(subj))
    assert line.split()[-1] == "compatible", line
    assert registry.register(subj, schema_text("model_quality")) != old_id
    decoded = Decoder(registry, "model_quality").decode(Encoder.frame(old_id, body.getvalue()))
    assert decoded == {**record, "bucket_index": -1}
