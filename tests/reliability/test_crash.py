"""kill -9 under ``kappa run``: the whole process group, one worker, the sink, one of two workers.

Each test runs a new pipeline version over the shared session dataset, kills at a reproducible
random point (seeded per scenario), lets ``kappa run --until-drained`` finish, then requires
the views to reconcile with the generator manifest, hold no duplicate order, and equal the clean
run's views row for row (fraud scores and model quality included).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.reliability.conftest import Dataset, Pipe, assert_same_views, kill9, rng

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _check(pipe: Pipe, dataset: Dataset, clean: dict[str, Any]) -> None:
    for line in pipe.reconcile(dataset.manifest)[:3]:
        print(line)
    pipe.no_duplicates()
    assert_same_views(pipe.snapshot(), clean)


def test_kill9_whole_run_twice_then_restart(make_pipe: Callable[..., Pipe], dataset: Dataset,
                                            clean: dict[str, Any]) -> None:
    """SIGKILL the process group of ``kappa run`` twice mid-stream; a third run drains exactly."""
    r = rng("whole-run")
    expected = dataset.manifest.valid_unique_orders
    pipe = make_pipe(dataset.prefix)
    first, second = r.uniform(0.1, 0.5), r.uniform(0.5, 0.95)

    proc = pipe.run()
    pipe.wait_emitted(first, expected, proc)
    pipe.kill(proc)
    emitted, landed = pipe.ends(pipe.outputs.enriched), pipe.sink_committed()
    print(f"kill 1 at {first:.0%} emitted: {emitted} enriched emitted, {landed} landed")
    assert landed < expected, "the first kill came after everything had landed"

    proc = pipe.run()
    target = int(second * expected)
    pipe.wait_until(f"{target} landed", lambda: pipe.sink_committed() >= target, proc)
    pipe.kill(proc)
    print(f"kill 2 at {second:.0%} landed: {pipe.sink_committed()} landed")

    pipe.wait(pipe.run())
    _check(pipe, dataset, clean)


@pytest.mark.parametrize("child", ["worker-0", "sink"])
def test_kill9_one_child_supervised(make_pipe: Callable[..., Pipe], dataset: Dataset,
                                    clean: dict[str, Any], child: str) -> None:
    """SIGKILL one child while ``kappa run`` supervises: it is restarted, results are exact."""
    r = rng(f"child-{child}")
    expected = dataset.manifest.valid_unique_orders
    pipe = make_pipe(dataset.prefix)
    at = r.uniform(0.2, 0.8)
    proc = pipe.run()
    if child == "sink":  # mid-stream for the sink: some landed, not all
        target = int(at * expected)
        pipe.wait_until(f"{target} landed", lambda: pipe.sink_committed() >= target, proc, every=0.02)
    else:
        pipe.wait_emitted(at, expected, proc)
    kids = pipe.children(proc)
    kill9(kids[child])
    print(f"killed {child} at {at:.0%}: {pipe.ends(pipe.outputs.enriched)} emitted, "
          f"{pipe.sink_committed()} landed")
    pipe.wait(proc)
    assert f"{child} exited with -9; restarting" in pipe.log()
    _check(pipe, dataset, clean)


def test_two_workers_one_killed(make_pipe: Callable[..., Pipe], dataset: Dataset,
                                clean: dict[str, Any]) -> None:
    """``--workers 2``; SIGKILL worker-1 mid-stream: the group rebalances, it comes back, exact."""
    r = rng("two-workers")
    expected = dataset.manifest.valid_unique_orders
    pipe = make_pipe(dataset.prefix)
    at = r.uniform(0.2, 0.8)
    proc = pipe.run("--workers", "2")
    pipe.wait_emitted(at, expected, proc)
    kids = pipe.children(proc)
    assert {"sink", "worker-0", "worker-1"} <= kids.keys(), kids
    kill9(kids["worker-1"])
    t_kill = time.monotonic()
    print(f"killed worker-1 at {at:.0%}: {pipe.ends(pipe.outputs.enriched)} emitted")
    pipe.wait(proc)
    assert "worker-1 exited with -9; restarting" in pipe.log()
    assert "worker-0 exited" not in pipe.log()
    print(f"drained {time.monotonic() - t_kill:.0f}s after the kill")
    _check(pipe, dataset, clean)
