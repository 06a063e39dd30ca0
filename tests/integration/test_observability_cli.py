"""``kappa up --with-prometheus`` / ``status`` / ``down`` as a user runs them (real processes)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from kappa.settings import Settings
from kappa.stack import prometheus
from kappa.stack.process import free_port, is_ours
from tests.conftest import REPO, Stack
from tests.integration.test_observability import spawn_emitter, stop_emitter, wait_for

pytestmark = pytest.mark.integration
KAPPA = str(REPO / ".venv" / "bin" / "kappa")


def _kappa(stack: Stack, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAPPA, *args], env=stack.env(home), capture_output=True, text=True,
                          timeout=120, check=False)


def test_up_with_prometheus_status_lists_endpoints_and_down_stops_it(stack: Stack, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()  # never 9090: other runs on this host may hold it
    (home / "stack.json").write_text(json.dumps({"ports": {"prometheus": port}}))
    settings = Settings(home=home)

    first = _kappa(stack, home, "up", "--with-prometheus", "--timeout", "60")
    assert first.returncode == 0, first.stdout + first.stderr
    pid = json.loads((home / "stack.json").read_text())["pids"]["prometheus"]
    try:
        assert is_ours(pid, prometheus.marker(settings))
        assert prometheus.healthy(f"http://127.0.0.1:{port}")
        again = _kappa(stack, home, "up", "--with-prometheus")  # idempotent: same process
        assert again.returncode == 0 and json.loads((home / "stack.json").read_text())["pids"]["prometheus"] == pid

        emitter = spawn_emitter(home, "sink")
        try:
            wait_for(lambda: list((home / "metrics" / "targets").glob("sink-*.json")), "the sink to register")
            status = _kappa(stack, home, "status")
            assert status.returncode == 0, status.stdout + status.stderr
            assert f"http://127.0.0.1:{port}" in status.stdout and "prometheus" in status.stdout
            line = next(ln for ln in status.stdout.splitlines() if ln.strip().startswith("sink "))
            address = line.split("http://")[1].removesuffix("/metrics")
            wait_for(lambda: prometheus.query(f"http://127.0.0.1:{port}",
                                              f'up{{job="kappa", instance="{address}"}} == 1'),
                     "the Prometheus of `kappa up` to scrape the sink it lists", timeout=30)
        finally:
            stop_emitter(emitter)

        # a dead Prometheus makes `kappa status` unhealthy (exit 1)
        subprocess.run(["kill", f"-{signal.SIGSTOP.value}", str(pid)], check=True)
        try:
            assert _kappa(stack, home, "status").returncode == 1
        finally:
            subprocess.run(["kill", f"-{signal.SIGCONT.value}", str(pid)], check=True)
    finally:
        down = _kappa(stack, home, "down")
    assert down.returncode == 0 and "prometheus" in down.stdout, down.stdout + down.stderr
    assert not is_ours(pid, prometheus.marker(settings))
