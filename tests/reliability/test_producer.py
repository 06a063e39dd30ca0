"""kill -9 of ``kappa produce`` mid-publish, then the same command again.

What reconciliation means here: the idempotent producer only removes duplicates *within* one
producer session (librdkafka retries); a re-run is a new session that republishes everything,
so the orders topic holds the killed run's prefix **plus** one whole publish. The pipeline's
dedupe by order_id (first wins) must make ``kappa.orders`` and ``kappa.revenue_per_minute``
equal one clean publish (the manifest), while every *invalid* message that was published twice
is rejected twice (two rows, two sources): counted from the log itself,
published (log) = landed + rejected + dropped duplicates, with landed = the manifest's valid
unique orders and dropped duplicates = the manifest's duplicates + the republished valid prefix.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from kappa.runner import Pipeline
from tests.reliability.conftest import ORDERS, SEED, Pipe, assert_orders_match, count_orders_log, rng, start_ms
from tests.support.ecommerce import GeneratorConfig, generate

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def test_kill9_producer_then_rerun_same_seed(make_pipe: Callable[..., Pipe]) -> None:
    r = rng("producer")
    pipe = make_pipe()
    start = start_ms()
    cfg = GeneratorConfig(events=ORDERS, seed=SEED, start_ms=start,
                          grace_ms=int(pipe.settings().window_grace_seconds * 1000))
    records, manifest = generate(cfg)
    argv = ["produce", "--generator", "ecommerce", "--events", str(ORDERS), "--seed", str(SEED),
            "--start", str(start)]
    runner = pipe.run(until_drained=False)  # the pipeline consumes while the producer dies
    names = [pipe.inputs.topic("users"), pipe.inputs.topic("orders"), pipe.inputs.topic("order_labels")]
    pipe.wait_until("input topics", lambda: all(pipe.ends(t) >= 0 for t in names), runner)

    at = r.uniform(0.2, 0.8)
    first = pipe.spawn([*argv, "--rate", "2000"], "produce-1.log")
    target = int(at * len(records))
    pipe.wait_until(f"{target} published", lambda: sum(map(pipe.ends, names)) >= target, first,
                    every=0.02)
    pipe.kill(first)
    prefix = sum(map(pipe.ends, names))
    print(f"killed kappa produce at {at:.0%}: {prefix:,} of {len(records):,} events in Kafka")
    assert 0 < prefix < len(records)

    second = pipe.spawn(argv, "produce-2.log")
    assert second.wait(120) == 0, (pipe.home / "produce-2.log").read_text()
    assert sum(map(pipe.ends, names)) == prefix + len(records)

    # until drained (stable twice), then a clean SIGTERM shutdown of `kappa run`
    probe = Pipeline(pipe.settings(), pipe.version, echo=lambda _: None)
    deadline, stable, last = time.monotonic() + 300, 0, None
    while stable < 2:
        assert runner.poll() is None and time.monotonic() < deadline, pipe.tails()
        state = probe.state()
        ends = (state.processors.end, state.sink.end)
        stable = stable + 1 if state.drained and ends == last else 0
        last = ends
        time.sleep(2)
    runner.terminate()
    assert runner.wait(90) == 0, pipe.tails()

    log = count_orders_log(pipe)
    assert log.unique_valid == manifest.valid_unique_orders
    assert_orders_match(pipe, manifest)
    rejected = pipe.rejected_by_code()
    assert rejected == log.invalid
    assert sum(rejected.values()) > manifest.invalid_total or prefix <= manifest.users
    n_sources = pipe.q("SELECT uniqExact(source) AS n FROM kappa.rejected_events")[0]["n"]
    assert int(n_sources) == sum(rejected.values())  # each bad message once, by its offset
    landed = manifest.valid_unique_orders
    assert log.published == landed + sum(rejected.values()) + log.duplicates
    republished = log.published - manifest.orders_published
    assert log.duplicates == manifest.duplicates + republished - (sum(log.invalid.values())
                                                                  - manifest.invalid_total)
    print(f"orders log: published {log.published:,} = landed {landed:,} + rejected "
          f"{sum(rejected.values()):,} + duplicates {log.duplicates:,} "
          f"(manifest: {manifest.orders_published:,} = {landed:,} + {manifest.invalid_total} + "
          f"{manifest.duplicates}; {republished:,} orders republished)")
