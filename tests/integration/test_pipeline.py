"""End to end: generator -> Kafka -> `kappa run --until-drained` -> ClickHouse views == manifest."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from producers.base import Publisher
from sinks.query import query_rows
from tests.conftest import Stack
from tests.support.ecommerce import GeneratorConfig, generate, publish_events, reconcile

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))
START_MS = 1_790_000_000_000  # fixed event-time start: same bytes on every run


def test_generator_run_until_drained_views_equal_manifest(stack: Stack, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    settings = stack.settings(home=tmp_path, topic_prefix=f"e2e{run}.", version=f"e{run}")
    events, manifest = generate(GeneratorConfig(events=2500, seed=11, start_ms=START_MS, drift_at=1250))
    with Publisher(settings, stack.kafka_bootstrap) as pub:
        publish_events(pub, events)
        pub.flush()

    env = stack.env(tmp_path)
    env.update(KAPPA_TOPIC_PREFIX=settings.topic_prefix, KAPPA_VERSION=settings.version)
    proc = subprocess.run([KAPPA, "run", "--until-drained"], env=env, capture_output=True, text=True,
                          timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sink lag 0" in proc.stdout

    report = reconcile(settings, manifest.to_dict())
    assert report.reconciled, "\n".join(report.lines)

    # rejected by reason, exactly as the generator made them
    by_reason = {r["code"]: int(r["n"]) for r in query_rows(
        settings, "SELECT splitByChar(':', reason)[1] AS code, count() AS n FROM kappa.rejected_events GROUP BY code")}
    assert by_reason == manifest.invalid
    # one row per order id, too-late orders landed but flagged
    row = query_rows(settings,
                     "SELECT count() AS n, uniqExact(order_id) AS u, countIf(late) AS late FROM kappa.orders")[0]
    assert int(row["n"]) == int(row["u"]) == manifest.valid_unique_orders
    assert int(row["late"]) == manifest.too_late
    late_ids = {r["order_id"] for r in query_rows(settings, "SELECT order_id FROM kappa.orders WHERE late")}
    assert late_ids == set(manifest.too_late_order_ids)
