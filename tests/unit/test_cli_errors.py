"""Every CLI command, run as a user would: help works, and a user's mistake is one error line,
a non-zero exit and no traceback. No stack is needed: each case fails before anything connects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kappa.runlock import RunLock
from kappa.stack.process import free_port

KAPPA = str(Path(sys.executable).with_name("kappa"))
COMMANDS = ["up", "down", "status", "produce", "run", "query", "replay", "demo", "schemas", "bench"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_")}
    env["KAPPA_HOME"] = str(home)
    env.update(extra)
    return env


def _kappa(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAPPA, *args], env=env, capture_output=True, text=True, timeout=120)


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a failed command (click's usage lines around it allowed)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [ln for ln in proc.stderr.splitlines() if ln.lower().startswith("error")]
    assert len(errors) == 1, out
    return errors[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def stopped(home: Path) -> Path:
    """A KAPPA_HOME whose stack ran once and is stopped now (ports recorded, no pids)."""
    home.mkdir(parents=True)
    (home / "stack.json").write_text(json.dumps(
        {"ports": {"kafka": free_port(), "controller": free_port(), "registry": free_port()}, "pids": {}}))
    return home


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command: str, home: Path) -> None:
    proc = _kappa([command, "--help"], _env(home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Usage:" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_produce_help_speaks_in_user_terms(home: Path) -> None:
    text = _kappa(["produce", "--help"], _env(home)).stdout
    assert ".py" not in text, text


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:8081", "localhost:8081", "http://:8081", "http://h:port"])
def test_bad_registry_url(url: str, home: Path) -> None:
    env = _env(home, KAPPA_SCHEMA_REGISTRY_URL=url, KAPPA_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    line = _one_error(_kappa(["produce", "--generator", "ecommerce", "--events", "5"], env))
    assert "not an http(s) URL" in line and repr(url) in line, line


def test_unknown_topic(home: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"a": 1}\n')
    line = _one_error(_kappa(["produce", "--file", str(rows), "--topic", "nosuch"], _env(home)))
    assert "no schema is declared for topic 'nosuch'" in line and ".py" not in line, line


def test_missing_file(home: Path) -> None:
    line = _one_error(_kappa(["produce", "--file", str(home / "missing.jsonl"), "--topic", "orders"], _env(home)))
    assert "does not exist" in line, line


@pytest.mark.parametrize("args", [
    ["produce", "--generator", "ecommerce", "--events", "5"],
    ["run", "--until-drained"],
    ["replay", "--version", "v2"],
    ["schemas", "register"],
    ["bench", "--only", "produce"],
])
def test_stopped_stack_says_run_up(args: list[str], stopped: Path) -> None:
    line = _one_error(_kappa(args, _env(stopped)))
    assert "is stopped" in line and "run `kappa up`" in line, line


def test_no_stack_at_all(home: Path) -> None:
    line = _one_error(_kappa(["produce", "--generator", "ecommerce"], _env(home)))
    assert "run `kappa up`" in line, line


@pytest.mark.parametrize("args", [
    ["produce", "--events", "many", "--generator", "ecommerce"],
    ["produce"],
    ["produce", "--file", "x.jsonl", "--generator", "ecommerce"],
    ["query"],
    ["query", "SELECT 1", "--format", "xml"],
    ["run", "--workers", "two"],
    ["replay"],
    ["status", "--nope"],
    ["up", "--timeout", "soon"],
    ["bench", "--only", "nothing"],
    ["demo", "--events", "-"],
    ["nosuchcommand"],
])
def test_bad_flags(args: list[str], home: Path) -> None:
    _one_error(_kappa(args, _env(home)))


def test_run_with_unreachable_registry_fails_up_front(home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    env = _env(home, KAPPA_SCHEMA_REGISTRY_URL=url, KAPPA_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    line = _one_error(_kappa(["run", "--until-drained"], env))
    assert f"schema registry at {url} does not answer" in line, line


def test_second_run_is_refused_and_status_shows_the_first(home: Path) -> None:
    env = _env(home, KAPPA_SCHEMA_REGISTRY_URL=f"http://127.0.0.1:{free_port()}/apis/ccompat/v7",
               KAPPA_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    lock = RunLock(home)  # what a running `kappa run` holds (this process stands in for it)
    lock.acquire("v7")
    lock.child("sink", os.getpid())
    lock.child("worker-0", os.getpid())
    try:
        line = _one_error(_kappa(["run"], env))
        assert f"another `kappa run` (pid {os.getpid()}, version v7) is running" in line, line
        rows = json.loads(_kappa(["status", "--json"], env).stdout)
        pipeline = {r["name"]: r for r in rows if r["kind"] == "pipeline"}
        assert pipeline["run"]["pid"] == os.getpid() and pipeline["run"]["healthy"]
        assert {"sink", "worker-0"} <= set(pipeline)
        assert "1 worker(s) + sink" in _kappa(["status"], env).stdout
    finally:
        lock.release()
    rows = json.loads(_kappa(["status", "--json"], env).stdout)
    assert [r for r in rows if r["kind"] == "pipeline"] == []
