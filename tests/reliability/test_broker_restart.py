"""Broker restart mid-stream, on a private single-node broker (the shared dev stack is untouched).

The test starts its own Kafka + registry with the local launcher (``kappa.stack.manager.up`` on
reserved ports in a tmp ``KAPPA_HOME``), runs ``kappa run --until-drained`` over a generator
run, SIGKILLs the broker once the processors are mid-stream, starts it again on the same ports
and data, and requires exact results (manifest reconciled, no duplicate order) and a pipeline
that survived it without losing a child. The private stack is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kappa.settings import Settings
from kappa.stack import manager
from tests.conftest import Stack, reserve_ports
from tests.reliability.conftest import Pipe, rng

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


@pytest.fixture
def private(tmp_path: Path) -> Iterator[tuple[Stack, Settings]]:
    home = tmp_path / "broker"
    reserve_ports(home)
    # explicit None: the suite's env points at the shared stack, which must stay untouched
    settings = Settings(home=home, kafka_bootstrap=None, schema_registry_url=None)
    try:
        manager.up(settings)
        ep = manager.endpoints(settings)
        yield Stack(ep.kafka_bootstrap, ep.schema_registry_url, home, "private"), settings
    finally:
        manager.down(settings)


def test_broker_killed_and_restarted_mid_stream(private: tuple[Stack, Settings],
                                                make_pipe: Callable[..., Pipe]) -> None:
    stack, settings = private
    pipe = make_pipe(stack_=stack)
    manifest = pipe.publish()
    proc = pipe.run()
    at = rng("broker").uniform(0.2, 0.7)
    pipe.wait_emitted(at, manifest.valid_unique_orders, proc)
    assert stack.kafka_bootstrap != os.environ.get("KAPPA_KAFKA_BOOTSTRAP"), "not a private broker"
    kafka_pid = json.loads(settings.stack_file.read_text())["pids"]["kafka"]
    os.kill(kafka_pid, signal.SIGKILL)
    t0 = time.monotonic()
    time.sleep(3)
    manager.up(settings)
    print(f"broker killed at {at:.0%} emitted, back after {time.monotonic() - t0:.0f}s")
    pipe.wait(proc)
    for line in pipe.reconcile(manifest)[:2]:
        print(line)
    pipe.no_duplicates()
    restarts = [line for line in pipe.log().splitlines() if "exited with" in line]
    print(f"child restarts during the outage: {restarts or 'none'}")
