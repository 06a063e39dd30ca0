"""ClickHouse outage during ``kappa run``: the embedded engine fails its first inserts.

``KAPPA_SINK_FAIL_INSERTS=N`` makes the sink's embedded backend fail its next N inserts (the
sink retries with backoff 0.1 s doubling to 5 s, pausing consumption meanwhile): an outage of
about 16 s for N = 8, while the processors keep producing every output. Required: the sink
recovers by itself, no loss and no duplicate (views equal the clean run's), and the sink's
memory stays bounded while its input backs up (RSS sampled every 0.2 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import Dataset, Pipe, assert_same_views

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

FAILURES = 8
RSS_BOUND_MB = 900
"""The sink's resident memory must stay below this through the outage (chdb + consumer queue
of at most 64 MB + one batch; a sink that buffered its whole backlog would not be bounded)."""


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def test_insert_failures_pause_then_recover_exactly(make_pipe: Callable[..., Pipe], dataset: Dataset,
                                                    clean: dict[str, Any]) -> None:
    pipe = make_pipe(dataset.prefix)
    proc = pipe.run(KAPPA_SINK_FAIL_INSERTS=str(FAILURES))
    pipe.wait_until("the sink", lambda: "sink" in pipe.children(proc), proc)
    sink = pipe.children(proc)["sink"]
    samples: list[float] = []
    sink_log = pipe.home / "logs" / f"sink-{pipe.version}.log"
    t0 = time.monotonic()
    while proc.poll() is None:
        samples.append(_rss_mb(sink))
        time.sleep(0.2)
    pipe.wait(proc)
    text = sink_log.read_text(errors="replace")
    failed = text.count("failed (")
    assert failed == FAILURES, text[-3000:]
    assert "recovered" in text
    assert "exited with" not in pipe.log(), "the sink died instead of riding out the outage"
    peak = max(samples)
    print(f"{failed} failed inserts, recovered; sink peak RSS {peak:.0f} MB over {len(samples)} "
          f"samples; drained in {time.monotonic() - t0:.0f}s")
    assert 0 < peak < RSS_BOUND_MB
    pipe.reconcile(dataset.manifest)
    pipe.no_duplicates()
    assert_same_views(pipe.snapshot(), clean)
