"""The embedded engine's directory lock: who holds it is named, and a short hold is waited out.

A ``kappa query`` opens the directory for one query; a sink or a replay starting meanwhile used
to fail at once ("Cannot lock file .../status") with a message blaming a running sink. Real chdb
in a child process holds the directory here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sinks.embedded import EmbeddedBackend, LockedByAnotherProcess

HOLD = """
import sys, time, chdb
conn = chdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.close()
"""


def _hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_short_hold_is_waited_out(tmp_path: Path) -> None:
    EmbeddedBackend(tmp_path / "ch").close()  # the directory exists, as after a first run
    holder = _hold(tmp_path / "ch", 2.0)
    try:
        backend = EmbeddedBackend(tmp_path / "ch")  # read-write, as the sink or a replay opens it
        try:
            assert backend.query("SELECT 1").strip() == b"1"
        finally:
            backend.close()
    finally:
        holder.wait(30)


def test_a_long_hold_names_the_real_holder(tmp_path: Path) -> None:
    EmbeddedBackend(tmp_path / "ch").close()
    holder = _hold(tmp_path / "ch", 30.0)
    try:
        with pytest.raises(LockedByAnotherProcess, match=f"held by pid {holder.pid} "):
            EmbeddedBackend(tmp_path / "ch", wait_s=1.0)
    finally:
        holder.kill()
        holder.wait(30)
