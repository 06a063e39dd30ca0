"""Online learning against the real broker and registry, through a real Faust worker subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from river import datasets, evaluate, metrics

from kappa.kafka import TopicSpec, client_config, ensure_topics
from kappa.topics import input_topics, output_topics
from schemas.serde import Decoder, Encoder, Registry, subject
from stream_processors.learning import load_checkpoints, model_events_topic
from stream_processors.samples import default_model
from tests.conftest import REPO, Stack
from tests.support.learning_synthetic import scenario

pytestmark = pytest.mark.integration


def reference() -> dict[str, float]:
    """River's progressive_val_score of the default model on Phishing, per metric."""
    return {f: evaluate.progressive_val_score(datasets.Phishing(), default_model(), m).get()
            for f, m in (("accuracy", metrics.Accuracy()), ("roc_auc", metrics.ROCAUC()),
                         ("log_loss", metrics.LogLoss()))}


class Run:
    """One pipeline version under test: its topics, a worker subprocess, readers of its outputs."""

    def __init__(self, stack: Stack, home: Path) -> None:
        self.stack = stack
        self.home = home
        self.prefix = f"t{uuid.uuid4().hex[:8]}."
        self.version = f"l{uuid.uuid4().hex[:8]}"
        self.settings = stack.settings(topic_prefix=self.prefix, version=self.version, home=home)
        self.registry = Registry(stack.schema_registry_url)
        # idempotent like every producer of the pipeline: a retried batch must not overtake the next
        # one (the fraud merge drops a source offset at or below the last seen: redelivered_upstream)
        self.producer = Producer(client_config(self.settings, stack.kafka_bootstrap, **{
            "partitioner": "murmur2_random", "enable.idempotence": True}))
        self.worker: subprocess.Popen[bytes] | None = None
        self.consumers: dict[str, tuple[Consumer, Decoder]] = {}

    def publish(self, topic: str, schema: str, records: list[dict[str, Any]],
                key: Callable[[dict[str, Any]], str]) -> None:
        enc = Encoder(self.registry, subject(topic), schema)
        for rec in records:
            self.producer.produce(topic, enc.encode(rec), key(rec).encode())
            self.producer.poll(0)
        assert self.producer.flush(30) == 0

    def start(self, **env: str) -> None:
        run_env = self.stack.env(self.home) | {"KAPPA_TOPIC_PREFIX": self.prefix,
                                                "KAPPA_VERSION": self.version, **env}
        log = open(self.home / f"worker-{time.time_ns()}.log", "wb")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "tests.support.learning_app", "worker", "-l", "warn"],
            cwd=REPO, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.worker and self.worker.poll() is None:
            os.killpg(self.worker.pid, sig)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait(10)
        self.worker = None

    def read(self, topic: str, schema: str, timeout: float = 1.0) -> list[dict[str, Any]]:
        """New records of output ``topic`` since the last call."""
        if topic not in self.consumers:
            c = Consumer(client_config(self.settings, self.stack.kafka_bootstrap, **{
                "group.id": f"test-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                "enable.auto.commit": False}))
            c.subscribe([topic])
            self.consumers[topic] = (c, Decoder(self.registry, schema))
        c, dec = self.consumers[topic]
        out = []
        for msg in c.consume(10_000, timeout):
            if not msg.error() and msg.value():
                out.append(dec.decode(msg.value()))
        return out

    def wait_quality(self, seen: list[dict[str, Any]], model: str, labelled: int,
                     timeout: float = 180.0) -> dict[str, Any]:
        """Collect model_quality into ``seen`` until ``model`` reports ``labelled``; its record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen += self.read(output_topics(self.version).model_quality, "model_quality")
            done = [r for r in seen if r["model"] == model and r["labelled"] >= labelled]
            if done:
                return done[-1]
            assert self.worker is None or self.worker.poll() is None, "learning worker died"
        best = max((r["labelled"] for r in seen if r["model"] == model), default=None)
        raise AssertionError(f"{model} never reached {labelled} labelled samples (last: {best})\n"
                             f"{self.diagnosis()}")

    def diagnosis(self) -> str:
        """What the checkpoints and the worker log say (for a failure message)."""
        lines = []
        try:
            for key, lrn in load_checkpoints(self.settings, self.stack.kafka_bootstrap, self.version).items():
                fields = {k: getattr(lrn, k, None) for k in ("offset", "source_time", "source_offset", "counts")}
                lines.append(f"checkpoint {key}: labelled={lrn.progress.labelled} "
                             f"buffer={len(getattr(lrn, 'buffer', ()))} {fields}")
        except Exception as exc:  # the diagnosis must not hide the failure
            lines.append(f"checkpoints unreadable: {exc!r}")
        for log in sorted(self.home.glob("worker-*.log")):
            lines.append(f"--- {log.name} (tail)")
            lines += log.read_text(errors="replace").splitlines()[-40:]
        return "\n".join(lines)

    def close(self) -> None:
        self.kill()
        for c, _ in self.consumers.values():
            c.close()


@pytest.fixture
def run(stack: Stack, tmp_path: Path) -> Iterator[Run]:
    r = Run(stack, tmp_path)
    try:
        yield r
    finally:
        r.close()


def phishing_samples() -> list[dict[str, Any]]:
    return [{"index": i, "x": x, "y": y} for i, (x, y) in enumerate(datasets.Phishing())]


def test_samples_phishing_equals_progressive_val_score(run: Run) -> None:
    topic = input_topics(run.prefix).samples("Phishing")
    ensure_topics(run.settings, run.stack.kafka_bootstrap, [TopicSpec(topic, 1)])
    run.publish(topic, "sample", phishing_samples(), key=lambda r: str(r["index"]))
    run.start()
    seen: list[dict[str, Any]] = []
    final = run.wait_quality(seen, "phishing", 1250)
    ref = reference()
    print(f"\npipeline: {({k: final[k] for k in ref})}\nriver:    {ref}")
    assert final["labelled"] == 1250
    assert final["bucket_index"] == 12
    for field, value in ref.items():
        assert final[field] == pytest.approx(value, abs=1e-9), field
    mine = [r for r in seen if r["model"] == "phishing"]
    assert {r["bucket_index"] for r in mine} == set(range(13))
    # a bucket's time is the record timestamp of its first sample: one per bucket, in order
    starts = {r["bucket_index"]: r["bucket"] for r in mine}
    assert all(len({r["bucket"] for r in mine if r["bucket_index"] == b}) == 1 for b in starts)
    assert [starts[b] for b in range(13)] == sorted(starts.values())
    assert starts[0] > 1_600_000_000_000


@pytest.mark.reliability
def test_kill_9_restart_resumes_from_checkpoint_without_double_learning(run: Run) -> None:
    topic = input_topics(run.prefix).samples("Phishing")
    ensure_topics(run.settings, run.stack.kafka_bootstrap, [TopicSpec(topic, 1)])
    samples = phishing_samples()
    run.publish(topic, "sample", samples[:700], key=lambda r: str(r["index"]))
    run.start()
    seen: list[dict[str, Any]] = []
    run.wait_quality(seen, "phishing", 700)
    run.kill(signal.SIGKILL)
    run.publish(topic, "sample", samples[700:], key=lambda r: str(r["index"]))
    run.start()
    after: list[dict[str, Any]] = []
    final = run.wait_quality(after, "phishing", 1250)
    first_after = min(r["labelled"] for r in after if r["model"] == "phishing")
    print(f"\nbefore kill: labelled=700; first record after restart: labelled={first_after}; "
          f"final: {final}")
    assert first_after >= 700, "restarted cold instead of from the checkpoint"
    assert final["labelled"] == 1250 == max(r["labelled"] for r in after)
    for field, value in reference().items():  # equal to an uninterrupted run: nothing learned twice
        assert final[field] == pytest.approx(value, abs=1e-9), field


def exact_auc(pairs: list[tuple[float, bool]]) -> float:
    """Rank ROC AUC (River's ROCAUC uses 10 thresholds: too coarse for small fraud scores)."""
    pos = neg = 0
    wins = 0.0
    for _, y in sorted(pairs):
        if y:
            pos += 1
            wins += neg
        else:
            neg += 1
    return wins / max(pos * neg, 1)


def test_fraud_scores_drift_detected_and_auc_recovers(run: Run) -> None:
    n, drift_at = 6000, 3000
    orders, labels = scenario(n, drift_at=drift_at, seed=11)
    out = output_topics(run.version)
    merge = model_events_topic(run.version, "fraud")
    ensure_topics(run.settings, run.stack.kafka_bootstrap, [
        TopicSpec(merge, 1), TopicSpec(input_topics(run.prefix).topic("order_labels"), run.settings.partitions)])
    # orders enter the fraud merge as the order stage writes them (stream_processors.io.Outputs):
    # JSON events on the single-partition merge topic, tagged with their input partition and offset
    orders_topic, parts = input_topics(run.prefix).topic("orders"), run.settings.partitions
    for i, rec in enumerate(orders):
        event = {"kind": "order", "time": rec["event_time"], "id": rec["order_id"],
                 "src": f"{orders_topic}/{i % parts}", "off": i // parts, "data": rec}
        run.producer.produce(merge, json.dumps(event).encode(), rec["order_id"].encode(), partition=0)
        run.producer.poll(0)
    assert run.producer.flush(30) == 0
    run.publish(input_topics(run.prefix).topic("order_labels"), "order_labels", labels, key=lambda r: r["order_id"])
    run.start(KAPPA_DRIFT_POLICY="reset")
    seen: list[dict[str, Any]] = []
    final = run.wait_quality(seen, "fraud", n, timeout=240)
    scores = {s["order_id"]: s for s in run.read(out.scores, "fraud_score", timeout=5)}
    drift = run.read(out.drift, "drift_event", timeout=2)
    truth = {lb["order_id"]: lb["is_fraud"] for lb in labels}
    ids = [o["order_id"] for o in orders]
    assert set(scores) == set(ids)

    def window(a: int, b: int) -> float:
        return exact_auc([(scores[i]["fraud_score"], truth[i]) for i in ids[a:b]])

    before, after, recovered = window(1000, drift_at), window(drift_at, drift_at + 500), window(n - 1500, n)
    print(f"\nfraud AUC before drift={before:.3f}, first 500 after={after:.3f}, last 1500={recovered:.3f}; "
          f"drift detections at labelled={[d['labelled'] for d in drift]}; final quality={final}")
    assert before > 0.8
    assert after < before - 0.3
    assert any(d["labelled"] > drift_at and d["action"] == "reset" for d in drift)
    assert recovered > 0.8
    assert final["labelled"] == n
