"""``kappa query``: through the sink's endpoint while it runs, directly after; writes refused."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from sinks.query import endpoint_url
from tests.conftest import REPO, Stack
from tests.integration.test_sinks import produce_outputs, sink_process, wait_landed

pytestmark = pytest.mark.integration

KAPPA = str(REPO / ".venv" / "bin" / "kappa")


def kappa_query(stack: Stack, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAPPA, "query", *args], env=stack.env(home), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("write", [
    "INSERT INTO kappa.rejected_events (source) VALUES ('x')",
    "DROP TABLE kappa.orders",
    "SELECT 1; DROP DATABASE kappa",
])
def test_kappa_query_during_and_after_the_sink(stack: Stack, tmp_path: Path, write: str) -> None:
    version = "t" + uuid.uuid4().hex[:10]
    exp = produce_outputs(stack, version, n_orders=120)
    proc = sink_process(stack, tmp_path, version)
    try:
        wait_landed(stack, version)
        settings = stack.settings(home=tmp_path)
        assert endpoint_url(settings) is not None  # the query below goes through the endpoint
        during = kappa_query(stack, tmp_path, "SELECT count() AS n FROM kappa.orders", "--format", "json")
        assert during.returncode == 0, during.stderr
        assert json.loads(during.stdout) == [{"n": len(exp.orders)}]
        refused = kappa_query(stack, tmp_path, write)
        assert refused.returncode == 1 and "read-only" in refused.stderr + refused.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert endpoint_url(stack.settings(home=tmp_path)) is None  # now the directory is opened directly
    after = kappa_query(stack, tmp_path, "SELECT currency, count() AS n FROM kappa.orders "
                        "GROUP BY currency ORDER BY currency", "--format", "csv")
    assert after.returncode == 0, after.stderr
    eur = sum(1 for r in exp.orders.values() if r["currency"] == "EUR")
    assert after.stdout.splitlines() == ['"currency","n"', f'"EUR",{eur}',
                                         f'"USD",{len(exp.orders) - eur}']
    table = kappa_query(stack, tmp_path, "SELECT count() AS n FROM kappa.rejected_events")
    assert table.returncode == 0 and str(sum(exp.rejected.values())) in table.stdout
    still = kappa_query(stack, tmp_path, write)
    assert still.returncode == 1 and "read-only" in still.stderr + still.stdout
    count = kappa_query(stack, tmp_path, "SELECT count() AS n FROM kappa.orders", "--format", "json")
    assert json.loads(count.stdout) == [{"n": len(exp.orders)}]


def test_engine_readonly_refuses_what_the_guard_lets_through(stack: Stack, tmp_path: Path) -> None:
    """Defence in depth: a SELECT that would write (via a table function) hits readonly=1."""
    from sinks.backends import open_backend

    settings = stack.settings(home=tmp_path)
    with open_backend(settings) as backend:
        backend.execute("CREATE DATABASE IF NOT EXISTS kappa")
    res = kappa_query(stack, tmp_path, "SELECT * FROM system.numbers LIMIT 3 "
                      "SETTINGS readonly = 0", "--format", "csv")
    assert res.returncode == 1 and "readonly" in (res.stderr + res.stdout).lower()
