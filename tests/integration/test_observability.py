"""Every dashboard query and alert rule against a real Prometheus scraping real Kappa processes.

The ``prometheus`` fixture runs Debian's Prometheus (kappa.stack.prometheus) on a free port,
scraping every second whatever registers under its ``KAPPA_HOME`` (file_sd). The
``metrics_source`` fixture is the swappable part: here, three emitter processes (producer,
processor, sink roles; run as ``python -m tests.integration.test_observability ROLE``) that
import kappa.metrics, serve it and update every metric with realistic labels, batched the way
the pipeline does. A full pipeline run can replace it: anything that calls
``kappa.metrics.serve`` with ``KAPPA_HOME`` set to the fixture's home is discovered.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kappa import metrics
from kappa.pipeline import DEFAULT, load
from kappa.settings import Settings
from kappa.stack.process import is_ours
from kappa.stack.prometheus import DEPLOY, LocalPrometheus, marker
from tests.unit.test_dashboards import expressions

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ROLES = ("producer", "processor", "sink")


@dataclass
class MetricsSource:
    """Processes exporting Kappa metrics into ``home``'s file_sd directory."""

    home: Path
    components: tuple[str, ...]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def spawn_emitter(home: Path, role: str) -> subprocess.Popen[bytes]:
    """Start one emitter process (a stand-in for a pipeline component) serving ``role``'s metrics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_")}
    env.update(KAPPA_HOME=str(home), PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "tests.integration.test_observability", role],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def stop_emitter(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def obs_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kappa-obs")


@pytest.fixture(scope="module")
def prometheus(obs_home: Path) -> Iterator[LocalPrometheus]:
    """A real Prometheus for this module: 127.0.0.1, free port, 1 s scrape and rule evaluation."""
    prom = LocalPrometheus.start(Settings(home=obs_home), scrape_interval="1s")
    try:
        yield prom
    finally:
        prom.stop()
    assert not is_ours(prom.pid, marker(prom.settings)), "Prometheus survived its fixture"


@pytest.fixture(scope="module")
def metrics_source(obs_home: Path) -> Iterator[MetricsSource]:
    """Swap point: emitter processes now; a pipeline run (same KAPPA_HOME) later."""
    source = MetricsSource(obs_home, ROLES)
    source.procs = [spawn_emitter(obs_home, role) for role in ROLES]
    try:
        wait_for(lambda: {c for c, _ in metrics.list_targets(obs_home)} >= set(ROLES),
                 "every emitter to register its endpoint", timeout=30)
        yield source
    finally:
        for proc in source.procs:
            stop_emitter(proc)


def _up_services(prom: LocalPrometheus) -> set[str]:
    return {r["metric"].get("service", "") for r in prom.query('up{job="kappa"} == 1')}


def test_prometheus_discovers_every_component(prometheus: LocalPrometheus, metrics_source: MetricsSource) -> None:
    wait_for(lambda: _up_services(prometheus) >= set(metrics_source.components),
             "Prometheus to scrape every registered component")
    targets = prometheus.api("targets")["activeTargets"]
    kappa = [t for t in targets if t["labels"]["job"] == "kappa"]
    assert {t["labels"]["service"] for t in kappa} >= set(metrics_source.components)
    assert all(t["health"] == "up" for t in kappa), [t["lastError"] for t in kappa]
    # the addresses Prometheus scrapes are the ones `kappa status` prints
    assert {t["labels"]["instance"] for t in kappa} == {a for _, a in metrics.list_targets(metrics_source.home)}


def test_every_series_carries_its_pipeline(prometheus: LocalPrometheus, metrics_source: MetricsSource) -> None:
    """The emitters run the default pipeline: each of their Kappa series and targets says so."""
    name = load(DEFAULT).name
    wait_for(lambda: _up_services(prometheus) >= set(metrics_source.components), "every component scraped")
    wait_for(lambda: prometheus.query('count({__name__=~"kappa_.+", job="kappa"}) > 50'), "the emitters' series")
    assert not prometheus.query(f'{{__name__=~"kappa_.+", pipeline!="{name}"}}')
    assert prometheus.query(f'count({{__name__=~"kappa_.+", pipeline="{name}"}})')
    assert not prometheus.query(f'up{{job="kappa", pipeline!="{name}"}}')  # from the target file
    assert not prometheus.query('{exported_pipeline!=""}'), "the target's label must not rename the sample's"


def test_every_dashboard_expression_returns_data(prometheus: LocalPrometheus,
                                                 metrics_source: MetricsSource) -> None:
    exprs = expressions()
    assert len(exprs) > 30

    def missing() -> list[str]:
        return [f"{where}: {expr}" for where, expr in exprs if not prometheus.query(expr)]

    # rates need two scrapes with increases; give the emitters a few seconds
    deadline = time.monotonic() + 45
    empty = missing()
    while empty and time.monotonic() < deadline:
        time.sleep(1)
        empty = missing()
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def _rules() -> list[dict[str, Any]]:
    return [r for f in sorted((DEPLOY / "rules").glob("*.yml"))
            for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def test_every_alert_rule_evaluates_without_error(prometheus: LocalPrometheus,
                                                  metrics_source: MetricsSource) -> None:
    wanted = {r["alert"] for r in _rules()}

    def evaluated() -> list[dict[str, Any]]:
        loaded = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        done = [r for r in loaded if not r["lastEvaluation"].startswith("0001")]
        return done if {r["name"] for r in done} >= wanted else []

    rules = wait_for(evaluated, "every alert rule to be evaluated once", timeout=30)
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, f"alert rules failing to evaluate: {bad}"
    for rule in _rules():
        prometheus.query(rule["expr"])  # raises with Prometheus' error on a bad expression
        # an alert about a metric nobody exports can never fire: each one must have series
        for name in set(re.findall(r"\bkappa_[a-z0-9_]+", rule["expr"])) | (
                {"up"} if re.search(r"\bup\{", rule["expr"]) else set()):
            assert prometheus.query(f'count({{__name__="{name}"}})'), f"{rule['alert']}: no series {name}"


def test_killed_component_shows_down_and_restart_prunes_it(prometheus: LocalPrometheus,
                                                          metrics_source: MetricsSource) -> None:
    """kill -9 leaves the registration behind, so Prometheus sees up == 0 (alert KappaTargetDown)."""
    home = metrics_source.home
    proc = spawn_emitter(home, "learner")
    try:
        wait_for(lambda: "learner" in _up_services(prometheus), "the learner to be scraped")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stale = home / "metrics" / "targets" / f"learner-{proc.pid}.json"
        assert stale.exists()
        assert "learner" not in {c for c, _ in metrics.list_targets(home)}
        wait_for(lambda: prometheus.query('up{job="kappa", service="learner"} == 0'),
                 "Prometheus to report the killed learner down")
        again = spawn_emitter(home, "learner")
        try:
            wait_for(lambda: not stale.exists(), "the restarted learner to prune the stale registration")
        finally:
            stop_emitter(again)
        # a clean exit unregisters (atexit): nothing of the learner is left
        wait_for(lambda: not list((home / "metrics" / "targets").glob("learner-*.json")),
                 "the clean exit to remove the learner's registration", timeout=10)
    finally:
        stop_emitter(proc)


# --- the emitter (a subprocess; see spawn_emitter) ------------------------------------------

TOPICS = ("orders", "users", "order_labels")
TABLES = ("orders", "revenue_per_minute", "model_quality", "rejected_events")
REASONS = {"orders": ("bad_amount", "bad_currency", "empty_order_id"), "users": ("bad_country",),
           "order_labels": ("empty_order_id",)}
MODELS = ("fraud", "phishing")


def _emit_batch(role: str, rng: random.Random, tick: int) -> None:
    """One batch of updates for ``role``: one ``inc(n)``/``observe`` per batch, as the pipeline does."""
    if role == "producer":
        for topic in TOPICS:
            metrics.PRODUCED.labels(topic, "delivered").inc(rng.randint(50, 200))
            metrics.PRODUCED.labels(topic, "rejected").inc(rng.randint(0, 3))
            metrics.PRODUCED.labels(topic, "failed").inc(rng.randint(0, 1))
        metrics.REJECTED.labels("producer", "orders", "unparseable_row").inc(rng.randint(0, 2))
    elif role == "processor":
        for topic in TOPICS:
            metrics.CONSUMED.labels(topic).inc(rng.randint(50, 200))
            for reason in REASONS[topic]:
                metrics.REJECTED.labels("validate", topic, reason).inc(rng.randint(1, 5))
            for partition in range(2):
                metrics.CONSUMER_LAG.labels("kappa-v1", topic, str(partition)).set(rng.randint(0, 500))
        metrics.DUPLICATES.labels("orders").inc(rng.randint(1, 4))
        metrics.LATE_EVENTS.labels("within_grace", "orders").inc(rng.randint(1, 3))
        metrics.LATE_EVENTS.labels("too_late", "orders").inc(rng.randint(1, 2))
        for agent in ("validate", "enrich", "windows", "learn"):
            metrics.BATCH_SECONDS.labels(agent).observe(rng.uniform(0.001, 0.2))
    elif role == "sink":
        for table in TABLES:
            rows = rng.randint(100, 2000)
            metrics.SINK_ROWS.labels(table).inc(rows)
            metrics.SINK_BATCH_ROWS.labels(table).observe(rows)
            metrics.SINK_BATCH_SECONDS.labels(table).observe(rng.uniform(0.005, 0.3))
            metrics.EVENT_LAG_SECONDS.labels(table).observe(rng.uniform(0.1, 3.0))
            metrics.SINK_INSERT_FAILURES.labels(table).inc(1 if tick % 5 == 0 else 0)
    else:  # learner
        for model in MODELS:
            metrics.MODEL_LABELLED.labels(model).inc(rng.randint(10, 50))
            metrics.MODEL_METRIC.labels(model, "roc_auc").set(rng.uniform(0.7, 0.95))
            metrics.MODEL_METRIC.labels(model, "accuracy").set(rng.uniform(0.8, 0.99))
            metrics.MODEL_METRIC.labels(model, "log_loss").set(rng.uniform(0.1, 0.5))
            metrics.DRIFT_DETECTIONS.labels(model).inc(1 if tick % 10 == 0 else 0)
    if role == "processor":  # the learner runs inside the processor in the pipeline
        _emit_batch("learner", rng, tick)


def emit(role: str) -> None:
    """Serve ``role``'s metrics and keep updating them until SIGTERM (clean exit: unregisters)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    metrics.serve(role)
    rng = random.Random(role)
    tick = 0
    while True:
        _emit_batch(role, rng, tick)
        tick += 1
        time.sleep(0.2)


if __name__ == "__main__":
    emit(sys.argv[1])
