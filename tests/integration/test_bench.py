"""``kappa bench`` end to end on the smallest configuration: it runs, prints every section, writes its files.

No timing assertions: the figures are noisy by nature; this proves the command and its report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kappa.bench import SECTIONS
from tests.conftest import Stack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_bench_smallest_configuration_prints_every_section(stack: Stack, tmp_path: Path) -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "kappa"), "bench", "--events", "300",
         "--only", "produce", "--only", "freshness", "--only", "rss"],
        cwd=REPO, env=stack.env(tmp_path), capture_output=True, text=True, timeout=420, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    for header in SECTIONS.values():
        assert f"== {header}" in out.stdout
    assert "raw confluent-kafka produce, pre-encoded bytes (baseline)" in out.stdout
    assert "freshness p99" in out.stdout
    assert "not run: not selected" in out.stdout  # the unselected sections still show up
    assert "not run: RuntimeError" not in out.stdout and "not run: KappaError" not in out.stdout, out.stdout
    written = sorted((tmp_path / "bench").glob("*.json"))
    assert len(written) == 1
    data = json.loads(written[0].read_text())
    sections = {f["section"] for f in data["figures"]}
    assert {"produce", "freshness", "rss"} <= sections
    assert all(f["ratio"] is not None for f in data["figures"] if f["section"] == "produce")
    assert written[0].with_suffix(".md").read_text().startswith("# kappa bench")
    assert not list((tmp_path / "bench").glob("work-*")), "the working directory is removed"
