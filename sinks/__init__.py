"""Kafka -> ClickHouse: migrations, exactly-once batch writer, serving views, read-only query.

Entry point of the service: ``python -m sinks serve --version V``.
"""

from sinks.backends import open_backend
from sinks.base import Backend, ReadOnlyViolation
from sinks.query import query, query_rows
from sinks.service import SinkService, sink_group
from sinks.views import swap_views

__all__ = ["Backend", "ReadOnlyViolation", "SinkService", "open_backend", "query", "query_rows",
           "sink_group", "swap_views"]
