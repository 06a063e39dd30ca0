"""The bench report: ratios to baselines, every section listed, files a reader can use."""

from __future__ import annotations

from pathlib import Path

import pytest

from kappa.bench import SECTIONS, SUITE, BenchReport, Figure, run_suite, suite_argv
from kappa.errors import KappaError

META = {"started": "20260101T000000", "events": 1000, "quick": True, "cpus": 2, "load_before": "1.0",
        "load_after": "1.0", "seconds": 12.0}


def test_ratio_is_relative_to_the_baseline_and_absent_without_one() -> None:
    assert Figure("produce", "x", 50.0, "ev/s", baseline=100.0).ratio == 0.5
    assert Figure("job", "quix", None, "", baseline=100.0).ratio is None
    assert Figure("rss", "y", 10.0, "MiB").ratio is None


def test_table_lists_every_section_even_unmeasured_ones() -> None:
    report = BenchReport([Figure("produce", "raw (baseline)", 100.0, "ev/s", 100.0),
                          Figure("produce", "kappa", 80.0, "ev/s", 100.0),
                          Figure("job", "Quix Streams", None, "", note="not run: missing")], META)
    table = report.table()
    for header in SECTIONS.values():
        assert f"== {header}" in table
    assert "0.80" in table and "1.00" in table
    assert "not run: missing" in table
    assert table.count("not run: not selected") == len(SECTIONS) - 2


def test_markdown_is_one_row_per_figure() -> None:
    report = BenchReport([Figure("sink", "chdb", 1_000_000.0, "rows/s", 1_000_000.0)], META)
    md = report.markdown()
    assert md.startswith("# kappa bench 20260101T000000")
    assert "| sink | chdb | 1,000,000 rows/s | 1.00 |" in md


def test_the_measurements_are_the_checkout_script_with_the_same_options() -> None:
    argv = suite_argv(300, True, ["produce", "rss"])
    assert argv[1:] == [str(SUITE), "--events", "300", "--quick", "--only", "produce", "--only", "rss"]
    assert SUITE.is_file() and SUITE.parent.name == "benchmarks"


def test_without_a_checkout_kappa_bench_says_so_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(KappaError, match="source checkout") as err:
        run_suite(suite=tmp_path / "benchmarks" / "suite.py")
    assert "\n" not in str(err.value)
