"""Pure logic of ``kappa replay``: start points, version names, the verification report."""

from __future__ import annotations

import pytest

from kappa.replay import ReplayError, StartPoint, Verification, check_version, parse_start
from kappa.settings import Settings


@pytest.mark.parametrize(("text", "at_ms", "boundary"), [
    ("earliest", None, None),
    ("EARLIEST", None, None),
    ("2024-05-01T10:15:30Z", 1714558530000, 1714558500000),
    ("2024-05-01T12:15:30+02:00", 1714558530000, 1714558500000),
    ("2024-05-01T10:15:00", 1714558500000, 1714558500000),
])
def test_parse_start(text: str, at_ms: int | None, boundary: int | None) -> None:
    s = parse_start(text)
    assert (s.at_ms, s.boundary_ms) == (at_ms, boundary)


def test_start_point_prints_its_boundary() -> None:
    assert str(StartPoint(1714558530000)) == "2024-05-01T10:15:00Z"
    assert str(StartPoint(None)) == "earliest"


@pytest.mark.parametrize("bad", ["", "v 2", "v2;drop", "a" * 65, "v2.1"])
def test_check_version_refuses_names_unsafe_in_topics_and_databases(bad: str) -> None:
    with pytest.raises(ReplayError):
        check_version(bad)


def test_verification_identical_and_lines() -> None:
    v = Verification("v1", "v2", stats={"orders": ({"rows": 3.0}, {"rows": 3.0})})
    assert v.identical
    assert "identical on every view" in "\n".join(v.lines())
    v.stats["revenue_per_minute"] = ({"rows": 2.0}, {"rows": 4.0})
    v.explanations.append("settings differ: category_map '' -> 'toys=kids'")
    text = "\n".join(v.lines())
    assert not v.identical and "+2" in text and "category_map" in text


def test_breakdown_difference_is_not_identical() -> None:
    v = Verification("v1", "v2", stats={"orders": ({"rows": 3.0}, {"rows": 3.0})}, breakdown_differs=True)
    assert not v.identical


def test_category_mapping_knob() -> None:
    assert Settings(category_map="").category_mapping == {}
    assert Settings(category_map="toys=kids, books = media,junk").category_mapping == {"toys": "kids",
                                                                                       "books": "media"}
