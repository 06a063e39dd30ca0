"""Local BACKWARD-compatibility check that names the offending field.

Registries answer "compatible or not", often without saying why (and Apicurio's default
rule may accept anything). ``kappa schemas check`` therefore also resolves the schemas
itself: can a consumer with the *new* (reader) schema read data written with the *old*
(writer) schema? Every reason names the field path.

>>> old = {"type": "record", "name": "T", "fields": [{"name": "a", "type": "long"}]}
>>> new = {"type": "record", "name": "T", "fields": [{"name": "a", "type": "string"},
...        {"name": "b", "type": "long"}, {"name": "c", "type": ["null", "long"], "default": None}]}
>>> backward_incompatibilities(new, old)
["field 'a': type changed from long to string", "field 'b': added without a default"]
"""

from __future__ import annotations

from typing import Any

__all__ = ["backward_incompatibilities"]

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


def _kind(t: Any) -> str:
    if isinstance(t, list):
        return "union"
    if isinstance(t, dict):
        return str(t.get("type"))
    return str(t)


def _show(t: Any) -> str:
    if isinstance(t, list):
        return "[" + ", ".join(_show(x) for x in t) + "]"
    if isinstance(t, dict):
        return str(t.get("name") or t.get("type"))
    return str(t)


def _readable(reader: Any, writer: Any, path: str) -> list[str]:
    """Reasons why data of type ``writer`` cannot be read as ``reader`` (empty when fine)."""
    rk, wk = _kind(reader), _kind(writer)
    if wk == "union":
        problems = []
        for branch in writer:
            problems += _readable(reader, branch, path)
        return problems[:1]
    if rk == "union":
        for branch in reader:
            if not _readable(branch, writer, path):
                return []
        return [f"field '{path}': type changed from {_show(writer)} to {_show(reader)}"]
    if rk == "record" and wk == "record":
        return backward_incompatibilities(reader, writer, path + ".")
    if rk == wk and rk == "array":
        return _readable(reader["items"], writer["items"], path + "[]")
    if rk == wk and rk == "map":
        return _readable(reader["values"], writer["values"], path + "{}")
    if rk == wk and rk == "enum":
        missing = set(writer.get("symbols", [])) - set(reader.get("symbols", []))
        if missing and "default" not in reader:
            return [f"field '{path}': enum symbols removed: {', '.join(sorted(missing))}"]
        return []
    if rk == wk and rk == "fixed":
        return [] if reader.get("size") == writer.get("size") else [
            f"field '{path}': fixed size changed from {writer.get('size')} to {reader.get('size')}"]
    if rk in _PROMOTIONS.get(wk, {wk}):
        return []
    return [f"field '{path}': type changed from {_show(writer)} to {_show(reader)}"]


def backward_incompatibilities(reader: dict[str, Any], writer: dict[str, Any],
                               prefix: str = "") -> list[str]:
    """Why the new ``reader`` record schema cannot read data of the old ``writer`` schema."""
    written = {f["name"]: f for f in writer.get("fields", [])}
    for f in writer.get("fields", []):
        for alias in f.get("aliases", []):
            written.setdefault(alias, f)
    problems: list[str] = []
    for field in reader.get("fields", []):
        name = prefix + field["name"]
        source = written.get(field["name"])
        if source is None:
            for alias in field.get("aliases", []):
                source = written.get(alias)
                if source is not None:
                    break
        if source is None:
            if "default" not in field:
                problems.append(f"field '{name}': added without a default")
            continue
        problems += _readable(field["type"], source["type"], name)
    return problems
