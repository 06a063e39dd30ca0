"""Pure logic of ``kappa replay``: start points, version names, the verification report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kappa.replay import ReplayError, StartPoint, Verification, check_version, parse_start
from kappa.settings import Settings
from kappa.versions import Live, VersionNotServing, choose_run_version, next_free, read_live, record_live


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


def test_value_map_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(category_map="").value_map("category_map") == {}
    assert Settings(category_map="toys=kids, books = media,junk").value_map("category_map") == {"toys": "kids",
                                                                                                "books": "media"}
    assert Settings().value_map({"a": "b"}) == {"a": "b"}  # a declared table as it is
    monkeypatch.setenv("KAPPA_SHOP_MAP", "x=y")  # a knob of a pipeline's own, not a settings field
    assert Settings().value_map("shop_map") == {"x": "y"}


# -- which version `kappa run` runs (kappa.versions) ------------------------------------------
def _swapped(home: Path, version: str, previous: str = "v1", knobs: dict[str, str] | None = None) -> None:
    record_live(Settings(home=home), version, previous, "2026-12-07T10:00:00+00:00")
    if knobs is not None:
        (home / "versions").mkdir(parents=True, exist_ok=True)
        (home / "versions" / f"{version}.json").write_text(json.dumps({"version": version, "settings": knobs}))


def test_plain_run_runs_v1_before_any_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAPPA_VERSION", raising=False)
    assert choose_run_version(Settings(home=tmp_path)) == "v1"
    monkeypatch.setenv("KAPPA_VERSION", "v7")
    assert choose_run_version(Settings(home=tmp_path)) == "v7"
    assert choose_run_version(Settings(home=tmp_path), "v3") == "v3"


def test_plain_run_runs_the_swapped_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAPPA_VERSION", raising=False)
    _swapped(tmp_path, "v2")
    assert choose_run_version(Settings(home=tmp_path)) == "v2"
    assert choose_run_version(Settings(home=tmp_path), "v2") == "v2"
    assert read_live(Settings(home=tmp_path)) == Live("v2", "v1", "2026-12-07T10:00:00+00:00")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_explicit_other_version_is_refused_after_a_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           how: str) -> None:
    monkeypatch.delenv("KAPPA_VERSION", raising=False)
    _swapped(tmp_path, "v2")
    if how == "env":
        monkeypatch.setenv("KAPPA_VERSION", "v1")
    with pytest.raises(VersionNotServing) as err:
        choose_run_version(Settings(home=tmp_path), "v1" if how == "flag" else None)
    msg = str(err.value)
    assert "\n" not in msg and "the views read v2" in msg and "--force" in msg
    assert ("KAPPA_VERSION v1" if how == "env" else "--version v1") in msg
    said: list[str] = []
    assert choose_run_version(Settings(home=tmp_path), "v1" if how == "flag" else None, force=True,
                              echo=said.append) == "v1"
    assert said and said[0].startswith("! running v1 although the views serve v2")


def test_plain_run_warns_when_the_live_versions_knobs_differ(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAPPA_VERSION", raising=False)
    _swapped(tmp_path, "v2", knobs={"category_map": "toys=kids"})
    said: list[str] = []
    assert choose_run_version(Settings(home=tmp_path), echo=said.append) == "v2"
    assert said and "KAPPA_CATEGORY_MAP='toys=kids'" in said[0]
    said.clear()
    choose_run_version(Settings(home=tmp_path, category_map="toys=kids"), echo=said.append)
    assert not said


def test_live_record_is_replaced_whole(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    record_live(s, "v2", "v1", "t1")
    record_live(s, "v3", "v2", "t2")
    assert read_live(s) == Live("v3", "v2", "t2")
    assert [p.name for p in tmp_path.iterdir()] == ["live_version.json"]  # no temporary left behind
    (tmp_path / "live_version.json").write_text("{not json")
    assert read_live(s) is None


@pytest.mark.parametrize(("version", "taken", "free"), [
    ("v2", ["v1", "v2"], "v3"),
    ("v2", ["v1", "v2", "v5", "w9"], "v6"),
    ("rp1v4", ["rp1v1", "rp1v4", "rp1v5", "v9"], "rp1v6"),
    ("v1-fix", ["v1-fix"], "v1-fix2"),
])
def test_next_free_suggests_an_unused_name(version: str, taken: list[str], free: str) -> None:
    assert next_free(version, taken) == free
    assert free not in taken
