"""Which ClickHouse backend a process uses: the server when ``KAPPA_CLICKHOUSE_URL`` is set,
else the embedded engine on ``KAPPA_HOME/clickhouse``."""

from __future__ import annotations

from pathlib import Path

from kappa.settings import Settings
from sinks.base import Backend

__all__ = ["embedded_path", "endpoint_file", "open_backend"]


def embedded_path(settings: Settings) -> Path:
    """Directory of the embedded engine."""
    return settings.home / "clickhouse"


def endpoint_file(settings: Settings) -> Path:
    """Where the sink service advertises its read-only query endpoint while it runs."""
    return settings.home / "clickhouse-query.json"


def open_backend(settings: Settings, readonly: bool = False, fail_inserts: int = 0,
                 wait_s: float | None = None) -> Backend:
    """The configured backend; ``fail_inserts`` only applies to the embedded one (tests), and so
    does ``wait_s``: how long to wait for another process to let go of its directory."""
    if settings.clickhouse_url:
        from sinks.clickhouse import ServerBackend

        return ServerBackend.from_settings(settings, readonly=readonly)
    from sinks.embedded import EmbeddedBackend

    if wait_s is None:
        return EmbeddedBackend(embedded_path(settings), readonly=readonly, fail_inserts=fail_inserts)
    return EmbeddedBackend(embedded_path(settings), readonly=readonly, fail_inserts=fail_inserts,
                           wait_s=wait_s)
