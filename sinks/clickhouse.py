"""Server backend: a ClickHouse server through clickhouse-connect (``KAPPA_CLICKHOUSE_URL``).

Same SQL and DDL as the embedded engine; the password comes from
``KAPPA_CLICKHOUSE_PASSWORD`` (a SecretStr) and never appears in messages.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import pyarrow as pa

from kappa.errors import SinkError
from kappa.settings import Settings
from sinks.base import Backend

__all__ = ["ServerBackend"]


class ServerBackend(Backend):
    """A ClickHouse server at ``url``; ``readonly`` sends ``readonly=1`` with every query."""

    name = "server"

    def __init__(self, url: str, user: str = "default", password: str = "",
                 readonly: bool = False) -> None:
        import clickhouse_connect

        self.url = url
        self.readonly = readonly
        self._lock = threading.Lock()
        try:
            self._client: Any = clickhouse_connect.get_client(
                dsn=url, username=user, password=password, autogenerate_session_id=False,
                settings={"output_format_json_quote_64bit_integers": 0},
            )
        except Exception as exc:
            raise SinkError(f"ClickHouse server at {url} does not answer (check KAPPA_CLICKHOUSE_URL "
                            f"and credentials): {type(exc).__name__}") from exc

    @classmethod
    def from_settings(cls, settings: Settings, readonly: bool = False) -> ServerBackend:
        """The server named by ``settings.clickhouse_url`` with its credentials."""
        if not settings.clickhouse_url:
            raise SinkError("KAPPA_CLICKHOUSE_URL is not set")
        return cls(settings.clickhouse_url, settings.clickhouse_user,
                   settings.clickhouse_password.get_secret_value(), readonly=readonly)

    def _settings(self) -> dict[str, Any]:
        return {"readonly": 1} if self.readonly else {}

    def execute(self, sql: str) -> None:
        if self.readonly:
            raise SinkError("this ClickHouse connection is read-only")
        with self._lock:
            try:
                self._client.command(sql)
            except Exception as exc:
                raise SinkError(f"ClickHouse server refused: {str(exc).strip()[:500]}") from exc

    def query(self, sql: str, fmt: str = "TabSeparated") -> bytes:
        with self._lock:
            try:
                return bytes(self._client.raw_query(sql, fmt=fmt, settings=self._settings()))
            except Exception as exc:
                raise SinkError(f"ClickHouse server refused: {str(exc).strip()[:500]}") from exc

    def stream(self, sql: str, fmt: str = "TabSeparated") -> Generator[bytes, None, None]:
        """Output as the server sends it (clickhouse-connect's raw stream)."""
        with self._lock:
            try:
                result = self._client.raw_stream(sql, fmt=fmt, settings=self._settings())
            except Exception as exc:
                raise SinkError(f"ClickHouse server refused: {str(exc).strip()[:500]}") from exc
            with result as chunks:
                try:
                    for chunk in chunks:
                        if chunk:
                            yield bytes(chunk)
                except Exception as exc:
                    raise SinkError(f"ClickHouse server failed mid-result: {str(exc).strip()[:500]}") from exc

    def insert_arrow(self, table: str, data: pa.Table, token: str) -> None:
        if self.readonly:
            raise SinkError("this ClickHouse connection is read-only")
        with self._lock:
            try:
                self._client.insert_arrow(table, data, settings={"insert_deduplication_token": token})
            except Exception as exc:
                raise SinkError(f"insert into {table} on the ClickHouse server failed: "
                                f"{str(exc).strip()[:500]}") from exc

    def close(self) -> None:
        with self._lock:
            self._client.close()
