"""Online learning through the real CLI path: ``kappa produce`` -> ``kappa run --until-drained`` -> ClickHouse.

One module-scoped pipeline run (its own uuid topic prefix, version and ``KAPPA_HOME``) holds
both inputs: the e-commerce generator with a concept drift half-way and River's Phishing
dataset. The tests then read what landed in ClickHouse (``sinks.query.query_rows`` on the same
``KAPPA_HOME``) and the labels the generator published (from Kafka): nothing is mocked.

The fraud model's quality is checked with a windowed *exact* rank AUC of the landed scores
(``kappa.orders.fraud_score``) against the published labels: ``kappa.model_quality`` is
cumulative, so it cannot show a recovery after the drift.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from river import datasets, evaluate, metrics

from kappa.kafka import client_config
from kappa.settings import Settings
from kappa.topics import input_topics
from schemas.serde import Decoder, Registry
from stream_processors.learning import load_checkpoints
from stream_processors.samples import default_model
from tests.conftest import REPO, Stack, stop_group

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))
EVENTS, DRIFT_AT, SEED = 6000, 3000, 4
START_MS = 1_700_000_000_000
"""A fixed past start: the generator's records (hours of day included) are the same every run."""


def rank_auc(pairs: list[tuple[float, bool]]) -> float:
    """Exact ROC AUC (ties count one half).

    >>> rank_auc([(0.1, False), (0.4, True), (0.4, False), (0.9, True)])
    0.875
    """
    pairs = sorted(pairs, key=lambda p: p[0])
    pos = neg = 0
    wins = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        p = sum(1 for _, y in pairs[i:j] if y)
        n = (j - i) - p
        wins += p * neg + 0.5 * p * n
        pos, neg, i = pos + p, neg + n, j
    if not pos or not neg:
        raise AssertionError(f"AUC undefined on {len(pairs)} pairs with {pos} positives")
    return wins / (pos * neg)


@dataclass
class PipelineRun:
    """A finished ``kappa run --until-drained`` over the generator and Phishing inputs."""

    stack: Stack
    settings: Settings
    env: dict[str, str]
    manifest: dict[str, Any]
    seconds: dict[str, float]

    def query(self, sql: str) -> list[dict[str, Any]]:
        from sinks.query import query_rows

        return query_rows(self.settings, sql)

    def labels(self) -> dict[str, bool]:
        """The order labels the generator published, read back from Kafka (all partitions)."""
        topic = input_topics(self.settings.topic_prefix).topic("order_labels")
        dec = Decoder(Registry(self.stack.schema_registry_url), "order_labels")
        c = Consumer(client_config(self.settings, self.stack.kafka_bootstrap, **{
            "group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False}))
        try:
            parts = c.list_topics(topic, timeout=30).topics[topic].partitions
            ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            out: dict[str, bool] = {}
            pos = dict.fromkeys(parts, 0)
            deadline = time.monotonic() + 60
            while any(pos[p] < ends[p] for p in parts) and time.monotonic() < deadline:
                for msg in c.consume(5000, 1.0):
                    value, offset = msg.value(), msg.offset()
                    if msg.error() or value is None or offset is None:
                        continue
                    pos[msg.partition()] = offset + 1
                    rec = dec.decode(value)
                    out[rec["order_id"]] = rec["is_fraud"]
            return out
        finally:
            c.close()


def _kappa(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KAPPA, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"kappa {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def pipeline(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineRun]:
    home = tmp_path_factory.mktemp("learning-pipeline")
    prefix, version = f"t{uuid.uuid4().hex[:8]}.", f"l{uuid.uuid4().hex[:8]}"
    # grace 5 s: the revenue windows of a quiet stream close 5 s (not 60 s) after the last event,
    # which is what --until-drained waits for; the learning does not depend on it.
    env = stack.env(home) | {"KAPPA_TOPIC_PREFIX": prefix, "KAPPA_VERSION": version,
                             "KAPPA_WINDOW_GRACE_SECONDS": "5"}
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    _kappa(["produce", "--generator", "ecommerce", "--events", str(EVENTS), "--seed", str(SEED),
            "--option", f"drift_at={DRIFT_AT}", "--start", str(START_MS)], env, 120)
    _kappa(["produce", "--river-dataset", "Phishing"], env, 120)
    seconds["produce"] = time.monotonic() - t0
    t0 = time.monotonic()
    _kappa(["run", "--until-drained"], env, 240)
    seconds["run"] = time.monotonic() - t0
    manifest = json.loads(max((home / "manifests").glob("ecommerce-*.json"), key=lambda p: p.stat().st_mtime)
                          .read_text())
    settings = stack.settings(topic_prefix=prefix, version=version, home=home)
    yield PipelineRun(stack, settings, env, manifest, seconds)


def test_fraud_model_on_generator_data_learns_detects_drift_and_recovers(pipeline: PipelineRun) -> None:
    truth = pipeline.labels()
    scored = pipeline.query("SELECT order_id, fraud_score, toUnixTimestamp64Milli(event_time) AS t, late "
                            "FROM kappa.orders")
    drift = pipeline.query("SELECT labelled, toUnixTimestamp64Milli(event_time) AS t, action "
                           "FROM kappa.drift_events WHERE model = 'fraud' ORDER BY labelled")
    quality = pipeline.query("SELECT toUnixTimestamp64Milli(bucket) AS start, bucket_index, labelled, roc_auc, "
                             "toTypeName(bucket) AS type FROM kappa.model_quality "
                             "WHERE model = 'fraud' ORDER BY bucket")
    assert len(scored) == pipeline.manifest["valid_unique_orders"]
    assert len(truth) == pipeline.manifest["labels"]
    # too-late orders (minutes behind their partition) are outside the fraud merge's lag: unscored
    assert all(r["fraud_score"] is not None for r in scored if not r["late"]), "an order landed without its score"
    assert sum(r["fraud_score"] is None for r in scored) == pipeline.manifest["too_late"]
    scored = [r for r in scored if r["fraud_score"] is not None]
    # order_id = o<seed>-<generator index>: the index says which side of the drift an order is on
    rows = sorted((int(r["order_id"].rsplit("-", 1)[1]), float(r["fraud_score"]), int(r["t"]),
                   truth[r["order_id"]]) for r in scored)
    drift_time = min(t for i, _, t, _ in rows if i >= DRIFT_AT)

    def auc(lo: int, hi: int) -> float:
        return rank_auc([(s, y) for i, s, _, y in rows if lo <= i < hi])

    tenth = EVENTS // 10
    before = auc(tenth, DRIFT_AT)
    just_after = auc(DRIFT_AT, DRIFT_AT + tenth)
    recovered = auc(EVENTS - EVENTS // 4, EVENTS)
    final = quality[-1]
    print(f"\nfraud exact AUC: orders [{tenth}, {DRIFT_AT}) before the drift {before:.3f}; "
          f"[{DRIFT_AT}, {DRIFT_AT + tenth}) just after {just_after:.3f}; last quarter {recovered:.3f}\n"
          f"drift detections (labelled, event_time - drift time in s, action): "
          f"{[(d['labelled'], (int(d['t']) - drift_time) // 1000, d['action']) for d in drift]}\n"
          f"model_quality final: labelled={final['labelled']} cumulative roc_auc={float(final['roc_auc']):.3f}"
          f"\nfraud labels {sum(truth.values())}/{len(truth)}; durations {pipeline.seconds}")
    assert before > 0.65, "the model did not learn the generator's pre-drift signal"
    assert just_after < before - 0.1, "the drift did not hurt: is the generator's drift still there?"
    assert any(int(d["t"]) >= drift_time for d in drift), "no drift detected after the drift"
    assert recovered > 0.62 and recovered > just_after + 0.1, "no recovery after the drift"
    assert int(final["labelled"]) == len(truth) - pipeline.manifest["too_late"]  # too-late orders: not learned
    assert float(final["roc_auc"]) > 0.6
    # fraud buckets are event-time minutes: bucket is the minute start, a DateTime64 like every time
    assert {r["type"] for r in quality} == {"DateTime64(3, 'UTC')"}
    assert all(int(r["start"]) % 60_000 == 0 and int(r["start"]) == int(r["bucket_index"]) for r in quality)
    assert min(int(r["start"]) for r in quality) == min(t for _, _, t, _ in rows) // 60_000 * 60_000


def test_phishing_through_cli_equals_progressive_val_score(pipeline: PipelineRun) -> None:
    rows = pipeline.query("SELECT bucket_index, labelled, accuracy, roc_auc, log_loss FROM kappa.model_quality "
                          "WHERE model = 'phishing' ORDER BY bucket_index")
    ref = {f: evaluate.progressive_val_score(datasets.Phishing(), default_model(), m).get()
           for f, m in (("accuracy", metrics.Accuracy()), ("roc_auc", metrics.ROCAUC()),
                        ("log_loss", metrics.LogLoss()))}
    final = rows[-1]
    print(f"\nphishing final bucket {final}\nriver progressive_val_score {ref}")
    assert [int(r["bucket_index"]) for r in rows] == list(range(13))
    assert int(final["labelled"]) == 1250
    for name, value in ref.items():
        assert float(final[name]) == pytest.approx(value, abs=1e-9), name


class Quality:
    """Reader of the ModelQuality records of ``version`` straight from its Kafka topic."""

    def __init__(self, stack: Stack, settings: Settings, version: str) -> None:
        from kappa.topics import output_topics

        self.dec = Decoder(Registry(stack.schema_registry_url), "model_quality")
        self.c = Consumer(client_config(settings, stack.kafka_bootstrap, **{
            "group.id": f"test-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
            "enable.auto.commit": False}))
        self.c.subscribe([output_topics(version).model_quality])

    def until(self, worker: subprocess.Popen[bytes], done: Any, timeout: float) -> list[dict[str, Any]]:
        """Records read until ``done(records)`` holds; fails when the worker dies or time runs out."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not done(seen):
            assert time.monotonic() < deadline, f"timed out; last records {seen[-3:]}"
            assert worker.poll() is None, "worker died"
            seen += [self.dec.decode(m.value()) for m in self.c.consume(5000, 0.5)  # type: ignore[arg-type]
                     if not m.error() and m.value()]
        return seen


    def rest(self) -> list[dict[str, Any]]:
        """Every record up to the topic's current end (what a killed worker left behind)."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            parts = self.c.assignment()
            ends = {tp.partition: self.c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
            pos = {tp.partition: tp.offset for tp in self.c.position(parts)}
            if parts and all(pos[p] >= ends[p] or (pos[p] < 0 and ends[p] == 0) for p in ends):
                return seen
            seen += [self.dec.decode(m.value()) for m in self.c.consume(5000, 0.5)  # type: ignore[arg-type]
                     if not m.error() and m.value()]
        raise AssertionError("could not read the model_quality topic to its end")


def _labelled(records: list[dict[str, Any]], model: str) -> list[int]:
    return [int(r["labelled"]) for r in records if r["model"] == model]


@pytest.mark.reliability
def test_kill_9_of_the_real_worker_resumes_learning_without_double_learning(
        stack: Stack, tmp_path: Path) -> None:
    prefix, version = f"t{uuid.uuid4().hex[:8]}.", f"k{uuid.uuid4().hex[:8]}"
    # a checkpoint per fraud batch: the whole log takes a few seconds, less than the default
    # interval, and this test checks that a restart resumes from a checkpoint, not cold
    env = stack.env(tmp_path) | {"KAPPA_TOPIC_PREFIX": prefix, "KAPPA_VERSION": version,
                                 "KAPPA_WINDOW_GRACE_SECONDS": "5", "KAPPA_FRAUD_CHECKPOINT_SECONDS": "0"}
    _kappa(["produce", "--river-dataset", "Phishing"], env, 120)
    _kappa(["produce", "--generator", "ecommerce", "--events", "4000", "--seed", str(SEED),
            "--start", str(START_MS)], env, 120)
    manifest = json.loads(next((tmp_path / "manifests").glob("ecommerce-*.json")).read_text())
    labels = int(manifest["labels"]) - int(manifest["too_late"])  # too-late orders are not learned
    settings = stack.settings(topic_prefix=prefix, version=version, home=tmp_path)
    quality = Quality(stack, settings, version)

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{time.time_ns()}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "stream_processors", "worker", "--version", version],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    worker = start()
    try:
        before = quality.until(worker, lambda rs: max(_labelled(rs, "fraud"), default=0) >= labels // 3, 180)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
        before += quality.rest()
        # what the restarted worker must resume from: the fraud model's last checkpoint (the
        # quality rows seen before the kill may be a provisional tail, ahead of any checkpoint)
        saved = load_checkpoints(settings, stack.kafka_bootstrap, version, keys=lambda k: k == "fraud")
        worker = start()
        after = quality.until(worker, lambda rs: labels in _labelled(rs, "fraud"), 180)
    finally:
        stop_group(worker, 30)
        quality.c.close()
    killed_at, resumed_at = max(_labelled(before, "fraud")), min(_labelled(after, "fraud"))
    final = {r["model"]: r for r in before + after if r["labelled"] in (labels, 1250)}
    print(f"\nfraud labelled: {killed_at} when killed, first record after restart {resumed_at}, "
          f"final {final['fraud']['labelled']}/{labels} labels (roc_auc {final['fraud']['roc_auc']:.3f})\n"
          f"phishing final after the kill: {final['phishing']}")
    assert "fraud" in saved and saved["fraud"].offset > 0, "no fraud checkpoint before the kill"
    checkpointed = saved["fraud"].progress.labelled
    print(f"fraud checkpoint at the kill: merge offset {saved['fraud'].offset}, labelled {checkpointed}")
    assert resumed_at >= checkpointed, "the restarted worker did not resume from the checkpoint"
    assert max(_labelled(after, "fraud")) == labels, "a label was learned twice"
    assert max(_labelled(before + after, "phishing")) == 1250
    ref = {f: evaluate.progressive_val_score(datasets.Phishing(), default_model(), m).get()
           for f, m in (("accuracy", metrics.Accuracy()), ("roc_auc", metrics.ROCAUC()),
                        ("log_loss", metrics.LogLoss()))}
    for name, value in ref.items():  # equal to River: no sample learned twice or skipped
        assert float(final["phishing"][name]) == pytest.approx(value, abs=1e-9), name
