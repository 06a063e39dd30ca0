"""File rows: UTF-8 with or without BOM, bad encodings, implausible timestamps, short reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kappa.errors import ConfigError
from producers.files import MIN_TIME_MS, RowError, coerce_row, field_types, read_rows

ORDERS = field_types("orders")
USERS = field_types("users")
ROW = {"order_id": "o1", "user_id": 7, "amount": 9.5, "currency": "EUR", "category": "books",
       "payment_method": "card", "ip_country": "DE", "event_time": 1709287200000}
HEADER = b"order_id,user_id,amount,currency,category,payment_method,ip_country,event_time"


def _rows(path: Path, fmt: str) -> list[tuple[int, bytes, Any]]:
    return list(read_rows(path, fmt))


def test_csv_with_a_bom_keeps_its_first_column(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_bytes(b"\xef\xbb\xbf" + HEADER + b"\r\no1,7,9.5,EUR,books,card,DE,1709287200000\r\n")
    [(line, raw, row)] = _rows(path, "csv")
    assert line == 2 and raw == b"o1,7,9.5,EUR,books,card,DE,1709287200000"
    assert isinstance(row, dict) and row["order_id"] == "o1"
    assert coerce_row(row, ORDERS, from_text=True)["event_time"] == 1709287200000


def test_jsonl_with_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n")
    [(line, _, row)] = _rows(path, "jsonl")
    assert line == 1 and row == ROW


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_invalid_utf8_is_bad_encoding_with_the_raw_bytes(tmp_path: Path, fmt: str) -> None:
    good = "b\u00f6oks".encode()
    if fmt == "csv":
        lines = [HEADER, b"o1,7,9.5,EUR,b\xffoks,card,DE,1", b"o2,7,9.5,EUR," + good + b",card,DE,1"]
    else:
        lines = [json.dumps(ROW).encode().replace(b"books", b"b\xffoks"),
                 json.dumps({**ROW, "category": "b\u00f6oks"}).encode()]
    path = tmp_path / f"o.{fmt}"
    path.write_bytes(b"\n".join(lines) + b"\n")
    (n1, raw1, bad), (_, _, ok) = _rows(path, fmt)
    assert n1 == (2 if fmt == "csv" else 1)
    assert raw1 == lines[n1 - 1]
    assert isinstance(bad, str) and bad.startswith("bad_encoding: invalid UTF-8 at byte ")
    assert "(0xff)" in bad
    assert isinstance(ok, dict) and ok["category"] == "b\u00f6oks"


def test_a_quoted_multiline_csv_row_keeps_its_raw_bytes(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    raw = b'o1,7,9.5,EUR,"two\nlines \xff",card,DE,1'
    path.write_bytes(HEADER + b"\n" + raw + b"\n")
    [(line, got, reason)] = _rows(path, "csv")
    assert line == 3 and got == raw and str(reason).startswith("bad_encoding: ")


def test_a_csv_header_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_bytes(b"order_id,us\xe9r_id\no1,7\n")
    with pytest.raises(ConfigError, match="header is not UTF-8"):
        _rows(path, "csv")


@pytest.mark.parametrize(("value", "reason"), [
    (1796611179, "bad_type: event_time: 1796611179 is before 2000-01-01 as epoch ms; "
                 "epoch seconds? use ms or ISO-8601"),
    ("1796611179", "bad_type: event_time: 1796611179 is before 2000-01-01 as epoch ms; "
                   "epoch seconds? use ms or ISO-8601"),
    (0, "bad_type: event_time: 0 is before 2000-01-01 as epoch ms"),
    (-5, "bad_type: event_time: -5 is before 2000-01-01 as epoch ms"),
    ("1999-12-31T23:59:59Z", "bad_type: event_time: 1999-12-31T23:59:59Z is before 2000-01-01"),
    (1796611179000000, "bad_type: event_time: 1796611179000000 is after 9999-12-31 as epoch ms; "
                       "epoch microseconds? use ms or ISO-8601"),
])
def test_timestamps_that_cannot_be_meant(value: Any, reason: str) -> None:
    with pytest.raises(RowError) as err:
        coerce_row({**ROW, "event_time": value}, ORDERS, from_text=False)
    assert str(err.value) == reason


def test_the_earliest_plausible_time_passes() -> None:
    assert coerce_row({**ROW, "event_time": MIN_TIME_MS}, ORDERS, from_text=False)[
        "event_time"] == MIN_TIME_MS
    assert coerce_row({**ROW, "event_time": "2000-01-01T00:00:00Z"}, ORDERS, from_text=False)[
        "event_time"] == MIN_TIME_MS


def test_a_declared_minimum_applies_to_every_timestamp_field() -> None:
    user = {"user_id": "1", "country": "DE", "segment": "new", "signup_time": "2019-06-01T00:00:00Z",
            "updated_at": "1709290800000"}
    minimum = 1577836800000  # 2020-01-01
    with pytest.raises(RowError, match=r"^bad_type: signup_time: 2019-06-01T00:00:00Z is before 2020-01-01$"):
        coerce_row(user, USERS, from_text=True, min_time_ms=minimum)
    late = {**user, "signup_time": "2021-01-01T00:00:00Z", "updated_at": "1709290800"}
    with pytest.raises(RowError, match=r"^bad_type: updated_at: 1709290800 is before 2020-01-01 as "
                                       r"epoch ms; epoch seconds"):
        coerce_row(late, USERS, from_text=True, min_time_ms=minimum)
    assert coerce_row(user, USERS, from_text=True)["signup_time"] == 1559347200000


def test_a_huge_value_is_cut_in_the_reason() -> None:
    with pytest.raises(RowError) as err:
        coerce_row({**ROW, "amount": "x" * 5_000_000}, ORDERS, from_text=False)
    assert str(err.value).startswith("bad_type: amount: expected a number, got 'xxx")
    assert len(str(err.value)) < 200
