"""Publish a JSONL or CSV file to a topic; every bad row is reported, dead-lettered and counted.

Rows use the schema's field names. Values are checked against the Avro field types *before*
encoding (fastavro would quietly coerce ``"12"`` to a double): JSON values must have the
JSON type of the field; CSV cells are text and are converted per field type. Timestamps
(``timestamp-millis`` fields) may be epoch milliseconds or ISO-8601 (``Z``/offset; naive =
UTC). Optional fields may be missing (or empty in CSV) and take their default.

A row that cannot be parsed or serialized becomes ``path:line: reason`` on stderr and a
RejectedEvent with the raw line in ``<topic>.dlq``; the good rows are all published.
Reasons start with a stable code: ``bad_json``, ``bad_csv``, ``missing_field``, ``bad_type``,
``unserializable`` or (with ``validate``) a code of :mod:`schemas.rules`.

>>> fields = field_types("orders")
>>> coerce_row({"order_id": "o1", "user_id": "7", "amount": "9.5", "currency": "EUR",
...             "category": "books", "payment_method": "card", "ip_country": "DE",
...             "event_time": "2024-01-01T00:00:00Z"}, fields, from_text=True)["event_time"]
1704067200000
>>> coerce_row({"order_id": "o1"}, fields, from_text=False)
Traceback (most recent call last):
...
producers.files.RowError: missing_field: user_id
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kappa.errors import ConfigError, KappaError
from producers.base import Publisher
from schemas.rules import VALIDATORS
from schemas.serde import schema_text

__all__ = ["FileReport", "RowError", "coerce_row", "field_types", "publish_file", "read_rows"]

_MISSING = object()


class RowError(KappaError):
    """One file row does not fit its topic's schema; the message says which field and why."""


@dataclass(frozen=True)
class FieldType:
    """What a row value must become: Avro base type, timestamp?, nullable?, default."""

    name: str
    base: str
    timestamp: bool
    nullable: bool
    default: Any


def field_types(schema_name: str) -> list[FieldType]:
    """The fields of a flat schema, in order (maps/arrays keep their JSON value as is)."""
    out = []
    for f in json.loads(schema_text(schema_name))["fields"]:
        t = f["type"]
        nullable = isinstance(t, list) and "null" in t
        if isinstance(t, list):
            rest = [x for x in t if x != "null"]
            t = rest[0] if len(rest) == 1 else "any"
        timestamp = isinstance(t, dict) and str(t.get("logicalType", "")).startswith("timestamp")
        base = t.get("type", "any") if isinstance(t, dict) else t
        out.append(FieldType(f["name"], base, timestamp, nullable, f.get("default", _MISSING)))
    return out


def _timestamp(value: Any, from_text: bool) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is neither epoch milliseconds nor ISO-8601") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return int(when.timestamp() * 1000)
    raise ValueError(f"{value!r} is neither epoch milliseconds nor ISO-8601")


def _convert(ft: FieldType, value: Any, from_text: bool) -> Any:
    if ft.timestamp:
        return _timestamp(value, from_text)
    base = ft.base
    if base in ("long", "int"):
        if from_text and isinstance(value, str):
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if base in ("double", "float"):
        if from_text and isinstance(value, str):
            value = float(value.strip())
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if base == "boolean":
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(f"expected true/false, got {value!r}")
            return lowered in ("true", "1")
        if not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {value!r}")
        return value
    if base == "string":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if base == "bytes":
        return value.encode() if isinstance(value, str) else value
    if from_text and isinstance(value, str):
        return json.loads(value)  # maps/arrays in a CSV cell are JSON
    return value


def coerce_row(row: dict[str, Any], fields: list[FieldType], from_text: bool) -> dict[str, Any]:
    """``row`` converted to the schema's types, or RowError naming the first bad field."""
    out: dict[str, Any] = {}
    for ft in fields:
        value = row.get(ft.name, _MISSING)
        if value is None or (from_text and value == "" and ft.base != "string"):
            value = _MISSING if not ft.nullable else None
        if value is _MISSING:
            if ft.default is not _MISSING:
                out[ft.name] = ft.default
                continue
            if ft.nullable:
                out[ft.name] = None
                continue
            raise RowError(f"missing_field: {ft.name}")
        if value is None:
            out[ft.name] = None
            continue
        try:
            out[ft.name] = _convert(ft, value, from_text)
        except (ValueError, TypeError, OverflowError) as exc:
            raise RowError(f"bad_type: {ft.name}: {exc}") from None
        if isinstance(out[ft.name], float) and not math.isfinite(out[ft.name]):
            raise RowError(f"bad_type: {ft.name}: {value!r} is not a finite number")
    return out


def read_rows(path: Path, fmt: str) -> Iterator[tuple[int, bytes, dict[str, Any] | str]]:
    """``(line number, raw line, row dict | parse error)`` for each non-blank row."""
    if fmt == "jsonl":
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    yield lineno, raw.rstrip(b"\r\n"), f"bad_json: {getattr(exc, 'msg', exc)}"
                    continue
                yield lineno, raw.rstrip(b"\r\n"), row if isinstance(row, dict) else (
                    f"bad_json: expected an object, got {type(row).__name__}")
        return
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        lines: list[str] = []
        reader = csv.reader(_remember(fh, lines))
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        for cells in reader:
            lineno = reader.line_num
            raw = "".join(lines).rstrip("\r\n").encode()
            lines.clear()
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                yield lineno, raw, f"bad_csv: {len(cells)} cells, header has {len(header)}"
                continue
            yield lineno, raw, dict(zip(header, cells, strict=True))


def _remember(fh: Any, lines: list[str]) -> Iterator[str]:
    """Feed the csv reader while keeping the raw text of the current row (it may span lines)."""
    for line in fh:
        lines.append(line)
        yield line
    lines.clear()


@dataclass
class FileReport:
    """What publishing a file did."""

    path: Path
    rows: int = 0
    published: int = 0
    rejected: int = 0


def publish_file(publisher: Publisher, path: Path, topic: str, fmt: str | None = None,
                 validate: bool = False, report: Callable[[str], None] = print,
                 key_field: str | None = None, now_ms: int | None = None,
                 schema: str | None = None) -> FileReport:
    """Publish every row of ``path`` to ``topic``; bad rows go to the DLQ and to ``report``.

    ``fmt`` is ``jsonl`` or ``csv`` (default: from the extension). With ``validate`` the
    data-quality rules of the topic's schema are applied too (otherwise the stream
    processors apply them). Keys: ``key_field`` (default per contract: user_id for users and
    orders, order_id for order_labels, none otherwise). ``schema`` overrides the schema
    :mod:`schemas.catalog` declares for ``topic``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    fmt = (fmt or {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                   ".csv": "csv"}.get(path.suffix.lower(), "")).lower()
    if fmt not in ("jsonl", "csv"):
        raise ConfigError(f"cannot tell the format of {path}: use --format jsonl or --format csv")
    encoder = publisher.encoder(topic, schema)
    fields = field_types(encoder.name)
    if key_field is None:
        key_field = {"users": "user_id", "orders": "user_id", "order_labels": "order_id"}.get(
            encoder.name)
    validator = VALIDATORS.get(encoder.name) if validate else None
    if validator is not None and now_ms is None:
        from producers.base import now_ms as wall

        now_ms = wall()
    rep = FileReport(path)
    for lineno, raw, row in read_rows(path, fmt):
        rep.rows += 1
        try:
            if isinstance(row, str):
                raise RowError(row)
            record = coerce_row(row, fields, from_text=fmt == "csv")
            if validator is not None:
                reason = validator(record, now_ms or 0)
                if reason:
                    raise RowError(reason)
            value = encoder.encode(record)
        except RowError as exc:
            reason = str(exc)
        except (ValueError, TypeError, OverflowError) as exc:
            reason = f"unserializable: {exc}"
        else:
            reason = ""
        if reason:
            report(f"{path}:{lineno}: {reason}")
            publisher.publish_dlq(topic, f"{path}:{lineno}", reason, raw)
            rep.rejected += 1
            continue
        key = None if key_field is None else str(record[key_field]).encode()
        publisher.produce_raw(topic, value, key)
        rep.published += 1
    return rep
