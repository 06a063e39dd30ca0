"""Data-quality rules: every reason code reachable, valid records pass, nothing raises."""

from __future__ import annotations

import math
from typing import Any

import pytest

from schemas.rules import (
    ACCEPTED_CURRENCIES,
    LABEL_REASONS,
    ORDER_REASONS,
    USER_REASONS,
    VALIDATORS,
    reason_code,
    validate_label,
    validate_order,
    validate_user,
)

NOW = 1_700_000_000_000
ORDER = {"order_id": "o-1", "user_id": 3, "amount": 10.0, "currency": "EUR", "category": "books",
         "payment_method": "card", "ip_country": "DE", "event_time": NOW}
USER = {"user_id": 3, "country": "DE", "segment": "new", "signup_time": NOW - 5, "updated_at": NOW}
LABEL = {"order_id": "o-1", "is_fraud": True, "label_time": NOW}


def test_contract_currencies_accepted() -> None:
    assert {"EUR", "USD", "GBP", "JPY", "CHF"} <= ACCEPTED_CURRENCIES
    assert all(len(c) == 3 and c.isupper() for c in ACCEPTED_CURRENCIES)


@pytest.mark.parametrize(("change", "code"), [
    ({"order_id": ""}, "empty_order_id"),
    ({"order_id": "   "}, "empty_order_id"),
    ({"order_id": None}, "empty_order_id"),
    ({"user_id": 0}, "bad_user_id"),
    ({"user_id": -3}, "bad_user_id"),
    ({"user_id": True}, "bad_user_id"),
    ({"user_id": "5"}, "bad_user_id"),
    ({"amount": 0.0}, "bad_amount"),
    ({"amount": -1.0}, "bad_amount"),
    ({"amount": math.inf}, "bad_amount"),
    ({"amount": math.nan}, "bad_amount"),
    ({"amount": 1_000_000.5}, "bad_amount"),
    ({"amount": "12"}, "bad_amount"),
    ({"currency": "XXX"}, "bad_currency"),
    ({"currency": "eur"}, "bad_currency"),
    ({"event_time": NOW + 300_001}, "future_event_time"),
    ({"event_time": None}, "future_event_time"),
])
def test_order_reasons(change: dict[str, Any], code: str) -> None:
    reason = validate_order({**ORDER, **change}, NOW)
    assert reason is not None and reason_code(reason) == code
    assert code in ORDER_REASONS


def test_order_boundaries_are_valid() -> None:
    assert validate_order(ORDER, NOW) is None
    assert validate_order({**ORDER, "amount": 1_000_000}, NOW) is None
    assert validate_order({**ORDER, "amount": 0.01}, NOW) is None
    assert validate_order({**ORDER, "event_time": NOW + 300_000}, NOW) is None
    assert validate_order({**ORDER, "event_time": 0}, NOW) is None  # lateness is not invalidity


def test_missing_fields_never_raise() -> None:
    for name, validator in VALIDATORS.items():
        assert validator({}, NOW) is not None, name


@pytest.mark.parametrize(("change", "code"), [
    ({"user_id": -1}, "bad_user_id"),
    ({"country": "DEU"}, "bad_country"),
    ({"country": "d1"}, "bad_country"),
    ({"segment": ""}, "empty_segment"),
    ({"signup_time": NOW + 10}, "bad_signup_time"),
    ({"signup_time": None}, "bad_signup_time"),
    ({"updated_at": NOW + 400_000, "signup_time": NOW}, "future_updated_at"),
])
def test_user_reasons(change: dict[str, Any], code: str) -> None:
    assert validate_user(USER, NOW) is None
    reason = validate_user({**USER, **change}, NOW)
    assert reason is not None and reason_code(reason) == code and code in USER_REASONS


@pytest.mark.parametrize(("change", "code"), [
    ({"order_id": ""}, "empty_order_id"),
    ({"is_fraud": None}, "bad_is_fraud"),
    ({"label_time": NOW + 301_000}, "future_label_time"),
])
def test_label_reasons(change: dict[str, Any], code: str) -> None:
    assert validate_label(LABEL, NOW) is None
    reason = validate_label({**LABEL, **change}, NOW)
    assert reason is not None and reason_code(reason) == code and code in LABEL_REASONS
