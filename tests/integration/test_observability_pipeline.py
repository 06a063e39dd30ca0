"""The real pipeline under a real Prometheus: dashboards and alerts have data, counters agree with ClickHouse."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kappa.runner import Pipeline
from kappa.settings import Settings
from kappa.stack.prometheus import LocalPrometheus
from sinks.query import query_rows
from tests.conftest import Stack, stop_group
from tests.integration.test_observability import wait_for
from tests.support.ecommerce import GeneratorConfig, generate
from tests.unit.test_dashboards import expressions

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))
START_MS = 1_790_000_000_000
EVENTS = 1500


def _value(prom: LocalPrometheus, expr: str) -> float:
    rows = prom.query(expr)
    return float(rows[0]["value"][1]) if rows else 0.0


def test_real_pipeline_metrics(stack: Stack, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    prefix, version = f"obs{run}.", f"o{run}"
    settings = stack.settings(home=tmp_path, topic_prefix=prefix, version=version)
    env = stack.env(tmp_path)
    env.update(KAPPA_TOPIC_PREFIX=prefix, KAPPA_VERSION=version)
    _, manifest = generate(GeneratorConfig(events=EVENTS, seed=5, start_ms=START_MS))

    prom = LocalPrometheus.start(Settings(home=tmp_path), scrape_interval="1s")
    runner = subprocess.Popen([KAPPA, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        # a slow, paced producer stays alive (and scraped) while the dashboards are checked
        producer = subprocess.Popen([KAPPA, "produce", "--generator", "ecommerce", "--events", str(EVENTS),
                                     "--seed", "5", "--start", str(START_MS), "--rate", "120"],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # annotations are event filters (e.g. "drift detections changed > 0"): empty means "no event"
        exprs = [(w, e) for w, e in expressions() if " annotation " not in w]
        deadline = time.monotonic() + 90
        while True:
            empty = [f"{where}: {expr}" for where, expr in exprs if not prom.query(expr)]
            if not empty or time.monotonic() > deadline or producer.poll() is not None:
                break
            time.sleep(2)
        assert not empty, "dashboard queries without data on a real run:\n" + "\n".join(empty)
        for group in prom.api("rules")["groups"]:
            for rule in group["rules"]:
                assert rule["health"] in ("ok", "unknown"), (rule["name"], rule.get("lastError"))
        assert _value(prom, "sum(kappa_producer_events_total)") > 0
        # the default pipeline's name on every series of the run (kappa.metrics.PipelineLabel)
        assert not prom.query('{__name__=~"kappa_.+", pipeline!="ecommerce"}')
        assert _value(prom, 'count({__name__=~"kappa_.+", pipeline="ecommerce"})') > 20
        _, err = producer.communicate(timeout=120)
        assert producer.returncode == 0, err

        probe = Pipeline(settings, version, serve_metrics=False)
        wait_for(lambda: probe.state().drained, "the pipeline to drain", timeout=240, every=2)
        expected_rejected = sum(manifest.invalid.values())
        wait_for(lambda: _value(prom, 'sum(kappa_rejected_events_total{stage="processor"})') == expected_rejected,
                 "Prometheus to see every rejection", timeout=30)
        landed = query_rows(settings, "SELECT count() AS n FROM kappa.rejected_events WHERE stage = 'processor'")
        assert int(landed[0]["n"]) == expected_rejected  # counter == rows in kappa.rejected_events
        assert _value(prom, "sum(kappa_processor_duplicates_total)") == manifest.duplicates
        orders = int(query_rows(settings, "SELECT count() AS n FROM kappa.orders")[0]["n"])
        assert orders == manifest.valid_unique_orders
        assert _value(prom, 'sum(kappa_sink_rows_total{table="orders"})') >= orders
    finally:
        stop_group(runner, 90)
        prom.stop()
