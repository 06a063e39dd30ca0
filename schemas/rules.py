"""Data-quality rules that travel with the schemas, written once for every stage.

A pipeline declares its rules per input (``[inputs.<name>] rules = [...]`` in its project
file: field conditions and Python rule functions); :func:`compile_rules` turns them into one
validator. The producer edge (``kappa produce --validate``) and the stream processors call the
same validator, so an event is judged identically wherever it is checked. A validator returns
``None`` for a valid record, else a short reason ``"<code>: <detail>"``; the code (the part
before ``:``) is stable and used as a metric label and in ``<database>.rejected_events``.

Validators take plain dicts as :class:`schemas.serde.Decoder` returns them (timestamps as
epoch milliseconds) and never raise, whatever the record holds. Time checks compare with
``now_ms``, the Kafka timestamp of the record that carries the event (never the wall clock),
so a replay on another day gives every record the verdict the live run gave it.

>>> now = 1_700_000_000_000
>>> validate_order = for_input("orders")  # of the selected pipeline (here the e-commerce example)
>>> validate_order({"order_id": "o1", "user_id": 7, "amount": 12.5, "currency": "EUR",
...                 "event_time": now}, now) is None
True
>>> validate_order({"order_id": "o1", "user_id": 7, "amount": 12.5, "currency": "XXX",
...                 "event_time": now}, now)
'bad_currency: XXX'
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

from kappa.pipeline.definition import Input, Rule

__all__ = [
    "Validator",
    "compile_rule",
    "compile_rules",
    "for_input",
    "reason_code",
    "validators",
]

Validator = Callable[[Mapping[str, Any], int | None], str | None]
_Check = Callable[[Mapping[str, Any], int | None], str | None]


def reason_code(reason: str) -> str:
    """The stable code of a reason (text before the first ``:``), e.g. for metric labels.

    >>> reason_code("bad_amount: 0.0")
    'bad_amount'
    >>> reason_code("empty_order_id")
    'empty_order_id'
    """
    return reason.split(":", 1)[0].strip()


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "int": _is_int,
    "long": _is_int,
    "float": _is_number,
    "double": _is_number,
}
_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def compile_rule(rule: Rule, field_type: str, resolve: Callable[[str], Any]) -> _Check:
    """One rule as a check ``(record, now_ms) -> reason | None``.

    Reasons: ``"<code>: <detail>"``; the detail template (``detail = "..."``) sees ``value``
    (and ``max_s`` for ``max_ahead``); ``detail = ""`` gives the bare code. Defaults:
    ``{value!r}``, and ``{value} is more than {max_s}s ahead`` for ``max_ahead``.

    >>> r = Rule("bad_amount", "amount", "range", {"gt": 0, "le": 10})
    >>> check = compile_rule(r, "double", lambda ref: None)
    >>> check({"amount": 5.0}, None), check({"amount": 0.0}, None), check({"amount": "x"}, None)
    (None, 'bad_amount: 0.0', "bad_amount: 'x'")
    """
    if rule.function:
        fn = resolve(rule.function)
        return lambda rec, now_ms: fn(rec, now_ms)
    code, name, p = rule.code, rule.field, rule.params
    assert name is not None

    def reason(template: str, **values: Any) -> str:
        return f"{code}: {template.format(**values)}" if template else code

    detail = "{value!r}" if rule.detail is None else rule.detail
    if rule.check == "non_empty":  # a string with a non-blank character; bytes, arrays, maps: any item
        kinds: Any = str if field_type == "string" else {"bytes": bytes, "array": list, "map": dict}.get(
            field_type, str)

        def check(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
            value = rec.get(name)
            if isinstance(value, kinds) and (value.strip() if isinstance(value, str) else value):
                return None
            return reason(detail, value=value)
    elif rule.check == "range":
        bounds = [(_BOUNDS[k], v) for k, v in p.items()]
        typed: Callable[[Any], bool] = _is_int if field_type in ("int", "long") else _is_number

        def check(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
            value = rec.get(name)
            if typed(value):
                for op, bound in bounds:
                    if not op(value, bound):
                        return reason(detail, value=value)
                return None
            return reason(detail, value=value)
    elif rule.check == "in":
        allowed = frozenset(p["values"])

        def check(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
            value = rec.get(name)
            try:
                if value in allowed:
                    return None
            except TypeError:  # unhashable
                pass
            return reason(detail, value=value)
    elif rule.check == "regex":
        pattern = re.compile(p["pattern"])

        def check(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
            value = rec.get(name)
            if isinstance(value, str) and pattern.fullmatch(value):
                return None
            return reason(detail, value=value)
    elif rule.check == "max_ahead":
        limit = int(p["max"])
        template = "{value} is more than {max_s}s ahead" if rule.detail is None else rule.detail

        def check(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
            value = rec.get(name)
            if not _is_int(value):
                return f"{code}: not an epoch-ms timestamp: {value!r}"
            if now_ms is not None and value - now_ms > limit:
                # names the record's own value, not "Ns ahead": a re-delivery after a crash
                # must give the same reason, else the rejected row is not the same one
                return reason(template, value=value, max_s=limit // 1000)
            return None
    elif rule.check == "type":
        ok = _TYPES[p["type"]]

        def check(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
            value = rec.get(name)
            return None if ok(value) else reason(detail, value=value)
    else:  # the loader refuses other checks
        raise ValueError(f"unknown check {rule.check!r}")
    return check


def compile_rules(inp: Input, resolve: Callable[[str], Any]) -> Validator:
    """The validator of input ``inp``: its rules in declared order, the first failing one wins.

    A rule function that raises gives ``rule_error: <function>: <exception>`` (the record is
    rejected with the reason, never lost, and the worker keeps running).
    """
    checks = []
    for rule in inp.rules:
        ftype = inp.schema.field(rule.field).type if rule.field else ""  # type: ignore[union-attr]
        checks.append((rule, compile_rule(rule, ftype, resolve)))

    plain = [check for _, check in checks]

    def validate(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
        i = 0
        try:
            for i, check in enumerate(plain):  # noqa: B007 - i names the failing rule below
                reason = check(rec, now_ms)
                if reason:
                    return reason
        except Exception as exc:
            rule = checks[i][0]
            return f"rule_error: {rule.function or rule.code}: {type(exc).__name__}: {exc}"
        return None

    return validate


def validators(pipeline: Any) -> dict[str, Validator]:
    """Validator per input of ``pipeline`` (a :class:`kappa.pipeline.Pipeline`)."""
    return {name: compile_rules(inp, pipeline.resolve) for name, inp in pipeline.inputs.items()}


@functools.cache
def _validators(path: Any) -> dict[str, Validator]:
    from kappa.pipeline import load

    return validators(load(path))


def for_input(name: str, pipeline: Any = None) -> Validator:
    """Validator of input ``name`` of ``pipeline`` (default: the selected one, compiled once)."""
    from kappa.pipeline import current

    pipe = pipeline or current()
    pipe.input(name)  # a clear error for an unknown input
    return _validators(pipe.path)[name]
