"""``kappa query`` on the real embedded engine (chdb on a temp directory, no broker needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import requests

from sinks.backends import endpoint_file
from sinks.embedded import EmbeddedBackend

REPO = Path(__file__).resolve().parents[2]
KAPPA = str(REPO / ".venv" / "bin" / "kappa")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    with EmbeddedBackend(home / "clickhouse") as b:
        b.execute("CREATE DATABASE IF NOT EXISTS kappa")
        b.execute("CREATE TABLE kappa.raw (s String) ENGINE = MergeTree ORDER BY s")
        b.execute("INSERT INTO kappa.raw VALUES (unhex('FF41')), ('plain é')")
    return home


def kappa_query(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_")}
    return subprocess.run([KAPPA, "query", *args], env={**env, "KAPPA_HOME": str(home)}, cwd=REPO,
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT file('/etc/passwd')",
    "DESCRIBE TABLE file('/etc/passwd', 'CSV')",
    "SELECT * FROM url('http://127.0.0.1:8081/', 'LineAsString')",
    "SELECT * FROM executable('id', 'LineAsString', 'x String')",
    "SELECT 1 FROM kappa.raw WHERE s IN (SELECT * FROM remote('127.0.0.1:9000', system.one))",
])
def test_query_refuses_what_reaches_outside(home: Path, sql: str) -> None:
    res = kappa_query(home, sql)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert "pipeline's databases only" in err and "Traceback" not in err
    assert b"root:" not in res.stdout


def test_engine_readonly_refuses_table_functions_by_itself(home: Path) -> None:
    """The connection behind kappa query is readonly=1: the engine refuses file() without the guard."""
    b = EmbeddedBackend(home / "clickhouse", readonly=True)
    try:
        with pytest.raises(Exception, match="readonly"):
            b.query("SELECT * FROM file('/etc/passwd', 'LineAsString')")
    finally:
        b.close()


@pytest.mark.parametrize("fmt", ["table", "csv", "tsv", "json"])
def test_any_byte_prints(home: Path, fmt: str) -> None:
    res = kappa_query(home, "SELECT s FROM kappa.raw ORDER BY s", "--format", fmt)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode("utf-8")  # valid UTF-8 whatever the data
    assert "plain é" in out and "\\xffA" in out
    if fmt == "json":
        assert out.endswith("\n")
        assert json.loads(out) == [{"s": "plain é"}, {"s": "\\xffA"}]
    bare = kappa_query(home, "SELECT unhex('FF') AS b", "--format", fmt)
    assert bare.returncode == 0 and "\\xff" in bare.stdout.decode(), bare.stderr


def test_syntax_error_is_the_engines(home: Path) -> None:
    res = kappa_query(home, "SELEC 1")
    err = res.stderr.decode()
    assert res.returncode == 1 and "syntax error" in err.lower() and "refused" not in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    write = kappa_query(home, "INSERT INTO kappa.raw VALUES ('x')")
    assert write.returncode == 1 and "INSERT statements are refused" in write.stderr.decode()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json"])
def test_large_results_stream_one_header(home: Path, fmt: str) -> None:
    res = kappa_query(home, "SELECT number FROM numbers(300000)", "--format", fmt)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    if fmt == "json":
        assert [r["number"] for r in json.loads(out)] == list(range(300000))
    else:
        lines = out.splitlines()
        assert lines.count('"number"' if fmt == "csv" else "number") == 1
        assert lines[1:] == [str(i) for i in range(300000)]


def test_endpoint_requires_the_token_from_a_0600_file(tmp_path: Path, home: Path) -> None:
    from kappa.settings import Settings
    from sinks.endpoint import TOKEN_HEADER, QueryEndpoint
    from sinks.query import query

    backend = EmbeddedBackend(home / "clickhouse", readonly=True)
    settings = Settings(home=tmp_path)
    ep = QueryEndpoint(backend, endpoint_file(settings))
    url = ep.start()
    try:
        assert endpoint_file(settings).stat().st_mode & 0o777 == 0o600
        anon = requests.post(f"{url}/query", data=b"SELECT 1", timeout=10)
        assert anon.status_code == 401
        wrong = requests.post(f"{url}/query", data=b"SELECT 1", headers={TOKEN_HEADER: "x"}, timeout=10)
        assert wrong.status_code == 401
        ok = requests.post(f"{url}/query", data=b"SELECT count() FROM kappa.raw",
                           headers={TOKEN_HEADER: ep.token}, timeout=10)
        assert ok.status_code == 200 and ok.content == b"2\n"
        bad = requests.post(f"{url}/query", data=b"SELECT file('/etc/passwd')",
                            headers={TOKEN_HEADER: ep.token}, timeout=10)
        assert bad.status_code == 403
        assert json.loads(query(settings, "SELECT count() AS n FROM kappa.raw", "json")) == [{"n": 2}]
    finally:
        ep.stop()
        backend.close()
