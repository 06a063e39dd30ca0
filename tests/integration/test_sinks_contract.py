"""One set of checks over every ClickHouse backend: embedded chdb always, the server one when
KAPPA_CLICKHOUSE_URL is set or a Docker engine answers (testcontainers' ClickHouseContainer)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from kappa.errors import SinkError
from sinks import migrate
from sinks.base import Backend
from sinks.embedded import EmbeddedBackend
from sinks.rows import TABLES
from sinks.views import serving_version, swap_views
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
