"""Publish a JSONL or CSV file to a topic; every bad row is reported, dead-lettered and counted.

Rows use the schema's field names. Values are checked against the Avro field types *before*
encoding (fastavro would quietly coerce ``"12"`` to a double): JSON values must have the
JSON type of the field; CSV cells are text and are converted per field type. Timestamps
(``timestamp-millis`` fields) may be epoch milliseconds or ISO-8601 (``Z``/offset; naive =
UTC); a time before 2000-01-01 (or a declared ``min_time_ms``) or after 9999 cannot be meant
and is rejected, naming the likely unit mistake (epoch seconds, microseconds). Optional fields
may be missing (or empty in CSV) and take their default. Files are UTF-8, with or without a
byte-order mark; a row that is not valid UTF-8 is rejected as ``bad_encoding``, in CSV as in
JSONL, with its raw bytes.

A row that cannot be parsed or serialized becomes ``path:line: reason`` on stderr and a
RejectedEvent with the raw line in ``<topic>.dlq``; the good rows are all published, so
published + rejected = rows. Reasons start with a stable code: ``bad_encoding``, ``bad_json``,
``bad_csv``, ``missing_field``, ``bad_type``, ``too_large`` (larger than the topic takes, see
:meth:`~producers.base.Publisher.max_message_bytes`), ``unserializable`` or (with
``validate``) a code of :mod:`schemas.rules`.

>>> fields = field_types("orders")
>>> coerce_row({"order_id": "o1", "user_id": "7", "amount": "9.5", "currency": "EUR",
...             "category": "books", "payment_method": "card", "ip_country": "DE",
...             "event_time": "2024-01-01T00:00:00Z"}, fields, from_text=True)["event_time"]
1704067200000
>>> coerce_row({"order_id": "o1"}, fields, from_text=False)
Traceback (most recent call last):
...
producers.files.RowError: missing_field: user_id
>>> coerce_row({"order_id": "o1", "user_id": 7, "amount": 9.5, "currency": "EUR",
...             "category": "books", "payment_method": "card", "ip_country": "DE",
...             "event_time": 0}, fields, from_text=False)
Traceback (most recent call last):
...
producers.files.RowError: bad_type: event_time: 0 is before 2000-01-01 as epoch ms
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
from kappa.topics import input_for_topic
from producers.base import RECORD_OVERHEAD, MessageTooLarge, Publisher
from schemas.rules import for_input
from schemas.serde import schema_text

__all__ = ["MAX_TIME_MS", "MIN_TIME_MS", "FileReport", "RowError", "coerce_row", "field_types",
           "publish_file", "read_rows"]

_MISSING = object()
_BOM = b"\xef\xbb\xbf"

MIN_TIME_MS = 946_684_800_000
"""2000-01-01T00:00:00Z: file timestamps before it are taken for unit mistakes (epoch seconds)."""
MAX_TIME_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: file timestamps after it are unit mistakes (epoch micro/nanoseconds)."""


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
    millis: bool = False


def field_types(schema_name: str) -> list[FieldType]:
    """The fields of a flat schema, in order (maps/arrays keep their JSON value as is)."""
    out = []
    for f in json.loads(schema_text(schema_name))["fields"]:
        t = f["type"]
        nullable = isinstance(t, list) and "null" in t
        if isinstance(t, list):
            rest = [x for x in t if x != "null"]
            t = rest[0] if len(rest) == 1 else "any"
        logical = str(t.get("logicalType", "")) if isinstance(t, dict) else ""
        base = t.get("type", "any") if isinstance(t, dict) else t
        out.append(FieldType(f["name"], base, logical.startswith("timestamp"), nullable,
                             f.get("default", _MISSING), logical == "timestamp-millis"))
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
            raise ValueError(f"{_show(repr(value))} is neither epoch milliseconds nor ISO-8601") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return int(when.timestamp() * 1000)
    raise ValueError(f"{_show(repr(value))} is neither epoch milliseconds nor ISO-8601")


def _day(ms: int) -> str:
    """``ms`` as ISO-8601, the date alone at midnight: ``2000-01-01``."""
    when = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    if when.time() == dt.time():
        return when.date().isoformat()
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plausible(ms: int, value: Any, min_ms: int) -> int:
    """``ms`` when a user can have meant it, else ValueError naming the likely unit mistake.

    >>> _plausible(1796611179, 1796611179, MIN_TIME_MS)
    Traceback (most recent call last):
    ...
    ValueError: 1796611179 is before 2000-01-01 as epoch ms; epoch seconds? use ms or ISO-8601
    >>> _plausible(1796611179000000, 1796611179000000, MIN_TIME_MS)
    Traceback (most recent call last):
    ...
    ValueError: 1796611179000000 is after 9999-12-31 as epoch ms; epoch microseconds? use ms or ISO-8601
    """
    shown = str(value).strip()
    numeric = shown.lstrip("-").isdigit()
    unit = " as epoch ms" if numeric else ""
    if ms < min_ms:
        hint = ("; epoch seconds? use ms or ISO-8601"
                if numeric and min_ms <= ms * 1000 <= MAX_TIME_MS else "")
        raise ValueError(f"{_show(shown)} is before {_day(min_ms)}{unit}{hint}")
    if ms > MAX_TIME_MS:
        hint = ""
        if MIN_TIME_MS <= ms // 1000 <= MAX_TIME_MS:
            hint = "; epoch microseconds? use ms or ISO-8601"
        elif MIN_TIME_MS <= ms // 1_000_000 <= MAX_TIME_MS:
            hint = "; epoch nanoseconds? use ms or ISO-8601"
        raise ValueError(f"{_show(shown)} is after 9999-12-31{unit}{hint}")
    return ms


def _show(text: str, limit: int = 80) -> str:
    """``text`` (a value as a reason quotes it) cut to ``limit`` characters.

    >>> _show(repr("x" * 200), 10)
    "'xxxxxxxxx... (202 characters)"
    """
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _convert(ft: FieldType, value: Any, from_text: bool, min_ms: int = MIN_TIME_MS) -> Any:
    if ft.timestamp:
        ms = _timestamp(value, from_text)
        return _plausible(ms, value, min_ms) if ft.millis else ms
    base = ft.base
    if base in ("long", "int"):
        if from_text and isinstance(value, str):
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got {_show(repr(value))}")
        return value
    if base in ("double", "float"):
        if from_text and isinstance(value, str):
            value = float(value.strip())
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"expected a number, got {_show(repr(value))}")
        return float(value)
    if base == "boolean":
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(f"expected true/false, got {_show(repr(value))}")
            return lowered in ("true", "1")
        if not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {_show(repr(value))}")
        return value
    if base == "string":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_show(repr(value))}")
        return value
    if base == "bytes":
        return value.encode() if isinstance(value, str) else value
    if from_text and isinstance(value, str):
        return json.loads(value)  # maps/arrays in a CSV cell are JSON
    return value


def coerce_row(row: dict[str, Any], fields: list[FieldType], from_text: bool,
               min_time_ms: int = MIN_TIME_MS) -> dict[str, Any]:
    """``row`` converted to the schema's types, or RowError naming the first bad field.

    ``timestamp-millis`` values before ``min_time_ms`` (or after :data:`MAX_TIME_MS`) are bad.
    """
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
            out[ft.name] = _convert(ft, value, from_text, min_time_ms)
        except (ValueError, TypeError, OverflowError) as exc:
            raise RowError(f"bad_type: {ft.name}: {exc}") from None
        if isinstance(out[ft.name], float) and not math.isfinite(out[ft.name]):
            raise RowError(f"bad_type: {ft.name}: {_show(repr(value))} is not a finite number")
    return out


def read_rows(path: Path, fmt: str) -> Iterator[tuple[int, bytes, dict[str, Any] | str]]:
    """``(line number, raw line, row dict | parse error)`` for each non-blank row.

    Both formats are read as UTF-8 with an optional byte-order mark (as Excel writes CSV); the
    raw line is the file's own bytes, so an invalid-UTF-8 row reaches the DLQ unchanged.
    """
    if fmt == "jsonl":
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                raw = raw.rstrip(b"\r\n")
                if lineno == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
                if not raw.strip():
                    continue
                bad = _bad_encoding(raw)
                if bad:
                    yield lineno, raw, bad
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as exc:
                    yield lineno, raw, f"bad_json: {exc.msg}"
                    continue
                yield lineno, raw, row if isinstance(row, dict) else (
                    f"bad_json: expected an object, got {type(row).__name__}")
        return
    with path.open("rb") as fh:
        lines: list[str] = []
        reader = csv.reader(_remember(fh, lines))
        header = next(reader, None)
        raw_header = "".join(lines).encode("utf-8", "surrogateescape")
        lines.clear()
        if header is None:
            return
        bad = _bad_encoding(raw_header)
        if bad:
            raise ConfigError(f"{path}:1: the CSV header is not UTF-8 ({bad}); save the file as UTF-8")
        header = [h.strip() for h in header]
        for cells in reader:
            lineno = reader.line_num
            raw = "".join(lines).rstrip("\r\n").encode("utf-8", "surrogateescape")
            lines.clear()
            if not any(c.strip() for c in cells):
                continue
            bad = _bad_encoding(raw)
            if bad:
                yield lineno, raw, bad
                continue
            if len(cells) != len(header):
                yield lineno, raw, f"bad_csv: {len(cells)} cells, header has {len(header)}"
                continue
            yield lineno, raw, dict(zip(header, cells, strict=True))


def _bad_encoding(raw: bytes) -> str:
    """The ``bad_encoding`` reason of ``raw`` when it is not UTF-8, else ``""``.

    >>> _bad_encoding(b"b\\xffoks")
    'bad_encoding: invalid UTF-8 at byte 2 (0xff); save the file as UTF-8'
    >>> _bad_encoding("b\u00f6oks".encode())
    ''
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"bad_encoding: invalid UTF-8 at byte {exc.start + 1} "
                f"(0x{raw[exc.start]:02x}); save the file as UTF-8")
    return ""


def _remember(fh: Any, lines: list[str]) -> Iterator[str]:
    """Feed the csv reader text lines of binary ``fh`` while keeping the raw text of the
    current row (it may span lines). Bytes that are not UTF-8 become surrogates
    (``surrogateescape``), so the raw bytes can be restored; a leading BOM is dropped."""
    for i, line in enumerate(fh):
        if i == 0 and line.startswith(_BOM):
            line = line[len(_BOM):]
        text = line.decode("utf-8", "surrogateescape")
        lines.append(text)
        yield text
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
                 schema: str | None = None, min_time_ms: int | None = None) -> FileReport:
    """Publish every row of ``path`` to ``topic``; bad rows go to the DLQ and to ``report``.

    ``fmt`` is ``jsonl`` or ``csv`` (default: from the extension). With ``validate`` the
    data-quality rules of the topic's schema are applied too (otherwise the stream
    processors apply them). Keys: ``key_field`` (default per contract: user_id for users and
    orders, order_id for order_labels, none otherwise). ``schema`` overrides the schema
    :mod:`schemas.catalog` declares for ``topic``. ``min_time_ms`` (default
    :data:`MIN_TIME_MS`) is the earliest timestamp a row may hold. A row whose encoded key +
    value is larger than the topic takes is rejected ``too_large`` and the file goes on.
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
    inp = input_for_topic(topic, publisher.settings.topic_prefix)
    if key_field is None and inp is not None:
        key_field = inp.key
    validator = for_input(inp.name) if validate and inp is not None else None
    if validator is not None and now_ms is None:
        from producers.base import now_ms as wall

        now_ms = wall()
    rep = FileReport(path)
    min_ms = MIN_TIME_MS if min_time_ms is None else min_time_ms
    limit = publisher.max_message_bytes(topic)
    for lineno, raw, row in read_rows(path, fmt):
        rep.rows += 1
        try:
            if isinstance(row, str):
                raise RowError(row)
            record = coerce_row(row, fields, from_text=fmt == "csv", min_time_ms=min_ms)
            if validator is not None:
                reason = validator(record, now_ms or 0)
                if reason:
                    raise RowError(reason)
            value = encoder.encode(record)
            key = None if key_field is None else str(record[key_field]).encode()
            size = len(value) + len(key or b"")
            if size > limit:
                raise RowError(f"too_large: {size} bytes encoded, {topic} takes at most {limit} "
                               f"(its size limit {limit + RECORD_OVERHEAD} less the record overhead)")
            publisher.produce_raw(topic, value, key)
        except RowError as exc:
            reason = str(exc)
        except MessageTooLarge as exc:
            reason = f"too_large: {exc}"
        except (ValueError, TypeError, OverflowError) as exc:
            reason = f"unserializable: {exc}"
        else:
            rep.published += 1
            continue
        reason = _show(reason, 500)
        report(f"{path}:{lineno}: {reason}")
        publisher.publish_dlq(topic, f"{path}:{lineno}", reason, raw)
        rep.rejected += 1
    return rep
