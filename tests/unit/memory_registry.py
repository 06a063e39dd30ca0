"""An in-memory stand-in for SchemaRegistryClient, for pure-logic unit tests only.

Integration tests always use the real registry; this exists so serde and stage logic can be
tested without a server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MemoryRegistryClient"]


class _Schema:
    def __init__(self, text: str) -> None:
        self.schema_str = text
        self.schema_type = "AVRO"


class MemoryRegistryClient:
    """Just enough of SchemaRegistryClient: ids are 1-based positions of distinct schema texts."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def register_schema(self, subject: str, schema: Any) -> int:
        if schema.schema_str not in self.texts:
            self.texts.append(schema.schema_str)
        return self.texts.index(schema.schema_str) + 1

    def get_schema(self, schema_id: int) -> _Schema:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if not 1 <= schema_id <= len(self.texts):
            raise SchemaRegistryError(404, 40403, "not found")
        return _Schema(self.texts[schema_id - 1])
