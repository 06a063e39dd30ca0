"""Avro schemas of every Kappa topic, the data-quality rules that travel with them, and serde."""

from schemas.serde import DecodeError, Decoder, Encoder, Registry, load_schema, schema_names

__all__ = ["DecodeError", "Decoder", "Encoder", "Registry", "load_schema", "schema_names"]
