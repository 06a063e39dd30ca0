"""The e-commerce rules as they were hand-written before pipelines declared them (the oracle of
tests/unit/test_rules.py: the declared rules must give the same reason for every record)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

ACCEPTED_CURRENCIES: frozenset[str] = frozenset(
    {"EUR", "USD", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN", "CZK"}
)
"""ISO-4217 codes the shop settles in; anything else is rejected as ``bad_currency``."""

MAX_AMOUNT = 1_000_000.0
"""Largest accepted order amount (inclusive), in the order's currency."""

MAX_FUTURE_MS = 5 * 60 * 1000
"""How far an event time may lie ahead of the Kafka record's own timestamp (clock skew allowance), in ms.

The record timestamp is part of the log, the processing time is not: judged against it, a
replay on another day gives every record the verdict the live run gave it."""

ORDER_REASONS = ("empty_order_id", "bad_user_id", "bad_amount", "bad_currency", "future_event_time")
"""Every reason code :func:`validate_order` can return (the generator produces each one)."""
USER_REASONS = (
    "bad_user_id", "bad_country", "empty_segment", "bad_signup_time", "future_updated_at",
)
"""Every reason code :func:`validate_user` can return."""
LABEL_REASONS = ("empty_order_id", "bad_is_fraud", "future_label_time")
"""Every reason code :func:`validate_label` can return."""


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_id(rec: Mapping[str, Any], field: str) -> str | None:
    value = rec.get(field)
    if not isinstance(value, str) or not value.strip():
        return f"empty_{field}"
    return None


def _check_positive_id(rec: Mapping[str, Any], field: str) -> str | None:
    value = rec.get(field)
    if not _is_int(value) or value <= 0:
        return f"bad_{field}: {value!r}"
    return None


def _check_not_future(rec: Mapping[str, Any], field: str, now_ms: int | None) -> str | None:
    value = rec.get(field)
    if not _is_int(value):
        return f"future_{field}: not an epoch-ms timestamp: {value!r}"
    if now_ms is not None and value - now_ms > MAX_FUTURE_MS:
        # The reason names the record's own value, not "Ns ahead": a re-delivery after a crash
        # must give the same reason, else the rejected row is not recognised as the same one.
        return f"future_{field}: {value} is more than {MAX_FUTURE_MS // 1000}s ahead"
    return None


def validate_order(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
    """Why order ``rec`` is invalid as of ``now_ms`` (epoch ms), or None.

    ``now_ms`` is the Kafka timestamp of the record that carries ``rec`` (the stream processors
    pass it; the producer edge passes its clock, which becomes that timestamp); None: unknown,
    so the event time is not judged.

    Rules (ARCHITECTURE.md): non-empty order_id; user_id > 0; 0 < amount <= 1,000,000 and
    finite; currency in :data:`ACCEPTED_CURRENCIES`; event_time at most 5 minutes ahead.

    >>> now = 1_700_000_000_000
    >>> ok = {"order_id": "o1", "user_id": 7, "amount": 12.5, "currency": "EUR",
    ...       "category": "books", "payment_method": "card", "ip_country": "DE",
    ...       "event_time": now - 1000}
    >>> validate_order(ok, now) is None
    True
    >>> validate_order({**ok, "order_id": ""}, now)
    'empty_order_id'
    >>> validate_order({**ok, "user_id": -3}, now)
    'bad_user_id: -3'
    >>> validate_order({**ok, "amount": 0.0}, now)
    'bad_amount: 0.0'
    >>> validate_order({**ok, "amount": float("nan")}, now)
    'bad_amount: nan'
    >>> validate_order({**ok, "amount": 1_000_000.0}, now) is None
    True
    >>> validate_order({**ok, "amount": 1_000_000.01}, now)
    'bad_amount: 1000000.01'
    >>> validate_order({**ok, "currency": "XXX"}, now)
    'bad_currency: XXX'
    >>> validate_order({**ok, "event_time": now + 420_000}, now)
    'future_event_time: 1700000420000 is more than 300s ahead'
    >>> validate_order({**ok, "event_time": now + 300_000}, now) is None
    True
    """
    reason = _check_id(rec, "order_id") or _check_positive_id(rec, "user_id")
    if reason:
        return reason
    amount = rec.get("amount")
    if (not isinstance(amount, int | float) or isinstance(amount, bool)
            or not math.isfinite(amount) or not 0 < amount <= MAX_AMOUNT):
        return f"bad_amount: {amount!r}"
    currency = rec.get("currency")
    if currency not in ACCEPTED_CURRENCIES:
        return f"bad_currency: {currency}"
    return _check_not_future(rec, "event_time", now_ms)


def validate_user(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
    """Why user profile ``rec`` is invalid as of ``now_ms`` (its record timestamp), or None.

    Rules: user_id > 0; country is 2 uppercase letters (ISO-3166 alpha-2); non-empty segment;
    signup_time not after updated_at; updated_at at most 5 minutes ahead.

    >>> now = 1_700_000_000_000
    >>> ok = {"user_id": 1, "country": "DE", "segment": "new",
    ...       "signup_time": now - 10, "updated_at": now}
    >>> validate_user(ok, now) is None
    True
    >>> validate_user({**ok, "user_id": 0}, now)
    'bad_user_id: 0'
    >>> validate_user({**ok, "country": "de"}, now)
    "bad_country: 'de'"
    >>> validate_user({**ok, "segment": " "}, now)
    'empty_segment'
    >>> validate_user({**ok, "signup_time": now + 1}, now)
    'bad_signup_time: after updated_at'
    >>> validate_user({**ok, "updated_at": now + 600_000, "signup_time": now}, now)
    'future_updated_at: 1700000600000 is more than 300s ahead'
    """
    reason = _check_positive_id(rec, "user_id")
    if reason:
        return reason
    country = rec.get("country")
    if not (isinstance(country, str) and len(country) == 2 and country.isascii()
            and country.isalpha() and country.isupper()):
        return f"bad_country: {country!r}"
    if _check_id(rec, "segment"):
        return "empty_segment"
    signup, updated = rec.get("signup_time"), rec.get("updated_at")
    if not _is_int(signup):
        return f"bad_signup_time: {signup!r}"
    if _is_int(updated) and signup > updated:
        return "bad_signup_time: after updated_at"
    return _check_not_future(rec, "updated_at", now_ms)


def validate_label(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
    """Why order label ``rec`` is invalid as of ``now_ms`` (its record timestamp), or None.

    Rules: non-empty order_id; is_fraud is a boolean; label_time at most 5 minutes ahead.

    >>> now = 1_700_000_000_000
    >>> validate_label({"order_id": "o1", "is_fraud": False, "label_time": now}, now) is None
    True
    >>> validate_label({"order_id": "", "is_fraud": False, "label_time": now}, now)
    'empty_order_id'
    >>> validate_label({"order_id": "o1", "is_fraud": 1, "label_time": now}, now)
    'bad_is_fraud: 1'
    >>> validate_label({"order_id": "o1", "is_fraud": True, "label_time": now + 301_000}, now)
    'future_label_time: 1700000301000 is more than 300s ahead'
    """
    reason = _check_id(rec, "order_id")
    if reason:
        return reason
    if not isinstance(rec.get("is_fraud"), bool):
        return f"bad_is_fraud: {rec.get('is_fraud')!r}"
    return _check_not_future(rec, "label_time", now_ms)


