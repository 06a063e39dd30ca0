"""The fraud model is a function of the log: runs of the same pipeline on one log agree exactly.

One generator log (uuid topic prefix, own ``KAPPA_HOME``) is processed by full pipeline runs
(``kappa.runner.Pipeline``: Faust worker + sink, until drained), each as its own version, so each
has its own fraud merge topic, learner checkpoints and ClickHouse tables. Fraud scores,
``model_quality`` rows (every metric) and drift events must be identical row for row between:

* a run that went live while the log was half written: it drains (the learner's inputs go
  quiet, it publishes its provisional tail), then the rest is published and it continues;
* two clean runs over the whole log (what a replay does);
* a run whose worker is killed with SIGKILL mid-way and restarted by the runner (the learner
  resumes from its checkpoint)."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from kappa import topics
from kappa.kafka import client_config, ensure_topics
from kappa.runner import Pipeline
from kappa.settings import Settings
from schemas.serde import Decoder, Registry
from sinks.migrate import database
from sinks.query import query_rows
from tests.conftest import Stack

pytestmark = pytest.mark.integration

EVENTS, DRIFT_AT, SEED = 3000, 1500, 5
START_MS = 1_700_000_000_000


@dataclass
class Log:
    stack: Stack
    home: Path
    prefix: str
    paused: dict[str, list[dict[str, Any]]] | None = None
    """What version ``v("p")`` had published at its pause half-way."""

    def v(self, name: str) -> str:
        """Version ``name`` of this run: unique, since a version is bound to the log it first ran
        on (kappa.lineage) and a broker given by KAPPA_KAFKA_BOOTSTRAP outlives the session."""
        return f"{self.prefix.rstrip('.')}{name}"

    def settings(self) -> Settings:
        return self.stack.settings(home=self.home, topic_prefix=self.prefix)

    def run(self, version: str, pipeline: Pipeline | None = None) -> Pipeline:
        p = pipeline or Pipeline(self.settings(), version, echo=lambda _: None)
        p.run(until_drained=True, poll=1.0, max_seconds=300)
        return p

    def fraud(self, version: str) -> dict[str, list[dict[str, Any]]]:
        """Everything the fraud model published for ``version``, as landed in ClickHouse."""
        db = database(version)
        s = self.settings()
        return {
            "scores": query_rows(s, "SELECT order_id, fraud_score, labelled_before, "
                                    f"toUnixTimestamp64Milli(event_time) AS t FROM {db}.scores FINAL "
                                    "ORDER BY order_id"),
            "quality": query_rows(s, "SELECT model, bucket, labelled, accuracy, roc_auc, log_loss, "
                                     f"drift_detections FROM {db}.model_quality FINAL ORDER BY model, bucket"),
            "drift": query_rows(s, "SELECT model, labelled, toUnixTimestamp64Milli(event_time) AS t, action "
                                   f"FROM {db}.drift_events FINAL ORDER BY model, labelled, t"),
        }


@pytest.fixture(scope="module")
def log(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    from producers.base import Publisher
    from tests.support.ecommerce import GeneratorConfig, generate, publish_events

    lg = Log(stack, tmp_path_factory.mktemp("fraud-determinism"), f"fd{uuid.uuid4().hex[:8]}.")
    s = lg.settings()
    records, _ = generate(GeneratorConfig(events=EVENTS, seed=SEED, drift_at=DRIFT_AT, start_ms=START_MS))
    ensure_topics(s, stack.kafka_bootstrap, topics.input_specs(s.partitions, s.topic_prefix))
    half = len(records) // 2
    for i, part in enumerate((records[:half], records[half:])):
        with Publisher(s, stack.kafka_bootstrap) as pub:
            publish_events(pub, part)
            pub.flush()
        lg.run(lg.v("p"))  # live while the log is written: a pause (drained) half-way
        if i == 0:
            lg.paused = lg.fraud(lg.v("p"))
    yield lg


def _assert_same(a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]) -> None:
    for what in ("scores", "quality", "drift"):
        diff = [(x, y) for x, y in zip(a[what], b[what], strict=False) if x != y]
        assert len(a[what]) == len(b[what]) and not diff, (
            f"{what}: {len(a[what])} vs {len(b[what])} rows; first differences {diff[:3]}")


def _reference(log: Log) -> dict[str, list[dict[str, Any]]]:
    """Version ``a``'s results (a clean run over the whole log), run now when not there yet."""
    db = database(log.v("a"))
    if not query_rows(log.settings(), f"SELECT name FROM system.tables WHERE database = '{db}' AND name = 'scores'"):
        log.run(log.v("a"))
    return log.fraud(log.v("a"))


def test_two_runs_of_one_log_give_identical_fraud_scores_and_quality(log: Log) -> None:
    log.run(log.v("a"))
    log.run(log.v("b"))
    a, b = log.fraud(log.v("a")), log.fraud(log.v("b"))
    fraud = [r for r in a["quality"] if r["model"] == "fraud"]
    print(f"\n{len(a['scores'])} scores, {len(fraud)} fraud quality buckets, last {fraud[-1] if fraud else None}, "
          f"drift {a['drift']}")
    assert len(a["scores"]) > EVENTS // 2 and fraud and int(fraud[-1]["labelled"]) > EVENTS // 2
    _assert_same(a, b)


def test_a_pause_in_the_live_input_does_not_change_the_fraud_results(log: Log) -> None:
    assert log.paused is not None and log.paused["scores"], "nothing was scored at the pause"
    whole = _reference(log)
    at_pause = {r["order_id"]: r for r in log.paused["scores"]}
    rescored = sum(1 for r in whole["scores"] if r["order_id"] in at_pause and r != at_pause[r["order_id"]])
    print(f"\n{len(at_pause)} orders scored at the pause; {rescored} of them got another (definitive) "
          "score once the rest of the log came")
    _assert_same(whole, log.fraud(log.v("p")))


class _Killer(threading.Thread):
    """SIGKILLs the pipeline's worker once the fraud model has published ``labelled`` labels."""

    def __init__(self, log: Log, pipeline: Pipeline, version: str, labelled: int) -> None:
        super().__init__(daemon=True)
        self.log, self.pipeline, self.version, self.labelled = log, pipeline, version, labelled
        self.killed_at: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        s = self.log.settings()
        dec = Decoder(Registry(self.log.stack.schema_registry_url), "model_quality")
        c = Consumer(client_config(s, self.log.stack.kafka_bootstrap, **{
            "group.id": f"test-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
            "enable.auto.commit": False}))
        c.subscribe([topics.output_topics(self.version).model_quality])
        try:
            while not self.stop.is_set():
                for m in c.consume(1000, 0.5):
                    value = m.value()
                    if m.error() or not value:
                        continue
                    rec = dec.decode(value)
                    if rec["model"] == "fraud" and rec["labelled"] >= self.labelled:
                        worker = next(ch for ch in self.pipeline.children if ch.name.startswith("worker"))
                        assert worker.proc is not None
                        os.kill(worker.proc.pid, signal.SIGKILL)
                        self.killed_at = int(rec["labelled"])
                        return
        finally:
            c.close()


@pytest.mark.reliability
def test_kill_9_of_the_learner_mid_run_gives_the_same_fraud_results(log: Log) -> None:
    reference = _reference(log)
    final = max(int(r["labelled"]) for r in reference["quality"] if r["model"] == "fraud")
    pipeline = Pipeline(log.settings(), log.v("k"), echo=lambda _: None)
    killer = _Killer(log, pipeline, log.v("k"), final // 3)
    killer.start()
    try:
        log.run(log.v("k"), pipeline)
    finally:
        killer.stop.set()
        killer.join(30)
    worker = next(ch for ch in pipeline.children if ch.name.startswith("worker"))
    print(f"\nworker killed at fraud labelled={killer.killed_at} of {final}; restarts {worker.restarts}")
    assert killer.killed_at is not None and worker.restarts >= 1, "the worker was not killed mid-run"
    _assert_same(reference, log.fraud(log.v("k")))
