"""Pure logic of the sinks: read-only guard, migrations templating, Arrow rows, batches, routing."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from kappa.topics import output_topics
from sinks.base import ReadOnlyViolation, check_read_only
from sinks.migrate import database, derived_statements, migrations
from sinks.rows import TABLES, TS, poison_row, route
from sinks.service import dlq_pattern, sink_group
from sinks.views import VIEWS
from sinks.writer import Batch, CrashPoint


@pytest.mark.parametrize("sql", [
    "SELECT 1", "select * from kappa.orders", "(SELECT 1)", "WITH x AS (SELECT 1) SELECT * FROM x",
    "SHOW TABLES FROM kappa", "DESCRIBE kappa.orders", "EXPLAIN SELECT 1", "EXISTS kappa.orders",
    "/* c */ SELECT ';' AS semicolon", "SELECT 1;",
])
def test_read_only_statements_pass(sql: str) -> None:
    assert check_read_only(sql)


@pytest.mark.parametrize("sql", [
    "INSERT INTO kappa.orders VALUES (1)", "DROP TABLE kappa.orders", "ALTER TABLE t DELETE WHERE 1",
    "CREATE TABLE t (a Int8) ENGINE = Memory", "TRUNCATE kappa.orders", "OPTIMIZE TABLE t FINAL",
    "SYSTEM STOP MERGES", "SET readonly = 0", "SELECT 1; DROP TABLE t", "",
    "SELECT 1 INTO OUTFILE '/tmp/x'", "-- only a comment",
])
def test_writes_and_tricks_are_refused(sql: str) -> None:
    with pytest.raises(ReadOnlyViolation, match=r"read-only|empty"):
        check_read_only(sql)


def _final_ddl(version: str) -> dict[str, str]:
    """Table -> the CREATE statement of its current shape: the last one that creates it, or that
    creates the table a migration rebuilt it as (``EXCHANGE TABLES t AND staging``)."""
    db = re.escape(database(version))
    out: dict[str, str] = {}
    for stmt in [*(s for m in migrations() for s in m.statements(version)), *derived_statements(version)]:
        code = "\n".join(line for line in stmt.splitlines() if not line.strip().startswith("--"))
        if created := re.search(rf"CREATE TABLE IF NOT EXISTS {db}\.(\w+) \(", code):
            out[created.group(1)] = code
        elif swapped := re.search(rf"EXCHANGE TABLES {db}\.(\w+) AND {db}\.(\w+)", code):
            out[swapped.group(1)] = out.pop(swapped.group(2))
    return out


def test_migrations_render_for_any_version_and_set_dedup_window_on_every_table() -> None:
    stmts = [s for m in migrations() for s in m.statements("t-123")]
    assert not any("${" in s for s in stmts)
    assert set(_final_ddl("t-123")) == set(TABLES)
    for s in (s for s in stmts if "CREATE TABLE" in s):
        assert "non_replicated_deduplication_window" in s, s
        assert "IF NOT EXISTS" in s


def test_arrow_columns_match_the_ddl() -> None:
    ddl = _final_ddl("v1")
    for table in TABLES.values():
        body = ddl[table.name].split(" (", 1)[1].split(") ENGINE", 1)[0]
        ddl_cols = [line.split()[0] for line in body.split(",\n") if line.strip()]
        assert ddl_cols == [c for c, _ in table.columns], table.name


def test_model_quality_bucket_is_a_time_and_bucket_index_in_the_key() -> None:
    ddl = _final_ddl("v1")["model_quality"]
    assert "bucket DateTime64(3, 'UTC')," in ddl
    assert "ORDER BY (model, if(bucket_index < 0, toUnixTimestamp64Milli(bucket), bucket_index))" in ddl
    assert dict(TABLES["model_quality"].columns)["bucket"] == TS


def test_arrow_timestamps_are_exact_epoch_millis_and_nulls_survive() -> None:
    row = {c: None for c, _ in TABLES["orders"].columns}
    row.update(order_id="o1", user_id=1, amount=1.5, currency="EUR", category="c", payment_method="card",
               ip_country="DE", event_time=1_700_000_000_123, late=False, source_topic="orders",
               source_partition=0, source_offset=0, pipeline_version="v1", kafka_topic="t",
               kafka_partition=0, kafka_offset=0, ingested_at=1)
    t = TABLES["orders"].arrow([row])
    assert t.schema.field("event_time").type == TS
    assert t.column("event_time").cast(pa.int64())[0].as_py() == 1_700_000_000_123
    assert t.column("user_signup_time")[0].as_py() is None


def test_routing_covers_every_output_and_dlq() -> None:
    o = output_topics("v9")
    assert {route(o, t).name for t in (o.enriched, o.scores, o.window, o.model_quality, o.drift,
                                       o.rejected, "x.orders.dlq")} == set(TABLES) - {"sink_offsets"}
    with pytest.raises(KeyError):
        route(o, "kappa.v8.scores")


def test_dlq_pattern_is_limited_to_the_prefix() -> None:
    p = re.compile(dlq_pattern(""))
    assert p.match("orders.dlq") and p.match("samples.phishing.dlq")
    assert not p.match("t1.orders.dlq") and not p.match("kappa.v1.rejected")


def test_batch_ranges_digest_and_next_offsets() -> None:
    b = Batch()
    for off in (3, 4, 5):
        b.add("orders", {}, "t", 1, off)
    b.add("scores", {}, "u", 0, 9)
    assert b.size == 4 and b.next_offsets() == {("t", 1): 6, ("u", 0): 10}
    same = Batch(ranges={("u", 0): (9, 9), ("t", 1): (3, 5)})
    assert b.digest() == same.digest() != Batch(ranges={("t", 1): (3, 6)}).digest()


def test_poison_rows_are_deterministic() -> None:
    a = poison_row("t", 0, 1, b"x", "bad", 5)
    assert a == poison_row("t", 0, 1, b"x", "bad", 5) and a["stage"] == "sink"


def test_crash_point_parsing() -> None:
    assert CrashPoint.parse("mid_batch:2") == CrashPoint("mid_batch", 2)
    with pytest.raises(Exception, match="point must be one of"):
        CrashPoint.parse("nowhere:1")


def test_names() -> None:
    assert sink_group("v2") == "kappa-v2-sink"
    assert database("v2") == "kappa_v2"
    assert {"orders", "revenue_per_minute", "model_quality", "rejected_events"} <= set(VIEWS)


def test_raw_messages_count_in_ranges_per_partition() -> None:
    schema = {"type": "record", "name": "T", "fields": []}
    h = b"\x00\x00\x00\x00\x01"

    def row(v: bytes) -> tuple[()]:
        return ()

    b = Batch()
    assert b.add_raw_many("orders", "t", schema, h, row, [h, h, h], [2, 0, 2], [7, 3, 8], [1, 1, 1])
    assert b.add_raw_many("orders", "t", schema, h, row, [h], [0], [4], [1])
    assert not b.add_raw_many("orders", "other-topic", schema, h, row, [h], [0], [1], [1])
    assert b.size == 4 and len(b.bulk["orders"]) == 4
    assert b.ranges == {("t", 2): (7, 8), ("t", 0): (3, 4)}
    assert b.next_offsets() == {("t", 2): 9, ("t", 0): 5}


def test_arrow_rows_equal_arrow_of_dicts() -> None:
    t = TABLES["scores"]
    row = {"order_id": "o", "fraud_score": 0.25, "model": "fraud", "labelled_before": 3,
           "event_time": 1_700_000_000_123, "pipeline_version": "v1", "kafka_topic": "k",
           "kafka_partition": 1, "kafka_offset": 9, "ingested_at": 5}
    fast = t.arrow_rows([(*(row[f] for f in t.fields), "k", 1, 9)], ingested_at=5)
    assert fast.equals(t.arrow([row]))


def test_a_fatal_consumer_error_ends_the_service_and_others_do_not() -> None:
    """FENCED_INSTANCE_ID after a broker restart is fatal in librdkafka: the consumer never
    recovers, so the service must leave (``kappa run`` restarts it) instead of idling."""
    from confluent_kafka import KafkaError

    from kappa.errors import SinkError
    from kappa.settings import Settings
    from sinks.service import SinkService

    service = SinkService(Settings(), "v1")
    service._on_error(KafkaError(KafkaError._TRANSPORT, "broker down"))
    service._on_error(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    service._raise_fatal()  # transient errors: librdkafka recovers by itself
    service._on_error(KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True))
    with pytest.raises(SinkError, match=r"fatal Kafka error.*fenced"):
        service._raise_fatal()
    # what librdkafka really delivered after a broker restart (make reliability): a _FATAL
    # consume event whose fatal() is False
    service._fatal = None
    event = KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced")
    assert not event.fatal()
    service._on_error(event)
    with pytest.raises(SinkError, match="Static consumer fenced"):
        service._raise_fatal()
