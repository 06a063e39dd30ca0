"""One set of checks over every ClickHouse backend: embedded chdb always, the server one when
KAPPA_CLICKHOUSE_URL is set or a Docker engine answers (testcontainers' ClickHouseContainer)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from kappa.errors import SinkError
from sinks import migrate
from sinks.base import Backend
from sinks.embedded import EmbeddedBackend
from sinks.rows import TABLES
from sinks.views import VIEWS, ensure_views, serving_version, swap_views
from tests.conftest import _docker_answers

pytestmark = pytest.mark.integration


def _server() -> Iterator[Backend]:
    from sinks.clickhouse import ServerBackend

    url = os.environ.get("KAPPA_CLICKHOUSE_URL")
    if url:
        yield ServerBackend(url, os.environ.get("KAPPA_CLICKHOUSE_USER", "default"),
                            os.environ.get("KAPPA_CLICKHOUSE_PASSWORD", ""))
        return
    if not _docker_answers():
        pytest.skip("no ClickHouse server: set KAPPA_CLICKHOUSE_URL or run a Docker engine")
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer("clickhouse/clickhouse-server:25.8") as ch:
        url = f"http://{ch.get_container_host_ip()}:{ch.get_exposed_port(8123)}"
        yield ServerBackend(url, ch.username, ch.password)


@pytest.fixture(params=["embedded", "server"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        with EmbeddedBackend(tmp_path / "clickhouse") as b:
            yield b
    else:
        gen = _server()
        b = next(gen)
        try:
            yield b
        finally:
            b.close()
            gen.close()


def _orders(version: str, n: int, offset0: int = 0) -> pa.Table:
    rows = []
    for i in range(n):
        row = {c: None for c, _ in TABLES["orders"].columns}
        row.update(order_id=f"o{i}", user_id=i + 1, amount=1.25 * i, currency="EUR", category="c",
                   payment_method="card", ip_country="DE", event_time=1_700_000_000_001 + i,
                   late=False, source_topic="orders", source_partition=0, source_offset=i,
                   pipeline_version=version, kafka_topic="k", kafka_partition=0,
                   kafka_offset=offset0 + i, ingested_at=1_700_000_000_999)
        rows.append(row)
    return TABLES["orders"].arrow(rows)


def test_migrations_are_idempotent(backend: Backend) -> None:
    version = "t" + uuid.uuid4().hex[:8]
    assert migrate.apply(backend, version) == [m.name for m in migrate.migrations()]
    assert migrate.apply(backend, version) == []
    tables = {r[0] for r in backend.rows(
        f"SELECT name FROM system.tables WHERE database = '{migrate.database(version)}'")}
    assert set(TABLES) <= tables


def test_insert_token_dedup_replacing_keys_and_exact_datetime64(backend: Backend) -> None:
    version = "t" + uuid.uuid4().hex[:8]
    migrate.apply(backend, version)
    table = f"{migrate.database(version)}.orders"
    data = _orders(version, 1000)
    backend.insert_arrow(table, data, "tok-1")
    backend.insert_arrow(table, data, "tok-1")  # re-sent batch: dropped by the engine
    assert backend.scalar(f"SELECT count() FROM {table}") == 1000
    backend.insert_arrow(table, _orders(version, 10, offset0=5000), "tok-2")  # re-delivered rows
    assert backend.rows(f"SELECT count(), sum(toUnixTimestamp64Milli(event_time)), max(kafka_offset) "
                        f"FROM {table} FINAL") == [[1000, sum(1_700_000_000_001 + i for i in range(1000)),
                                                    5009]]


def test_views_swap_between_versions(backend: Backend) -> None:
    v1, v2 = ("t" + uuid.uuid4().hex[:8] for _ in range(2))
    for v, n in ((v1, 3), (v2, 5)):
        migrate.apply(backend, v)
        backend.insert_arrow(f"{migrate.database(v)}.orders", _orders(v, n), f"{v}-x")
    swap_views(backend, v1)
    assert serving_version(backend) == v1
    assert backend.scalar("SELECT count() FROM kappa.orders") == 3
    swap_views(backend, v2)
    assert serving_version(backend) == v2
    assert backend.scalar("SELECT count() FROM kappa.orders") == 5


def test_engine_errors_are_sink_errors(backend: Backend) -> None:
    with pytest.raises(SinkError, match="refused"):
        backend.query("SELECT * FROM kappa_missing.nothing")


# model_quality rows as migration 001 stored them (bucket Int64): (model, bucket, labelled, offset)
_INT64_QUALITY = [
    ("fraud", 1_700_000_040_000, 10, 0), ("fraud", 1_700_000_040_000, 12, 1),  # re-sent: replaced
    ("fraud", 1_700_000_100_000, 20, 2),
    ("phishing", 0, 100, 3), ("phishing", 1, 200, 4), ("phishing", 2, 250, 5),
]
# what 002 makes of them: (model, bucket as epoch ms, bucket_index, labelled)
_CONVERTED = [
    ["fraud", 1_700_000_040_000, 1_700_000_040_000, 12], ["fraud", 1_700_000_100_000, 1_700_000_100_000, 20],
    ["phishing", 0, 0, 100], ["phishing", 1, 1, 200], ["phishing", 2, 2, 250],
]


def _version_as_001_left_it(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh version database migrated by 001 only, with Int64-bucket model_quality rows."""
    version = "t" + uuid.uuid4().hex[:8]
    every = migrate.migrations()
    monkeypatch.setattr(migrate, "migrations", lambda: every[:1])
    assert migrate.apply(backend, version) == ["001_tables"]
    monkeypatch.setattr(migrate, "migrations", lambda: every)
    values = ", ".join(f"('{m}', {b}, {n}, 0.5, 0.5, 0.5, 0, '{version}', 'k', 0, {o}, now64(3))"
                       for m, b, n, o in _INT64_QUALITY)
    backend.execute(f"INSERT INTO {migrate.database(version)}.model_quality VALUES {values}")
    return version


def _converted(backend: Backend, version: str) -> list[list[Any]]:
    return backend.rows(f"SELECT model, toUnixTimestamp64Milli(bucket), bucket_index, labelled FROM "
                        f"{migrate.database(version)}.model_quality FINAL ORDER BY model, bucket_index")


def test_migration_002_types_bucket_of_an_existing_table_with_rows(backend: Backend,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    version = _version_as_001_left_it(backend, monkeypatch)
    db = migrate.database(version)
    new_view = VIEWS["model_quality"]
    monkeypatch.setitem(VIEWS, "model_quality", new_view.replace(", bucket_index", "")
                        .split("pipeline_version,")[0] + "pipeline_version FROM {db}.model_quality FINAL")
    swap_views(backend, version)  # the serving views as a release before 002 created them
    monkeypatch.setitem(VIEWS, "model_quality", new_view)
    assert backend.scalar("SELECT toTypeName(bucket) FROM kappa.model_quality LIMIT 1") == "Int64"

    assert migrate.apply(backend, version) == ["002_model_quality_bucket_time"]
    assert backend.rows(f"SELECT name, type FROM system.columns WHERE database = '{db}' AND "
                        "table = 'model_quality' AND name LIKE 'bucket%' ORDER BY name") == [
        ["bucket", "DateTime64(3, 'UTC')"], ["bucket_index", "Int64"]]
    assert _converted(backend, version) == _CONVERTED
    assert backend.scalar(f"SELECT count() FROM system.tables WHERE database = '{db}' "
                          "AND name LIKE 'model_quality_%'") == 0
    assert migrate.apply(backend, version) == []

    # the live view is refreshed to the new columns when the sink starts
    assert ensure_views(backend, version) is False
    assert backend.rows("SELECT toTypeName(bucket), bucket_index FROM kappa.model_quality "
                        "WHERE model = 'fraud' ORDER BY bucket") == [
        ["DateTime64(3, 'UTC')", 1_700_000_040_000], ["DateTime64(3, 'UTC')", 1_700_000_100_000]]

    # later rows replace the converted ones by bucket: new records, and records written before
    # bucket_index existed (Avro default -1), whose bucket held the old key
    table = TABLES["model_quality"]
    rows = [("phishing", 1_700_000_000_123, 260, 0.6, 0.6, 0.4, 0, version, 2, "k", 0, 6),
            ("phishing", 1, 210, 0.6, 0.6, 0.4, 0, version, -1, "k", 0, 7),
            ("fraud", 1_700_000_100_000, 25, 0.6, 0.6, 0.4, 0, version, -1, "k", 0, 8)]
    backend.insert_arrow(f"{db}.model_quality", table.arrow_rows(rows, ingested_at=1), "tok-q")
    got = backend.rows(f"SELECT model, toUnixTimestamp64Milli(bucket), labelled FROM {db}.model_quality "
                       "FINAL ORDER BY model, labelled")
    assert got == [["fraud", 1_700_000_040_000, 12], ["fraud", 1_700_000_100_000, 25],
                   ["phishing", 0, 100], ["phishing", 1, 210], ["phishing", 1_700_000_000_123, 260]]
    assert backend.rows("SELECT bucket_index FROM kappa.model_quality WHERE model = 'phishing' "
                        "ORDER BY bucket_index") == [[0], [1], [2]]


@pytest.mark.parametrize("ran", [3, 4], ids=["stopped-before-exchange", "stopped-after-exchange"])
def test_an_interrupted_migration_002_finishes_on_the_next_run(backend: Backend, monkeypatch: pytest.MonkeyPatch,
                                                              ran: int) -> None:
    version = _version_as_001_left_it(backend, monkeypatch)
    db = migrate.database(version)
    for stmt in migrate.migrations()[1].statements(version)[:ran]:  # then the process died
        condition = migrate.guard(stmt)
        if condition is None or int(backend.scalar(condition)):
            backend.execute(stmt)
    assert migrate.apply(backend, version) == ["002_model_quality_bucket_time"]
    assert _converted(backend, version) == _CONVERTED
    # copied once (twice would leave 10 rows before a merge)
    assert backend.scalar(f"SELECT count() FROM {db}.model_quality") <= len(_INT64_QUALITY)
    assert backend.scalar(f"SELECT count() FROM system.tables WHERE database = '{db}' "
                          "AND name LIKE 'model_quality_%'") == 0
