"""`kappa produce` end to end against the real broker and registry (CLI in a subprocess)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from kappa.topics import input_topics
from schemas.rules import for_input, reason_code
from schemas.serde import Decoder, Registry
from tests.conftest import Stack
from tests.support.ecommerce import FUTURE_OFFSET_MS

validate_order = for_input("orders")

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))
START = "2024-03-01T06:00:00Z"
MIN = 60_000


def _kappa(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAPPA, *args], env=env, capture_output=True, text=True, timeout=300)


def _consume(stack: Stack, topic: str) -> list[Any]:
    """Every message of ``topic`` from the beginning to the end offsets, in (partition, offset) order."""
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "unused",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        got: list[Any] = []
        want = sum(ends.values())
        for _ in range(120):
            if len(got) >= want:
                break
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                assert msg.error() is None, msg.error()
                got.append(msg)
        assert len(got) == want, f"{topic}: consumed {len(got)} of {want}"
        return sorted(got, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def _decode(stack: Stack, msgs: list[Any], name: str) -> list[dict[str, Any]]:
    out = Decoder(Registry(stack.schema_registry_url), name).decode_many(m.value() for m in msgs)
    assert all(isinstance(o, dict) for o in out), out
    return out  # type: ignore[return-value]


GOOD = {"order_id": "o-1", "user_id": 7, "amount": 12.5, "currency": "EUR", "category": "books",
        "payment_method": "card", "ip_country": "DE", "event_time": "2024-03-01T10:00:00Z"}


def test_jsonl_bad_rows_are_reported_dead_lettered_and_fail_the_command(
        stack: Stack, unique: Callable[[str], str], tmp_path: Path) -> None:
    prefix = unique("jf") + "."
    path = tmp_path / "orders.jsonl"
    rows = [
        json.dumps(GOOD),                                                      # 1 good (ISO time)
        '{"order_id": "o-2", "user_id": 8, "amount": 3',                       # 2 bad JSON
        json.dumps({k: v for k, v in GOOD.items() if k != "currency"}),        # 3 missing field
        json.dumps({**GOOD, "order_id": "o-4", "amount": "lots"}),             # 4 wrong type
        "",                                                                     # 5 blank: skipped
        json.dumps({**GOOD, "order_id": "o-6", "event_time": 1709290800123}),  # 6 good (epoch ms)
        json.dumps({**GOOD, "order_id": "o-7", "user_id": "7"}),               # 7 wrong type
        json.dumps([1, 2]),                                                     # 8 not an object
    ]
    path.write_text("\n".join(rows) + "\n")
    topic = prefix + "orders"
    proc = _kappa(["produce", "--file", str(path), "--topic", topic, "--topic-prefix", prefix],
                  stack.env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    reported = re.findall(rf"^{re.escape(str(path))}:(\d+): (\w+)", proc.stderr, re.M)
    assert reported == [("2", "bad_json"), ("3", "missing_field"), ("4", "bad_type"),
                        ("7", "bad_type"), ("8", "bad_json")], proc.stderr
    assert "delivered 2" in proc.stdout and "rejected 5" in proc.stdout

    published = _decode(stack, _consume(stack, topic), "orders")
    assert sorted(o["order_id"] for o in published) == ["o-1", "o-6"]
    assert {o["event_time"] for o in published} == {1709287200000, 1709290800123}
    dead = _decode(stack, _consume(stack, topic + ".dlq"), "rejected_event")
    by_line = {d["source"].rsplit(":", 1)[1]: d for d in dead}
    assert sorted(by_line, key=int) == ["2", "3", "4", "7", "8"]
    assert by_line["2"]["payload"] == rows[1].encode()
    assert by_line["3"]["reason"] == "missing_field: currency"
    assert all(d["stage"] == "producer" and d["topic"] == topic for d in dead)


def test_csv_rows_are_coerced_per_field_type(stack: Stack, unique: Callable[[str], str],
                                             tmp_path: Path) -> None:
    prefix = unique("cf") + "."
    path = tmp_path / "users.data"
    path.write_text(
        "user_id,country,segment,signup_time,updated_at\n"
        "1,DE,new,2024-01-01T00:00:00Z,1709290800000\n"
        "two,FR,vip,2024-01-01T00:00:00Z,1709290800000\n"
        "3,GB,regular,yesterday,1709290800000\n"
        "4,US,vip,2024-01-01T00:00:00+01:00,1709290800000\n"
        "5,US\n"
    )
    topic = prefix + "users"
    proc = _kappa(["produce", "--file", str(path), "--format", "csv", "--topic", topic,
                   "--topic-prefix", prefix], stack.env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert [int(n) for n in re.findall(rf"{re.escape(str(path))}:(\d+):", proc.stderr)] == [3, 4, 6]
    users = _decode(stack, _consume(stack, topic), "users")
    assert sorted((u["user_id"], u["signup_time"]) for u in users) == [
        (1, 1704067200000), (4, 1704063600000)]
    assert len(_consume(stack, topic + ".dlq")) == 3


def _generate(stack: Stack, prefix: str, home: Path, seed: int = 7) -> tuple[dict[str, Any], str]:
    proc = _kappa(["produce", "--generator", "ecommerce", "--events", "2500", "--seed", str(seed),
                   "--start", START, "--topic-prefix", prefix, "--invalid-rate", "0.02",
                   "--dup-rate", "0.02", "--late-rate", "0.01"], stack.env(home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = re.search(r"^manifest: (.+)$", proc.stdout, re.M)
    assert path, proc.stdout
    return json.loads(Path(path.group(1)).read_text()), proc.stdout


def test_generator_manifest_matches_what_kafka_holds(stack: Stack, unique: Callable[[str], str],
                                                     tmp_path: Path) -> None:
    prefix = unique("gen") + "."
    manifest, out = _generate(stack, prefix, tmp_path)
    names = input_topics(prefix)
    users = _consume(stack, names.topic("users"))
    orders_msgs = _consume(stack, names.topic("orders"))
    labels = _consume(stack, names.topic("order_labels"))
    assert len(users) == manifest["users"] + manifest["user_updates"]
    assert len(orders_msgs) == manifest["orders_published"]
    assert len(labels) == manifest["labels"]
    assert manifest["events"] == len(users) + len(orders_msgs) + len(labels)
    assert f"sent {manifest['events']}  delivered {manifest['events']}" in out

    orders = _decode(stack, orders_msgs, "orders")
    now = manifest["start_ms"] + FUTURE_OFFSET_MS // 2  # any processing time before 2034
    invalid: Counter[str] = Counter()
    seen: set[str] = set()
    duplicates = 0
    max_on_partition: dict[int, int] = defaultdict(int)
    too_late: list[str] = []
    totals: dict[str, list[Any]] = defaultdict(lambda: [0, 0.0])
    revenue: dict[tuple[int, str, str], list[Any]] = defaultdict(lambda: [0, 0.0])
    grace = 60_000
    for msg, o in zip(orders_msgs, orders, strict=True):
        assert msg.key() == str(o["user_id"]).encode()
        reason = validate_order(o, now)
        if reason:
            invalid[reason_code(reason)] += 1
            continue
        if o["order_id"] in seen:
            duplicates += 1
            continue
        seen.add(o["order_id"])
        totals[o["currency"]][0] += 1
        totals[o["currency"]][1] += o["amount"]
        window = o["event_time"] // MIN * MIN
        if window + MIN + grace <= max_on_partition[msg.partition()]:
            too_late.append(o["order_id"])
            continue
        max_on_partition[msg.partition()] = max(max_on_partition[msg.partition()], o["event_time"])
        r = revenue[(window, o["category"], o["currency"])]
        r[0] += 1
        r[1] += o["amount"]
    assert dict(invalid) == manifest["invalid"] and len(invalid) == 5
    assert duplicates == manifest["duplicates"] > 0
    assert len(seen) == manifest["valid_unique_orders"]
    assert sorted(too_late) == sorted(manifest["too_late_order_ids"]) and too_late
    assert {c: (n, round(a, 2)) for c, (n, a) in totals.items()} == {
        c: (t["count"], t["amount"]) for c, t in manifest["valid_totals"].items()}
    assert {k: (n, round(a, 2)) for k, (n, a) in revenue.items()} == {
        (w["window_start"], w["category"], w["currency"]): (w["orders"], w["revenue"])
        for w in manifest["revenue"]}


def test_generator_same_seed_same_bytes(stack: Stack, unique: Callable[[str], str],
                                        tmp_path: Path) -> None:
    runs = []
    for _ in range(2):
        prefix = unique("det") + "."
        manifest, _ = _generate(stack, prefix, tmp_path, seed=99)
        names = input_topics(prefix)
        runs.append((manifest, {t: [(m.partition(), m.key(), m.value()[5:]) for m in _consume(stack, t)]
                                for t in (names.topic("users"), names.topic("orders"), names.topic("order_labels"))}))
    (m1, t1), (m2, t2) = runs
    per_run = ("run", "topic_prefix")
    assert {k: v for k, v in m1.items() if k not in per_run} == {
        k: v for k, v in m2.items() if k not in per_run}
    assert list(t1.values()) == list(t2.values())


def test_river_dataset_in_order_on_one_partition(stack: Stack, unique: Callable[[str], str],
                                                 tmp_path: Path) -> None:
    prefix = unique("rv") + "."
    proc = _kappa(["produce", "--river-dataset", "Phishing", "--limit", "300", "--topic-prefix",
                   prefix], stack.env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    msgs = _consume(stack, prefix + "samples.phishing")
    assert {m.partition() for m in msgs} == {0}
    samples = _decode(stack, msgs, "sample")
    assert [s["index"] for s in samples] == list(range(300))
    from river.datasets import Phishing

    x0, y0 = next(iter(Phishing()))
    assert samples[0]["x"] == {k: float(v) for k, v in x0.items()} and samples[0]["y"] == y0


def _summary(proc: subprocess.CompletedProcess[str]) -> tuple[int, int, int]:
    """``(rows, published, rejected)`` of the file summary line."""
    m = re.search(r": (\d+) rows, (\d+) published to \S+, (\d+) rejected to ", proc.stdout)
    assert m, proc.stdout + proc.stderr
    rows, published, rejected = (int(g) for g in m.groups())
    assert published + rejected == rows, proc.stdout
    return rows, published, rejected


def _dead_by_line(stack: Stack, topic: str) -> dict[int, dict[str, Any]]:
    dead = _decode(stack, _consume(stack, topic + ".dlq"), "rejected_event")
    by_line = {int(d["source"].rsplit(":", 1)[1]): d for d in dead}
    assert len(by_line) == len(dead), "a row was dead-lettered twice"
    return by_line


def test_oversized_rows_are_rejected_too_large_and_the_file_goes_on(
        stack: Stack, unique: Callable[[str], str], tmp_path: Path) -> None:
    prefix = unique("big") + "."
    topic = prefix + "orders"
    path = tmp_path / "orders.jsonl"
    huge = "x" * 5_000_000
    rows = [
        json.dumps(GOOD),                                                # 1 good
        json.dumps({**GOOD, "order_id": "o-2", "category": huge}),       # 2 valid, 5 MB: too large
        json.dumps({**GOOD, "order_id": "o-3"}),                         # 3 good
        '{"order_id": "' + huge,                                          # 4 invalid JSON, 5 MB
        json.dumps({**GOOD, "order_id": "o-5", "amount": huge}),         # 5 bad type, 5 MB value
        json.dumps({**GOOD, "order_id": "o-6"}),                         # 6 good
    ]
    path.write_text("\n".join(rows) + "\n")
    proc = _kappa(["produce", "--file", str(path), "--topic", topic, "--topic-prefix", prefix],
                  stack.env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert _summary(proc) == (6, 3, 3)
    assert max(len(line) for line in proc.stderr.splitlines()) < 1000, "a 5 MB value was echoed"
    published = _decode(stack, _consume(stack, topic), "orders")
    assert sorted(o["order_id"] for o in published) == ["o-1", "o-3", "o-6"]
    dead = _dead_by_line(stack, topic)
    assert sorted(dead) == [2, 4, 5]
    assert dead[2]["reason"].startswith("too_large: ") and "cut to" in dead[2]["reason"]
    assert dead[4]["reason"].startswith("bad_json: ") and "cut to" in dead[4]["reason"]
    assert dead[5]["reason"].startswith("bad_type: amount: ") and len(dead[5]["reason"]) < 1000
    for line in (2, 4, 5):
        assert 0 < len(dead[line]["payload"]) < 1_000_000
        assert rows[line - 1].encode().startswith(dead[line]["payload"])


def test_too_large_follows_the_topic_max_message_bytes(
        stack: Stack, unique: Callable[[str], str], tmp_path: Path) -> None:
    from kappa.kafka import TopicSpec, ensure_topics

    prefix = unique("tmax") + "."
    topic = prefix + "orders"
    ensure_topics(stack.settings(), stack.kafka_bootstrap,
                  [TopicSpec(topic, 1, {"max.message.bytes": "200000"})])
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join([
        json.dumps({**GOOD, "order_id": "o-1", "category": "y" * 100_000}),  # fits 200 kB
        json.dumps({**GOOD, "order_id": "o-2", "category": "y" * 300_000}),  # does not
        json.dumps({**GOOD, "order_id": "o-3"}),
    ]) + "\n")
    proc = _kappa(["produce", "--file", str(path), "--topic", topic, "--topic-prefix", prefix],
                  stack.env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert _summary(proc) == (3, 2, 1)
    assert sorted(o["order_id"] for o in _decode(stack, _consume(stack, topic), "orders")) == [
        "o-1", "o-3"]
    dead = _dead_by_line(stack, topic)
    assert list(dead) == [2] and dead[2]["reason"].startswith("too_large: ")
    assert "200000" in dead[2]["reason"], dead[2]["reason"]


def test_csv_and_jsonl_with_a_utf8_bom_are_read(stack: Stack, unique: Callable[[str], str],
                                                 tmp_path: Path) -> None:
    prefix = unique("bom") + "."
    topic = prefix + "orders"
    csv_path = tmp_path / "orders.csv"
    csv_path.write_bytes(b"\xef\xbb\xbforder_id,user_id,amount,currency,category,payment_method,"
                         b"ip_country,event_time\r\n"
                         b"c-1,7,12.5,EUR,books,card,DE,2024-03-01T10:00:00Z\r\n"
                         b"c-2,8,3.0,USD,games,card,US,1709290800000\r\n")
    jsonl_path = tmp_path / "orders.jsonl"
    jsonl_path.write_bytes(b"\xef\xbb\xbf" + json.dumps({**GOOD, "order_id": "j-1"}).encode() + b"\n")
    for path in (csv_path, jsonl_path):
        proc = _kappa(["produce", "--file", str(path), "--topic", topic, "--topic-prefix", prefix],
                      stack.env(tmp_path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    published = _decode(stack, _consume(stack, topic), "orders")
    assert sorted(o["order_id"] for o in published) == ["c-1", "c-2", "j-1"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_invalid_utf8_is_rejected_bad_encoding_with_the_raw_bytes(
        stack: Stack, unique: Callable[[str], str], tmp_path: Path, fmt: str) -> None:
    prefix = unique("enc") + "."
    topic = prefix + "orders"
    path = tmp_path / f"orders.{fmt}"
    if fmt == "csv":
        lines = [b"order_id,user_id,amount,currency,category,payment_method,ip_country,event_time",
                 b"e-1,7,12.5,EUR,books,card,DE,2024-03-01T10:00:00Z",
                 b"e-2,7,12.5,EUR,b\xffoks,card,DE,2024-03-01T10:00:00Z",
                 b"e-3,7,12.5,EUR,b\xc3\xb6oks,card,DE,2024-03-01T10:00:00Z"]
        bad_line = 3
    else:
        lines = [json.dumps({**GOOD, "order_id": "e-1"}).encode(),
                 json.dumps({**GOOD, "order_id": "e-2"}).encode().replace(b"books", b"b\xffoks"),
                 json.dumps({**GOOD, "order_id": "e-3", "category": "b\u00f6oks"}).encode()]
        bad_line = 2
    path.write_bytes(b"\n".join(lines) + b"\n")
    proc = _kappa(["produce", "--file", str(path), "--topic", topic, "--topic-prefix", prefix],
                  stack.env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(rf"^{re.escape(str(path))}:{bad_line}: bad_encoding: ", proc.stderr, re.M), proc.stderr
    assert _summary(proc) == (3, 2, 1)
    published = _decode(stack, _consume(stack, topic), "orders")
    assert sorted((o["order_id"], o["category"]) for o in published) == [
        ("e-1", "books"), ("e-3", "b\u00f6oks")]
    dead = _dead_by_line(stack, topic)
    assert list(dead) == [bad_line] and dead[bad_line]["reason"].startswith("bad_encoding: ")
    assert dead[bad_line]["payload"] == lines[bad_line - 1]


def test_timestamps_that_cannot_be_meant_are_rejected_naming_the_unit(
        stack: Stack, unique: Callable[[str], str], tmp_path: Path) -> None:
    prefix = unique("ts") + "."
    topic = prefix + "orders"
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(json.dumps({**GOOD, "order_id": f"t-{i}", "event_time": t}) for i, t in enumerate([
        1796611179,                   # 1 epoch seconds
        0,                            # 2
        -5,                           # 3
        "1970-01-21T00:00:00Z",       # 4 ISO, before 2000
        "1796611179",                 # 5 seconds as a string
        1796611179000,                # 6 good (ms)
        "2024-03-01T10:00:00Z",       # 7 good
    ], 1)) + "\n")
    proc = _kappa(["produce", "--file", str(path), "--topic", topic, "--topic-prefix", prefix],
                  stack.env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _summary(proc) == (7, 2, 5)
    dead = _dead_by_line(stack, topic)
    assert sorted(dead) == [1, 2, 3, 4, 5]
    assert dead[1]["reason"] == ("bad_type: event_time: 1796611179 is before 2000-01-01 as epoch ms; "
                                 "epoch seconds? use ms or ISO-8601")
    assert dead[5]["reason"] == dead[1]["reason"]
    assert all(dead[n]["reason"].startswith("bad_type: event_time: ") for n in dead)
    assert "before 2000-01-01" in dead[4]["reason"]
    assert {o["event_time"] for o in _decode(stack, _consume(stack, topic), "orders")} == {
        1796611179000, 1709287200000}

    users = tmp_path / "users.csv"  # every timestamp-millis field, and a declared minimum
    users.write_text("user_id,country,segment,signup_time,updated_at\n"
                     "1,DE,new,2024-01-01T00:00:00Z,1709290800000\n"
                     "2,DE,new,2024-01-01T00:00:00Z,1709290800\n"
                     "3,DE,new,2019-06-01T00:00:00Z,1709290800000\n")
    proc = _kappa(["produce", "--file", str(users), "--topic", prefix + "users", "--topic-prefix",
                   prefix, "--min-time", "2020-01-01T00:00:00Z"], stack.env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _summary(proc) == (3, 1, 2)
    dead = _dead_by_line(stack, prefix + "users")
    assert sorted(dead) == [3, 4]  # the header is line 1
    assert dead[3]["reason"].startswith("bad_type: updated_at: 1709290800 is before 2020-01-01")
    assert "epoch seconds?" in dead[3]["reason"]
    assert dead[4]["reason"].startswith("bad_type: signup_time: ") and "2020-01-01" in dead[4]["reason"]


def test_many_small_rows_fit_a_topic_with_a_small_max_message_bytes(
        stack: Stack, unique: Callable[[str], str], tmp_path: Path) -> None:
    import random

    from kappa.kafka import TopicSpec, ensure_topics

    prefix = unique("tsmall") + "."
    topic = prefix + "orders"
    ensure_topics(stack.settings(), stack.kafka_bootstrap,
                  [TopicSpec(topic, 1, {"max.message.bytes": "50000"})])
    rng = random.Random(5)
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(json.dumps({
        **GOOD, "order_id": f"o-{i}", "category": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=200))})
        for i in range(3000)) + "\n")  # ~700 kB that lz4 cannot shrink much: many batches
    proc = _kappa(["produce", "--file", str(path), "--topic", topic, "--topic-prefix", prefix],
                  stack.env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _summary(proc) == (3000, 3000, 0)
    assert len(_consume(stack, topic)) == 3000
