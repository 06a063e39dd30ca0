"""A generated Avro writer for flat records: the serialization hot path of every producer.

fastavro's per-record entry points spend most of their time in per-call setup, not in
writing bytes. For a record whose fields are primitives (optionally ``["null", T]``
unions), one ``b"".join`` of per-field byte strings is about twice as fast. The writer
is generated once per schema; it raises on anything unusual (a missing field, a wrong
type, an out-of-range long) and the caller then falls back to fastavro, so the bytes are
always fastavro's and the error messages too.

>>> schema = {"type": "record", "name": "T", "fields": [
...     {"name": "id", "type": "long"}, {"name": "s", "type": "string"},
...     {"name": "n", "type": ["null", "double"]}]}
>>> write = compile_writer(schema, b"")
>>> write({"id": -1, "s": "ab", "n": None})
b'\\x01\\x04ab\\x00'
>>> zigzag_varint(1_700_000_000_000) == zigzag_varint_slow(1_700_000_000_000)
True
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["compile_reader", "compile_writer", "zigzag_varint", "zigzag_varint_slow"]

_SMALL = [
    bytes([z]) if z < 0x80 else bytes([(z & 0x7F) | 0x80, z >> 7]) for z in range(1 << 14)
]
_LOW = [bytes([(z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80]) for z in range(1 << 14)]
_HIGH: dict[int, bytes] = {}


def zigzag_varint_slow(n: int) -> bytes:
    """Reference Avro long encoding (zigzag, then base-128 varint)."""
    if not -(1 << 63) <= n < (1 << 63):
        raise OverflowError(f"{n} does not fit an Avro long")
    return _varint((n << 1) ^ (n >> 63))


def zigzag_varint(n: int) -> bytes:
    """Avro long encoding with tables: small values and the high bits of timestamps are cached.

    A varint's first two bytes depend only on the low 14 bits, the rest is the varint of
    ``z >> 14``; timestamps in one stream share those high bits, so they hit the cache.

    >>> [zigzag_varint(n) for n in (0, -1, 1, 64)]
    [b'\\x00', b'\\x01', b'\\x02', b'\\x80\\x01']
    """
    z = (n << 1) ^ (n >> 63)
    if 0 <= z < 16384:
        return _SMALL[z]
    if z < 0 or z >> 64:
        raise OverflowError(f"{n} does not fit an Avro long")
    hi = z >> 14
    tail = _HIGH.get(hi)
    if tail is None:
        if len(_HIGH) > 65536:
            _HIGH.clear()
        tail = _HIGH[hi] = _varint(hi)
    return _LOW[z & 0x3FFF] + tail


def _hi(z: int) -> bytes:
    """Varint bytes of ``z >> 14`` for a zigzagged long ``z`` >= 16384 (cached; range-checked)."""
    if z < 0 or z >> 64:
        raise OverflowError("value does not fit an Avro long")
    if len(_HIGH) > 65536:
        _HIGH.clear()
    tail = _HIGH[z >> 14] = _varint(z >> 14)
    return tail


def _varint(z: int) -> bytes:
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _int32(n: int) -> bytes:
    if not -(1 << 31) <= n < (1 << 31):
        raise OverflowError(f"{n} does not fit an Avro int")
    return zigzag_varint(n)


def _string_writer(cache_limit: int = 1024, cache: dict[str, bytes] | None = None
                   ) -> Callable[[str], bytes]:
    """Writer of one string field, caching its values while they look low-cardinality."""
    cache = {} if cache is None else cache

    def write(value: str) -> bytes:
        out = cache.get(value)
        if out is None:
            raw = value.encode()
            out = zigzag_varint(len(raw)) + raw
            if len(cache) < cache_limit:
                cache[value] = out
        return out

    return write


def _bytes(value: bytes) -> bytes:
    if isinstance(value, str):
        raise TypeError("bytes field got a str")
    return zigzag_varint(len(value)) + bytes(value)


_DOUBLE = struct.Struct("<d").pack
_FLOAT = struct.Struct("<f").pack


def _boolean(value: bool) -> bytes:
    if value is True:
        return b"\x01"
    if value is False:
        return b"\x00"
    raise TypeError(f"boolean field got {value!r}")


def _primitive(avro_type: Any) -> Callable[[Any], bytes] | None:
    if isinstance(avro_type, dict):
        if avro_type.get("logicalType") not in (None, "timestamp-millis", "timestamp-micros",
                                                "local-timestamp-millis"):
            return None
        avro_type = avro_type.get("type")
    return {
        "string": _string_writer() if avro_type == "string" else None,
        "long": zigzag_varint,
        "int": _int32,
        "double": _DOUBLE,
        "float": _FLOAT,
        "boolean": _boolean,
        "bytes": _bytes,
    }.get(avro_type) if isinstance(avro_type, str) else None


def _field_writer(avro_type: Any) -> Callable[[Any], bytes] | None:
    if isinstance(avro_type, list):
        if len(avro_type) != 2 or "null" not in avro_type:
            return None
        null_index = avro_type.index("null")
        inner = _primitive(avro_type[1 - null_index])
        if inner is None:
            return None
        null_tag, value_tag = zigzag_varint(null_index), zigzag_varint(1 - null_index)

        def nullable(value: Any) -> bytes:
            return null_tag if value is None else value_tag + inner(value)

        return nullable
    return _primitive(avro_type)


def compile_writer(schema: dict[str, Any], header: bytes,
                   fallback: Callable[[dict[str, Any]], bytes] | None = None,
                   ) -> Callable[[dict[str, Any]], bytes] | None:
    """``record -> header + Avro body`` for a flat record ``schema`` (JSON form), or None.

    None means the schema has a field type this path does not handle (maps, arrays,
    nested records, enums, other unions): use fastavro for it. With ``fallback``, a record
    the generated code cannot write is passed to it (inside the same call: no extra frame
    on the hot path).
    """
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    env: dict[str, Any] = {"_header": header, "_join": b"".join, "_SMALL": _SMALL, "_LOW": _LOW,
                           "_HIGH": _HIGH, "_hi": _hi}
    parts = ["_header"]
    for i, field in enumerate(schema["fields"]):
        name, avro_type = field["name"], field["type"]
        base = avro_type.get("type") if isinstance(avro_type, dict) else avro_type
        if base == "long" and _primitive(avro_type) is not None:
            # zigzag + varint inline: the hot path of ids and timestamps costs no call
            parts.append(f"(_SMALL[z] if 0 <= (z := ((v := r[{name!r}]) << 1) ^ (v >> 63)) < 16384"
                         f" else _LOW[z & 16383] + (_HIGH.get(z >> 14) or _hi(z)))")
            continue
        if base == "string" and _primitive(avro_type) is not None:
            cache: dict[str, bytes] = {}
            env[f"_c{i}"], env[f"_w{i}"] = cache.get, _string_writer(cache=cache)
            parts.append(f"(_c{i}(r[{name!r}]) or _w{i}(r[{name!r}]))")
            continue
        writer = _field_writer(avro_type)
        if writer is None:
            return None
        env[f"_w{i}"] = writer
        parts.append(f"_w{i}(r[{name!r}])")
    body = f"_join(({', '.join(parts)},))"
    if fallback is None:
        source = f"def write(r):\n    return {body}\n"
    else:
        env["_fallback"] = fallback
        source = (f"def write(r):\n    try:\n        return {body}\n"
                  f"    except Exception:\n        return _fallback(r)\n")
    exec(compile(source, f"<avro writer {schema.get('name')}>", "exec"), env)
    return env["write"]


_LONG = """\
    x = b[p]; p += 1
    if x < 128:
        {dst} = (x >> 1) ^ -(x & 1)
    else:
        v = x & 127; s = 7
        while True:
            x = b[p]; p += 1
            v |= (x & 127) << s
            if x < 128:
                break
            s += 7
            if s > 63:
                raise OverflowError("varint longer than 10 bytes")
        {dst} = (v >> 1) ^ -(v & 1)
"""


def _read_code(avro_type: Any, dst: str, env: dict[str, Any]) -> str | None:
    """Statements that read one value of ``avro_type`` at ``b[p]`` into ``dst``, or None."""
    if isinstance(avro_type, dict):
        if avro_type.get("logicalType") not in (None, "timestamp-millis", "timestamp-micros",
                                                "local-timestamp-millis"):
            return None
        avro_type = avro_type.get("type")
    if not isinstance(avro_type, str):
        return None
    if avro_type == "null":
        return f"    {dst} = None\n"
    if avro_type == "long":
        return _LONG.format(dst=dst) + f"    if not -{1 << 63} <= {dst} < {1 << 63}:\n" \
                                       f"        raise OverflowError('long out of range')\n"
    if avro_type == "int":
        return _LONG.format(dst=dst) + f"    if not -{1 << 31} <= {dst} < {1 << 31}:\n" \
                                       f"        raise OverflowError('int out of range')\n"
    if avro_type in ("string", "bytes"):
        value = "b[p:e].decode()" if avro_type == "string" else "b[p:e]"
        return (_LONG.format(dst="n") + "    e = p + n\n"
                "    if n < 0 or e > L:\n        raise EOFError('string/bytes past the end')\n"
                f"    {dst} = {value}; p = e\n")
    if avro_type in ("double", "float"):
        size, fn = (8, "_ud") if avro_type == "double" else (4, "_uf")
        env[fn] = struct.Struct("<d" if avro_type == "double" else "<f").unpack_from
        return f"    {dst} = {fn}(b, p)[0]; p += {size}\n"
    if avro_type == "boolean":
        return (f"    x = b[p]; p += 1\n    if x > 1:\n        raise ValueError('boolean byte')\n"
                f"    {dst} = x == 1\n")
    return None


def compile_reader(schema: dict[str, Any]) -> Callable[[bytes, int], tuple[Any, ...]] | None:
    """``(data, start) -> tuple of field values`` for a flat record ``schema`` (JSON form), or None.

    The reader twin of :func:`compile_writer`: values come out in field order (timestamps as
    epoch ints, like :func:`schemas.serde.reader_schema`), so a batch of tuples turns into
    columns with one ``zip(*rows)`` and no dict per record. ``start`` skips a header (5 for
    the Confluent frame) without copying the body. It raises on anything unusual (truncated,
    trailing bytes, an out-of-range long, an unknown union branch); the caller then asks
    fastavro, so errors and edge cases stay fastavro's. It does no schema resolution: use it
    only when the writer schema is the reader schema.

    >>> schema = {"type": "record", "name": "T", "fields": [
    ...     {"name": "id", "type": "long"}, {"name": "s", "type": "string"},
    ...     {"name": "n", "type": ["null", "double"]}]}
    >>> read = compile_reader(schema)
    >>> read(compile_writer(schema, b"hdr")({"id": -1, "s": "ab", "n": 2.5}), 3)
    (-1, 'ab', 2.5)
    """
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    env: dict[str, Any] = {}
    body = []
    names = []
    for i, field in enumerate(schema["fields"]):
        avro_type, dst = field["type"], f"v{i}"
        names.append(dst)
        if isinstance(avro_type, list):
            if len(avro_type) != 2 or "null" not in avro_type:
                return None
            null_index = avro_type.index("null")
            inner = _read_code(avro_type[1 - null_index], dst, env)
            if inner is None:
                return None
            body.append(f"    x = b[p]; p += 1\n    if x == {2 * null_index}:\n        {dst} = None\n"
                        f"    elif x == {2 * (1 - null_index)}:\n"
                        + "".join("    " + line + "\n" for line in inner.splitlines())
                        + "    else:\n        raise ValueError('union branch')\n")
            continue
        code = _read_code(avro_type, dst, env)
        if code is None:
            return None
        body.append(code)
    source = ("def read(b, p=0):\n    L = len(b)\n" + "".join(body)
              + "    if p != L:\n        raise ValueError(f'{L - p} trailing bytes')\n"
              + f"    return ({', '.join(names)}{',' if len(names) == 1 else ''})\n")
    exec(compile(source, f"<avro reader {schema.get('name')}>", "exec"), env)
    return env["read"]
