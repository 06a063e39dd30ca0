"""Online learning in the Faust app: ``samples.*`` learners and the pipeline's declared models, checkpointed.

Call :func:`register` once on the app (``D-<version>``). It adds:

* ``learn-samples`` (agent): every ``samples.*`` topic existing at start (Faust has no pattern
  subscription), one
  :class:`~stream_processors.samples.SampleLearner` per topic, in offset order.
* per declared model ``[models.<m>]`` (:mod:`stream_processors.operators.model`): its stream's
  valid events reach the merge straight from the stream stage (``stream_processors.io.Outputs``,
  in input-partition offset order), its labels of all partitions from :class:`ModelConsumer`,
  into the single-partition internal topic ``D.<V>.learning.<m>_events`` (JSON), so one model
  sees everything in one place. Each merge record names its source (input topic/partition) and
  its offset there: the learner orders by event time with that as the tie-break, and drops what
  a restarted upstream stage sends again.
* the model's loop (:class:`ModelConsumer`, a thread started by the task ``model-<m>``, in the
  consumer group ``D-<V>-<m>``): forwards the labels and runs the
  :class:`~stream_processors.operators.model.OnlineModel` on the merge, read with confluent-kafka
  in batches (Faust's per-event cost there would fill a worker's event loop, and Faust can skip
  records around a rebalance), applying events in event-time order behind the watermark over all
  input partitions. When the topic has been quiet ``fraud_idle_seconds`` it publishes the
  *provisional* tail: the buffer applied to a copy of the learner, whose scores and quality rows
  the definitive ones overwrite later. The tail never enters the learner or its checkpoint, so
  what the model learns — and hence every score and metric — is a function of the log, not of
  when the inputs paused (see :mod:`stream_processors.operators.model`).

Durability: the samples agent consumes in batches with acks disabled (``take_events``), the
model consumers with manual commits. For a batch: write the outputs, flush them, then write a
checkpoint — the LZ4-compressed pickle of the learner, which holds model, metrics, detector,
pending features *and the last applied input offset* — to the compacted topic
``D.<V>.learning.checkpoints`` (key: the model's name, or ``samples/<topic>``) and flush it;
only then does Faust ack (and later commit) the batch, or the model consumer commit it. A kill
-9 at any point restarts from a checkpoint whose offsets are >= the committed ones: re-delivered
input at or below the checkpointed offset is skipped, so no label is learned twice, and the
outputs a crash may repeat are update-style (same key, same value). A restarted learner
publishes its tail again (after ``fraud_idle_seconds``) even when no input is left to re-deliver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import cramjam
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from kappa import metrics
from kappa.errors import KappaError
from kappa.kafka import TopicSpec, admin, client_config, ensure_topics, producer_config
from kappa.pipeline import current
from kappa.pipeline.derive import Names, Output
from kappa.settings import Settings
from kappa.stack.manager import endpoints
from kappa.topics import input_specs, input_topics
from schemas.serde import DecodeError, Decoder, Encoder, Registry, subject
from stream_processors.base import Message
from stream_processors.operators.model import OnlineModel, model_spec
from stream_processors.samples import Emitted, SampleLearner, model_name
from stream_processors.snapshot import snapshot

__all__ = ["Learning", "ModelConsumer", "ModelRun", "checkpoint_topic", "load_checkpoints", "model_events_topic",
           "register"]

log = logging.getLogger(__name__)

_REJOINING = (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
              KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
              KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError._WAIT_COORD, KafkaError._TRANSPORT,
              KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT)
"""Commit errors of a group between generations or a coordinator moving: retried, not fatal
(after a broker restart the model consumer's first commit answered UNKNOWN_MEMBER_ID, and the
worker died with its window batch in flight: make reliability)."""
_MAX_BYTES = 64 * 1024 * 1024


def _names(version: str) -> Names:
    return Names(current(), version)


def checkpoint_topic(version: str) -> str:
    """Compacted topic of the learners' checkpoints (key: ``samples/<topic>`` or the model's name)."""
    return _names(version).checkpoints


def model_events_topic(version: str, model: str) -> str:
    """Single-partition internal topic where a model's events and labels meet (JSON records)."""
    return _names(version).model_events(model)


_LZ4_MAGIC = b"\x04\x22\x4d\x18"


def _decompress(blob: bytes) -> bytes:
    """A checkpoint's pickle: LZ4 frame (now), zlib (checkpoints written before)."""
    if blob[:4] == _LZ4_MAGIC:
        return bytes(cramjam.lz4.decompress(blob))
    return zlib.decompress(blob)


def load_checkpoints(settings: Settings, bootstrap: str, version: str,
                     timeout: float = 30.0, keys: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Latest checkpoint per key (those ``keys`` accepts: default all), unpickled (empty when
    there is none yet)."""
    topic = checkpoint_topic(version)
    consumer = Consumer(client_config(settings, bootstrap, **{
        "group.id": f"kappa-{version}-checkpoint-reader", "enable.auto.commit": False,
        "fetch.message.max.bytes": _MAX_BYTES, "receive.message.max.bytes": _MAX_BYTES + 1_000_000}))
    try:
        deadline = time.monotonic() + timeout
        while True:  # a topic created a moment ago may not have its leader yet
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
                break
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise KappaError(f"cannot read checkpoints from {topic} at {bootstrap}: {exc}") from exc
                time.sleep(0.2)
        latest: dict[str, bytes] = {}
        if high > low:
            consumer.assign([TopicPartition(topic, 0, low)])
            position = low
            while position < high:
                msg = consumer.poll(timeout)
                if msg is None:
                    raise KappaError(f"reading checkpoints from {topic} stalled at offset {position}/{high}: "
                                     f"is Kafka at {bootstrap} healthy?")
                if msg.error():
                    continue
                position = int(msg.offset() or 0) + 1
                latest[(msg.key() or b"").decode()] = msg.value() or b""
        return {k: pickle.loads(_decompress(v)) for k, v in latest.items() if v and (keys is None or keys(k))}
    finally:
        consumer.close()


class Learning:
    """The learning plumbing of one pipeline version (outputs, checkpoints) and its ``samples.*``
    learners; each declared model runs on its own instance (:class:`ModelRun`)."""

    def __init__(self, settings: Settings, version: str, *, load_samples: bool = True) -> None:
        self.settings = settings
        self.version = version
        ep = endpoints(settings)
        self.bootstrap = ep.kafka_bootstrap
        self.registry = Registry(ep.schema_registry_url)
        self.pipeline = current()
        self.names = Names(self.pipeline, version, settings.topic_prefix)
        self.inputs = input_topics(settings.topic_prefix)
        self.out: dict[tuple[str, str], Output] = {(o.kind, o.name): o for o in self.names.outputs()}
        labels = {self.names.input_topic(m.labels) for m in self.pipeline.models.values() if m.reads_labels}
        ensure_topics(settings, self.bootstrap, [
            *self.names.output_specs(settings.partitions),
            TopicSpec(self.names.checkpoints, 1, {
                "cleanup.policy": "compact", "max.message.bytes": str(_MAX_BYTES),
                "min.cleanable.dirty.ratio": "0.1", "segment.ms": "600000"}),
            *[TopicSpec(self.names.model_events(m), 1, {"retention.ms": "-1"}) for m in self.pipeline.models],
            *[t for t in input_specs(settings.partitions, settings.topic_prefix) if t.name in labels],
        ])
        self.producer = Producer(producer_config(settings, self.bootstrap, **{
            "partitioner": "murmur2_random",
            "linger.ms": 5, "message.max.bytes": _MAX_BYTES + 1_000_000}))
        self.quality_topic = self.out[("model_quality", "")].topic if self.pipeline.models else \
            self.names.output_prefix + "model_quality"
        self.drift_topic = self.out[("drift", "")].topic if self.pipeline.models else \
            self.names.output_prefix + "drift"
        self.enc_quality = Encoder(self.registry, subject(self.quality_topic), "model_quality")
        self.enc_rejected = Encoder(self.registry, subject(self.names.rejected), "rejected_event")
        self.enc_drift = Encoder(self.registry, subject(self.drift_topic), "drift_event")
        self.dec_sample = Decoder(self.registry, "sample")
        self.stale = True
        self.samples: dict[str, SampleLearner] = {}
        if load_samples:
            self.reload()

    def reload(self) -> None:
        """(Re)load every samples learner from its latest checkpoint: at start and after a
        rebalance, since another worker may have advanced a learner while it was not ours."""
        saved = load_checkpoints(self.settings, self.bootstrap, self.version,
                                 keys=lambda k: k.startswith("samples/"))
        self.samples = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("samples/")}
        self.stale = False
        log.info("learning %s: resumed %d samples learners %s", self.version, len(self.samples),
                 {t: s.progress.labelled for t, s in self.samples.items()})

    def samples_topics(self) -> list[str]:
        """Every existing ``samples.*`` topic of this prefix (the pattern's matches, at start)."""
        pattern = re.compile(self.inputs.samples_pattern)
        names = admin(self.settings, self.bootstrap).list_topics(timeout=30).topics
        return sorted(t for t in names if pattern.match(t))

    # -- output ------------------------------------------------------------------------------
    def _produce(self, topic: str, value: bytes, key: bytes) -> None:
        """Queue one record; when librdkafka's queue is full (a provisional tail can be a
        ``fraud_lag_seconds`` worth of scores), wait for room instead of failing."""
        while True:
            try:
                self.producer.produce(topic, value, key)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _emit(self, out: Emitted) -> None:
        for rec in out.quality:
            key = f"{rec['model']}|{rec['bucket_index']}"
            self._produce(self.quality_topic, self.enc_quality.encode(rec), key.encode())
            for name in ("accuracy", "roc_auc", "log_loss"):
                metrics.MODEL_METRIC.labels(rec["model"], name).set(rec[name])
        for rec in out.drift:
            self._produce(self.drift_topic, self.enc_drift.encode(rec), rec["model"].encode())
            metrics.DRIFT_DETECTIONS.labels(rec["model"]).inc()
        self.producer.poll(0)

    def flush(self) -> None:
        """Wait until every record produced so far is acknowledged (blocking)."""
        left = self.producer.flush(60.0)
        if left:
            raise KappaError(f"{left} learning records not delivered to Kafka at {self.bootstrap} in 60 s; "
                             "the batch will be re-processed after a restart")

    def checkpoint_sync(self, items: dict[str, Any]) -> None:
        """Flush outputs, then write and flush the checkpoints of ``items`` (key -> learner)."""
        self.flush()
        for key, learner in items.items():
            self._produce(self.names.checkpoints, snapshot(learner), key.encode())
        self.flush()

    async def checkpoint(self, items: dict[str, Any]) -> None:
        """:meth:`checkpoint_sync` off the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.checkpoint_sync, items)

    # -- samples -----------------------------------------------------------------------------
    def learn_samples(self, rows: Sequence[tuple[str, int, int, bytes | None]]) -> dict[str, Any]:
        """Apply consumed ``(topic, offset, timestamp_ms, value)`` rows; return touched learners."""
        touched: dict[str, SampleLearner] = {}
        batch: dict[str, list[tuple[int, dict[str, Any], Any, int, int]]] = {}
        size = self.settings.learning_batch_size
        for topic, offset, ts, value in rows:
            learner = self.samples.get(topic)
            if learner is None:
                learner = self.samples[topic] = SampleLearner(
                    model_name(topic, self.settings.topic_prefix), self.settings.learning_bucket_size,
                    self.version, self.settings.drift_delta)
            touched[topic] = learner
            try:
                rec = self.dec_sample.decode(value or b"")
            except DecodeError as exc:
                self._reject(topic, 0, offset, value, exc.reason)
                continue
            metrics.CONSUMED.labels(topic).inc()
            if size <= 1:
                before = learner.progress.labelled
                self._emit(learner.learn(rec["index"], rec["x"], rec["y"], offset, ts))
                if learner.progress.labelled > before:
                    metrics.MODEL_LABELLED.labels(learner.name).inc()
            else:
                batch.setdefault(topic, []).append((rec["index"], rec["x"], rec["y"], offset, ts))
                if len(batch[topic]) >= size:
                    self._learn_batch(learner, batch.pop(topic), ts)
        for topic, rows_ in batch.items():
            self._learn_batch(self.samples[topic], rows_, 0)
        for learner in touched.values():
            self._emit(learner.flush())
        return {f"samples/{t}": v for t, v in touched.items()}

    def _learn_batch(self, learner: SampleLearner, rows: list[Any], ts: int) -> None:
        before = learner.progress.labelled
        self._emit(learner.learn_batch(rows, ts))
        metrics.MODEL_LABELLED.labels(learner.name).inc(learner.progress.labelled - before)

    def _reject(self, topic: str, partition: int, offset: int, value: bytes | None, why: str) -> None:
        """Bad input never disappears: to the version's DLQ (kappa.<V>.rejected), counted."""
        from stream_processors.stream import rejection

        metrics.REJECTED.labels("processor", topic, "undecodable").inc()
        log.warning("rejecting %s/%d/%d: %s", topic, partition, offset, why)
        rec = rejection(Message(topic, partition, offset, None, value), f"undecodable: {why}",
                        int(time.time() * 1000))
        self._produce(self.names.rejected, self.enc_rejected.encode(rec), rec["source"].encode())

class ModelRun:
    """One declared model of the version: its learner, its labels forwarded to its merge topic,
    the merge learned; on its own :class:`Learning` (own producer), driven by a :class:`ModelConsumer`."""

    def __init__(self, base: Learning, name: str) -> None:
        self.base = base
        self.settings = base.settings
        self.version = base.version
        self.name = name
        pipe, names = base.pipeline, base.names
        self.model = pipe.models[name]
        self.spec = model_spec(pipe, name)
        self.topic = names.model_events(name)
        self.labels = names.input_topic(self.model.labels)
        self.group = names.label_group(name)
        labels = pipe.input(self.model.labels)
        self.labels_time = labels.time or ""
        scores = base.out[("scores", name)]
        self.scores_topic = scores.topic
        self.enc_score = Encoder(base.registry, subject(scores.topic), scores.schema)
        self.dec_label = Decoder(base.registry, labels.schema.name)
        self.sources = tuple(f"{names.input_topic(i.name)}/{p}" for i in (pipe.input(self.model.stream), labels)
                             for p in range(i.partitions or self.settings.partitions))
        self.reload()

    def reload(self) -> None:
        """(Re)load the learner from its latest checkpoint (its consumer was assigned the merge)."""
        saved = load_checkpoints(self.settings, self.base.bootstrap, self.version,
                                 keys=lambda k: k == self.name).get(self.name)
        settings = self.settings
        lag_ms = self.model.lag_ms if self.model.lag_ms is not None else int(settings.fraud_lag_seconds * 1000)
        self.learner: OnlineModel = saved or OnlineModel(
            self.spec, self.version, lag_ms=lag_ms,
            horizon_ms=int(settings.fraud_horizon_hours * 3_600_000),
            drift_policy=settings.drift_policy, drift_delta=settings.drift_delta, sources=self.sources)
        self.learner.spec = self.spec  # the running definition's features and model factory
        self._counts = dict(self.learner.counts)
        self.tail_due = True  # a restart or rebalance may have lost the last tail publication
        self.quiet_since = time.monotonic()
        log.info("learning %s: model %s resumed at labelled=%d, merge offset %d",
                 self.version, self.name, self.learner.progress.labelled, self.learner.offset)

    def _emit(self, out: Emitted, scores: Sequence[dict[str, Any]] = ()) -> None:
        self.base._emit(out)
        on = self.model.on
        for rec in scores:
            self.base._produce(self.scores_topic, self.enc_score.encode(rec), str(rec[on]).encode())
        self.base.producer.poll(0)

    def flush(self) -> None:
        self.base.flush()

    def checkpoint_sync(self, items: dict[str, Any]) -> None:
        self.base.checkpoint_sync(items)

    def forward_labels(self, rows: Sequence[tuple[str, int, int, bytes | None]]) -> None:
        """Decode a batch of labels (in bulk) and append them to the merge topic (JSON).

        The stream's events reach that topic from the stream stage itself (stream_processors.io.Outputs).
        """
        decoded = self.dec_label.decode_many([value or b"" for _, _, _, value in rows])
        on = self.model.on
        for (topic, partition, offset, value), rec in zip(rows, decoded, strict=True):
            if isinstance(rec, DecodeError):
                self.base._reject(topic, partition, offset, value, rec.reason)
                continue
            event = {"kind": "label", "time": rec[self.labels_time], "id": rec[on],
                     "src": f"{topic}/{partition}", "off": offset, "data": rec}
            self.base._produce(self.topic, orjson.dumps(event), str(rec[on]).encode())
        self.base.producer.poll(0)

    def learn(self, rows: Sequence[tuple[int, bytes | None]]) -> None:
        """Add merged ``(offset, value)`` events and apply what the watermark releases."""
        learner = self.learner
        learner.add_records(rows)
        before = learner.progress.labelled
        out, scores = learner.release()
        out.extend(learner.flush())
        self.tail_due, self.quiet_since = True, time.monotonic()
        self._emit(out, scores)
        metrics.MODEL_LABELLED.labels(self.name).inc(learner.progress.labelled - before)
        for what, n in learner.counts.items():
            if n > self._counts.get(what, 0):
                metrics.MODEL_EVENTS.labels(self.name, what).inc(n - self._counts.get(what, 0))
        self._counts = dict(learner.counts)

    def tail_ready(self, now: float) -> bool:
        """True when the merge has been quiet ``fraud_idle_seconds`` since its last batch
        (or restart) and its tail is not published yet."""
        return self.tail_due and now - self.quiet_since >= self.settings.fraud_idle_seconds

    def publish_tail(self) -> None:
        """Queue the provisional tail (buffer applied to a copy; the learner is unchanged)."""
        out, scores = self.learner.provisional()
        self._emit(out, scores)
        self.tail_due = False


class ModelConsumer(threading.Thread):
    """A model's loop: labels forwarded and the merge topic learned, read with
    confluent-kafka in batches — not through Faust.

    Why not Faust agents: Faust costs ~120 us per event in its own machinery (benchmarks/
    processors.py) and every order passes through the merge — on a 2-core box that alone
    filled a worker's event loop; and around a rebalance Faust can skip records and commit past
    them (seen in 2-worker runs, see stream_processors.dimensions), which would lose labels.

    One consumer per worker and model in the group ``D-<V>-<model>``, subscribed to the labels
    and the merge topic. Labels: decoded, appended to the merge, flushed, then their offsets
    committed (a re-sent label is dropped by the learner by source offset). The single merge
    partition goes to one worker; its learner is reloaded from the checkpoint on every
    assignment. Merge batches are applied as they come; every ``fraud_checkpoint_seconds`` (and
    once the merge is quiet and its provisional tail published, on revocation and on stop) the
    outputs are flushed, the checkpoint written and flushed, and only then the merge offsets it
    covers committed —
    so a kill -9 restarts from a checkpoint at or past the committed offset (re-delivered
    events are skipped by offset) and re-applies what followed it, which publishes the same
    values again (update-style). Why not a checkpoint per batch: it pickles the merge buffer
    (``fraud_lag_seconds`` of events), which at 5k orders/s cost more than the batches
    themselves. When the merge has been quiet ``fraud_idle_seconds``, its owner publishes the
    provisional tail.
    """

    def __init__(self, lrn: ModelRun, on_fatal: Callable[[str], None], batch: int = 2000,
                 poll_s: float = 0.2) -> None:
        super().__init__(name=f"kappa-{lrn.name}-{lrn.version}", daemon=True)
        self.lrn, self.on_fatal, self.batch, self.poll_s = lrn, on_fatal, batch, poll_s
        self.topic = lrn.topic
        self.labels = lrn.labels if lrn.model.reads_labels else None  # else forwarded by its stage
        self.consumer = Consumer(client_config(lrn.settings, lrn.base.bootstrap, **{
            "group.id": lrn.group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 3_000, "fetch.message.max.bytes": _MAX_BYTES}))
        self.owned = False
        self.stopping = threading.Event()
        self.uncommitted: int | None = None  # merge offset to commit once the next checkpoint is written
        self.checkpointed: int | None = None  # merge offset the last checkpoint covers
        self.checkpointed_at = time.monotonic()

    def _mine(self, partitions: list[TopicPartition]) -> bool:
        return any(tp.topic == self.topic for tp in partitions)

    def _assigned(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        if self._mine(partitions):
            self.lrn.reload()  # another worker may have advanced it while it was not ours
            self.owned, self.uncommitted, self.checkpointed = True, None, None

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        if self._mine(partitions):
            self.checkpoint()  # still ours while the callback runs: hand it over up to date
            self.owned = False

    def _lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        if self._mine(partitions):
            self.uncommitted, self.owned = None, False  # no longer ours: the next owner re-applies
            self.checkpointed = None

    def run(self) -> None:
        try:
            topics = [self.labels, self.topic] if self.labels else [self.topic]
            self.consumer.subscribe(topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)
            while not self.stopping.is_set():
                self.step()
            self.checkpoint()
        except Exception:
            self.on_fatal(f"model-{self.lrn.name}")
        finally:
            self.consumer.close()

    def step(self) -> None:
        """One poll: labels forwarded; merge records applied (checkpointed and committed when
        due); or, the merge quiet, its tail."""
        labels: list[tuple[str, int, int, bytes | None]] = []
        rows: list[tuple[int, bytes | None]] = []
        for m in self.consumer.consume(self.batch, self.poll_s):
            if m.error():
                log.warning("model %s consumer: %s", self.lrn.name, m.error())
            elif m.topic() == self.topic:
                rows.append((int(m.offset() or 0), m.value()))
            else:
                labels.append((str(m.topic()), int(m.partition() or 0), int(m.offset() or 0), m.value()))
        lrn, now = self.lrn, time.monotonic()
        if labels and self.labels:
            lrn.forward_labels(labels)
            lrn.flush()
            ends: dict[int, int] = {}
            for _, p, off, _ in labels:
                ends[p] = max(ends.get(p, -1), off + 1)
            # not committed (the group is rejoining): the labels come again, and the learner
            # drops what its sources already gave (redelivered_upstream)
            self._commit([TopicPartition(self.labels, p, o) for p, o in ends.items()])
        if rows:
            lrn.learn(rows)
            self.uncommitted = rows[-1][0] + 1
            if now - self.checkpointed_at >= lrn.settings.fraud_checkpoint_seconds:
                self.checkpoint()
            return
        if self.owned and lrn.tail_ready(now):
            lrn.publish_tail()
            lrn.flush()  # the learner did not change: the checkpoint below is only still due
        if not (self.owned and lrn.tail_due):
            # Quiet and the tail out: only now are the last merge offsets committed, so
            # `kappa run --until-drained` (which waits for this group's lag to reach 0 and the
            # sink to land everything) cannot stop between the last batch and its tail.
            self.checkpoint()

    def checkpoint(self) -> None:
        """Outputs flushed, then the checkpoint, then the merge offsets it covers committed."""
        if self.uncommitted is None:
            return
        if self.checkpointed != self.uncommitted:
            self.lrn.checkpoint_sync({self.lrn.name: self.lrn.learner})
            self.checkpointed = self.uncommitted
        # A commit the group refuses (after a broker restart the member rejoins under a new id)
        # is retried at the next checkpoint; the checkpoint already holds the merge offset, so
        # records read again meanwhile are skipped as redelivered.
        if self._commit([TopicPartition(self.topic, 0, self.uncommitted)]):
            self.uncommitted, self.checkpointed_at = None, time.monotonic()

    def _commit(self, offsets: list[TopicPartition]) -> bool:
        """Commit synchronously; False (logged) when the group is between generations."""
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            return True
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal() or err.code() not in _REJOINING:
                raise
            log.warning("model %s consumer: commit of %s not accepted (%s); retried at the next checkpoint",
                        self.lrn.name, ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in offsets),
                        err.str())
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand (applied, checkpointed, committed), leave the group."""
        self.stopping.set()
        self.join(timeout)

def register(app: Any, settings: Settings, version: str) -> Learning:
    """Add the samples agent and, per declared model, its consumer (a task) to the Faust ``app``.

    Returns the samples' state; each model runs on its own :class:`Learning` (own producer and
    encoders) in a :class:`ModelConsumer` thread.
    """
    lrn = Learning(settings, version)
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    # Faust cannot subscribe by pattern (its aiokafka driver ignores patterns): the learning
    # streams are the samples.* topics that exist when the worker starts.
    samples_topic = app.topic(*lrn.samples_topics(), **raw)
    lock = asyncio.Lock()

    def fatal(agent: str) -> None:
        # Results are exactly-once through re-delivery from the checkpoint: dying is as safe as
        # kill -9, limping on with a dead agent is not.
        log.critical("learning agent %s failed; exiting so the supervisor restarts the worker",
                     agent, exc_info=True)
        logging.shutdown()
        os._exit(70)

    @app.agent(samples_topic, name="learn-samples")
    async def learn_samples(stream: Any) -> None:
        async for events in stream.take_events(1000, within=0.5):
            try:
                async with lock:
                    if lrn.stale:
                        lrn.reload()
                    rows = [(e.message.topic, e.message.offset, int((e.message.timestamp or 0) * 1000),
                             e.message.value) for e in events]
                    touched = lrn.learn_samples(rows)
                    await lrn.checkpoint(touched)
            except Exception:
                fatal("learn-samples")

    def model_task(name: str) -> Any:
        async def run_model() -> None:
            loop = asyncio.get_running_loop()

            def start() -> ModelRun:
                return ModelRun(Learning(settings, version, load_samples=False), name)

            consumer = ModelConsumer(await loop.run_in_executor(None, start), fatal)
            consumer.start()
            try:
                await asyncio.Event().wait()  # until the worker stops (the task is cancelled)
            finally:
                await loop.run_in_executor(None, consumer.stop)

        run_model.__name__ = run_model.__qualname__ = f"model_{name}"
        return run_model

    tasks = [app.task(model_task(name)) for name in lrn.pipeline.models]

    @app.on_partitions_revoked.connect
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        lrn.stale = True

    lrn.agents = (learn_samples, *tasks)  # type: ignore[attr-defined]
    return lrn
