"""Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary) with fastavro.

Encoders register their schema once per subject and then only write bytes; decoders cache
writer schemas by id and resolve each against the working tree's reader schema, so events
written with an older schema still decode (schema evolution).

Speed: flat records (every input schema) are encoded by a writer generated once per schema
(:mod:`schemas.fastpath`), ~2x fastavro's per-call ``schemaless_writer``; its bytes are
identical to fastavro's and any record it cannot handle falls back to fastavro, so errors
are fastavro's. Decoding calls fastavro's compiled reader directly and skips resolution
when the writer schema is the reader schema.

Subjects follow TopicNameStrategy: values of topic ``T`` under ``T-value`` (:func:`subject`).
Message keys are plain UTF-8 strings of the key field (``str(user_id)``, ``order_id``),
never Avro, so any client can partition and join on them.

>>> Encoder.frame(7, b"abc")
b'\\x00\\x00\\x00\\x00\\x07abc'
>>> split_frame(b'\\x00\\x00\\x00\\x00\\x07abc')
(7, b'abc')
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from kappa.errors import ConfigError, KappaError, RegistryUnavailable
from schemas.fastpath import compile_reader, compile_writer

__all__ = [
    "DecodeError",
    "Decoder",
    "Encoder",
    "Registry",
    "check_url",
    "load_schema",
    "schema_dirs",
    "schema_names",
    "schema_path",
    "schema_text",
    "split_frame",
    "subject",
]

# fastavro's compiled entry points below its per-call wrappers (pinned fastavro version)
_fastavro_read: Any = importlib.import_module("fastavro._read")
_fastavro_write: Any = importlib.import_module("fastavro._write")

AVRO_DIR = Path(__file__).resolve().parent / "avro"
_HEADER = struct.Struct(">bI")


class DecodeError(KappaError):
    """Bytes that are not a decodable Confluent-framed Avro record; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def subject(topic: str, part: str = "value") -> str:
    """Registry subject of ``topic`` (TopicNameStrategy).

    >>> subject("orders")
    'orders-value'
    """
    return f"{topic}-{part}"


def schema_dirs() -> tuple[Path, ...]:
    """Where schemas are found: the selected pipeline's directory, then Kappa's own (``schemas/avro``)."""
    from kappa.pipeline import current

    return (current().schema_dir, AVRO_DIR)


def schema_names() -> list[str]:
    """Names of the known schemas (file stems of :func:`schema_dirs`)."""
    return sorted({p.stem for d in schema_dirs() for p in d.glob("*.avsc")})


def schema_path(name: str) -> Path:
    """The ``.avsc`` file of schema ``name``: the first of :func:`schema_dirs` that has it."""
    for folder in schema_dirs():
        path = folder / f"{name}.avsc"
        if path.exists():
            return path
    raise KappaError(f"no schema {name!r} in {', '.join(map(str, schema_dirs()))}; known: "
                     f"{', '.join(schema_names())}")


def schema_text(name: str) -> str:
    """The ``.avsc`` text of schema ``name`` (e.g. ``"orders"``)."""
    return _text(schema_path(name))


@functools.cache
def _text(path: Path) -> str:
    return path.read_text()


def load_schema(name: str) -> Any:
    """Parsed (fastavro) schema ``name``."""
    return _parsed(schema_text(name), False)


@functools.cache
def _parsed(text: str, plain: bool) -> Any:
    raw = json.loads(text)
    return fastavro.parse_schema(_plain(raw) if plain else raw)


def _plain(schema: Any) -> Any:
    """``schema`` without logical types: timestamps decode as epoch-ms ints (fast, exact)."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def reader_schema(name: str) -> Any:
    """Parsed reader schema ``name`` with timestamps as epoch-ms ints."""
    return _parsed(schema_text(name), True)


def split_frame(data: bytes) -> tuple[int, bytes]:
    """``(schema_id, avro_body)`` of a Confluent-framed message, or DecodeError."""
    if data is None or len(data) < 5:
        raise DecodeError(f"not Confluent wire format: {0 if data is None else len(data)} bytes, need >= 5")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != 0:
        raise DecodeError(f"not Confluent wire format: magic byte {magic & 0xFF:#04x}, expected 0x00")
    return schema_id, data[5:]


def check_url(url: str) -> str:
    """``url`` when it is an http(s) URL with a host and a valid port, else ConfigError.

    >>> check_url("http://127.0.0.1:8081/apis/ccompat/v7")
    'http://127.0.0.1:8081/apis/ccompat/v7'
    >>> check_url("127.0.0.1:8081")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    kappa.errors.ConfigError: not an http(s) URL
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # ValueError when not a number in range
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"schema registry URL {url!r} (KAPPA_SCHEMA_REGISTRY_URL) is not an http(s) "
                          "URL: use e.g. http://127.0.0.1:8081/apis/ccompat/v7")
    return url


class Registry:
    """Thread-safe cache in front of a Confluent-compatible schema registry."""

    def __init__(self, url: str, client: SchemaRegistryClient | None = None) -> None:
        self.url = url if client is not None else check_url(url)
        self.client = client or SchemaRegistryClient({"url": url})
        self._ids: dict[tuple[str, str], int] = {}
        self._by_id: dict[int, Any] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema_str: str) -> int:
        """Register (or look up) ``schema_str`` under ``subject``; return its id."""
        key = (subject, schema_str)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        try:
            schema_id = int(self.client.register_schema(subject, Schema(schema_str, "AVRO")))
        except SchemaRegistryError as exc:
            raise KappaError(f"registry {self.url} refused schema for {subject}: {exc}") from exc
        except Exception as exc:
            raise RegistryUnavailable(f"schema registry at {self.url} does not answer: {exc}") from exc
        with self._lock:
            self._ids[key] = schema_id
        return schema_id

    def writer_schema(self, schema_id: int) -> Any:
        """Parsed writer schema for ``schema_id`` (cached; DecodeError when unknown)."""
        with self._lock:
            if schema_id in self._by_id:
                return self._by_id[schema_id]
        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            raise DecodeError(f"unknown schema id {schema_id} in registry {self.url}") from exc
        except Exception as exc:
            raise RegistryUnavailable(f"schema registry at {self.url} does not answer: {exc}") from exc
        if schema.schema_type not in (None, "AVRO"):
            raise DecodeError(f"schema id {schema_id} is {schema.schema_type}, not Avro")
        raw = json.loads(schema.schema_str or '"null"')
        parsed: Any = fastavro.parse_schema(_plain(raw))
        parsed["__kappa_name"] = raw.get("name", "?") if isinstance(raw, dict) else str(raw)
        parsed["__kappa_plain"] = _plain(raw)
        with self._lock:
            self._by_id[schema_id] = parsed
        return parsed


_WRITE_OPTIONS = {"strict": False, "strict_allow_default": True, "disable_tuple_notation": False}
_READ_OPTIONS = {
    "return_record_name": False,
    "return_record_name_override": False,
    "handle_unicode_errors": "strict",
    "return_named_type": False,
    "return_named_type_override": False,
}


class Encoder:
    """Encodes records of schema ``name`` for ``subject`` (registered on first use).

    Records hold timestamps as epoch-ms ints (datetimes also work, via fastavro).
    """

    def __init__(self, registry: Registry, subject: str, name: str) -> None:
        self.registry = registry
        self.subject = subject
        self.name = name
        self.schema = load_schema(name)
        self._named: dict[str, Any] = {}
        fastavro.parse_schema(json.loads(schema_text(name)), self._named)
        self._schema_id: int | None = None
        self._fast: Any = None

    @property
    def schema_id(self) -> int:
        if self._schema_id is None:
            self._schema_id = self.registry.register(self.subject, schema_text(self.name))
        return self._schema_id

    @staticmethod
    def frame(schema_id: int, body: bytes) -> bytes:
        """Prefix ``body`` with the Confluent header."""
        return _HEADER.pack(0, schema_id) + body

    def _slow(self, header: bytes, record: dict[str, Any]) -> bytes:
        buf = bytearray(header)
        _fastavro_write.write_data(buf, record, self.schema, self._named, "", _WRITE_OPTIONS)
        return bytes(buf)

    def _encoder(self) -> Any:
        if self._fast is None:
            header = _HEADER.pack(0, self.schema_id)
            slow = functools.partial(self._slow, header)
            fast = compile_writer(json.loads(schema_text(self.name)), header, fallback=slow)
            self._fast = fast or slow  # fastavro decides (and explains) what fast cannot write
        return self._fast

    @property
    def encode_one(self) -> Any:
        """The bound ``record -> framed bytes`` function (for hot loops; same as :meth:`encode`)."""
        return self._encoder()

    def encode(self, record: dict[str, Any]) -> bytes:
        """One record -> framed bytes (ValueError/TypeError when it does not fit the schema)."""
        return self._encoder()(record)

    def encode_many(self, records: Iterable[dict[str, Any]]) -> list[bytes]:
        """Many records -> framed bytes (raises on the first record that does not fit)."""
        encode = self._encoder()
        return [encode(r) for r in records]


class Decoder:
    """Decodes framed bytes into records of reader schema ``name`` (resolving older writers)."""

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name
        self.reader = reader_schema(name)
        self._reader_plain = _plain(json.loads(schema_text(name)))
        # schema id -> (writer, named schemas, reader or None when identical)
        self._plans: dict[int, tuple[Any, dict[str, Any], Any]] = {}
        self.fields: tuple[str, ...] = tuple(f["name"] for f in self._reader_plain.get("fields", ()))
        """Reader field names: the order of the values :meth:`decode_row` returns."""
        self._fast_read = compile_reader(self._reader_plain)
        # schema id -> generated reader when the writer is the reader and the record is flat
        self._fast: dict[int, Any] = {}

    def _plan(self, schema_id: int) -> tuple[Any, dict[str, Any], Any]:
        plan = self._plans.get(schema_id)
        if plan is None:
            writer = self.registry.writer_schema(schema_id)
            named: dict[str, Any] = {"writer": {}, "reader": {}}
            same = writer.get("__kappa_plain") == self._reader_plain
            w = fastavro.parse_schema(writer["__kappa_plain"], named["writer"])
            r = None if same else fastavro.parse_schema(self._reader_plain, named["reader"])
            plan = self._plans[schema_id] = (w, named, r)
        return plan

    def decode(self, data: bytes) -> dict[str, Any]:
        """Framed bytes -> record (timestamps as epoch ms); DecodeError with the reason otherwise."""
        schema_id, body = split_frame(data)
        writer, named, reader = self._plan(schema_id)
        buf = io.BytesIO(body)
        try:
            record = _fastavro_read._read_data(buf, writer, named, reader, _READ_OPTIONS)
        except (EOFError, StopIteration):
            raise DecodeError(f"truncated Avro body for schema id {schema_id}") from None
        except _fastavro_read.SchemaResolutionError as exc:
            raise DecodeError(
                f"schema id {schema_id} ({self.registry.writer_schema(schema_id).get('__kappa_name', '?')})"
                f" cannot be read as {self.name}: {str(exc).split(' is not ', 1)[0][:120]}"
            ) from None
        except Exception as exc:  # corrupt bytes raise all sorts of errors
            raise DecodeError(f"corrupt Avro body for schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(body):
            raise DecodeError(
                f"corrupt Avro body for schema id {schema_id}: {len(body) - buf.tell()} trailing bytes"
            )
        return record

    def _fast_reader(self, schema_id: int) -> Any:
        """The generated reader for ``schema_id`` (None: fastavro must resolve or read it)."""
        if schema_id not in self._fast:
            self._plan(schema_id)
            writer = self.registry.writer_schema(schema_id)
            same = writer.get("__kappa_plain") == self._reader_plain
            self._fast[schema_id] = self._fast_read if same else None
        return self._fast[schema_id]

    def writer_is_reader(self, schema_id: int) -> bool:
        """True when ``schema_id``'s writer schema is this reader's (no resolution needed)."""
        self._plan(schema_id)
        return bool(self.registry.writer_schema(schema_id).get("__kappa_plain") == self._reader_plain)

    def decode_row(self, data: bytes) -> tuple[Any, ...]:
        """Framed bytes -> tuple of values in :attr:`fields` order; DecodeError otherwise.

        The sink's hot path: flat records whose writer schema is the reader schema are read
        by a generated reader (:func:`schemas.fastpath.compile_reader`); anything it cannot
        read, and every other writer schema, goes through :meth:`decode` (fastavro, with
        resolution), so the values and the errors are always fastavro's.
        """
        if len(data) > 4 and data[0] == 0:
            read = self._fast.get(int.from_bytes(data[1:5], "big"), False)
            if read is False:
                read = self._fast_reader(split_frame(data)[0])
            if read is not None:
                try:
                    return read(data, 5)
                except Exception:  # fastavro below decides and explains
                    pass
        record = self.decode(data)
        return tuple(record.get(f) for f in self.fields)

    def decode_many(self, datas: Iterable[bytes]) -> list[dict[str, Any] | DecodeError]:
        """Decode a batch; a bad item becomes its DecodeError in place (never raises for one).

        Registry outages still raise RegistryUnavailable: that is not the data's fault.
        """
        out: list[dict[str, Any] | DecodeError] = []
        if self._fast_read is None:
            for data in datas:
                try:
                    out.append(self.decode(data))
                except DecodeError as exc:
                    out.append(exc)
            return out
        decode_row, fields = self.decode_row, self.fields
        for data in datas:
            try:
                out.append(dict(zip(fields, decode_row(data), strict=True)))
            except DecodeError as exc:
                out.append(exc)
        return out
