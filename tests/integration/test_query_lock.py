"""``kappa query`` in a loop never fails, and never makes the pipeline fail, on the embedded
engine's directory lock: across a ``kappa run`` start and stop and a whole ``kappa replay --swap``.

Before: one query of ~100 failed during a swap (endpoint file gone, directory still locked), and
a replay started beside a query loop failed at once with "a running sink holds the directory".
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Stack

pytestmark = pytest.mark.integration

KAPPA = str(REPO / ".venv" / "bin" / "kappa")


def test_a_query_loop_across_run_and_replay_with_swap(stack: Stack, tmp_path: Path) -> None:
    prefix = f"ql{os.getpid()}{time.time_ns() % 10**6}."
    env = {**stack.env(tmp_path), "KAPPA_TOPIC_PREFIX": prefix}
    v1, v2 = f"{prefix.rstrip('.')}v1", f"{prefix.rstrip('.')}v2"

    def kappa(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KAPPA, *args], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    assert kappa("produce", "--generator", "ecommerce", "--events", "600", "--seed", "5").returncode == 0
    first = kappa("run", "--until-drained", "--version", v1)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    answers: list[subprocess.CompletedProcess[str]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            answers.append(kappa("query", "SELECT count() AS n FROM kappa.orders", "--format", "csv",
                                 timeout=120))
            time.sleep(0.2)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        time.sleep(2)
        # a run that starts and stops under the loop (nothing new to do: it drains at once)
        again = kappa("run", "--until-drained")
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        replayed = kappa("replay", "--from", "earliest", "--version", v2, "--swap")
        assert replayed.returncode == 0, replayed.stdout[-3000:] + replayed.stderr[-3000:]
        time.sleep(2)
    finally:
        stop.set()
        t.join(150)
    failed = [a for a in answers if a.returncode != 0]
    assert len(answers) >= 10
    assert not failed, f"{len(failed)} of {len(answers)} queries failed; first: {failed[0].stderr[-500:]}"
    counts = {a.stdout.splitlines()[-1] for a in answers}
    assert len(counts) == 1, counts  # the same orders before and after the swap
