"""A worker's directory lock: a worker of the run before that is still stopping is waited for."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kappa.errors import ConfigError
from stream_processors.worker import claim_dir

HOLD = """
import fcntl, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(tmp_path: Path, seconds: float) -> subprocess.Popen[str]:
    (tmp_path / "worker-0").mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "worker-0" / ".lock"), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_stopping_worker_is_waited_for(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 1.5)
    t0 = time.monotonic()
    path, lock = claim_dir(tmp_path, 0, wait_s=30)
    assert path == tmp_path / "worker-0" and time.monotonic() - t0 >= 1.0
    assert (path / ".lock").read_text().strip() == str(__import__("os").getpid())
    lock.close()
    proc.wait(10)


def test_a_worker_that_does_not_stop_names_the_directory(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 30)
    try:
        with pytest.raises(ConfigError, match="worker-0 is locked by another running worker"):
            claim_dir(tmp_path, 0, wait_s=0.5)
        path, lock = claim_dir(tmp_path, None)  # no number given: the next free directory, no wait
        assert path == tmp_path / "worker-1"
        lock.close()
    finally:
        proc.kill()
        proc.wait(10)
