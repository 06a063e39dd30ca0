"""Learning streams ``samples.<name>``: River's default model, progressive validation, in offset order.

Each sample is first predicted (``predict_proba_one``), the prediction scored against its label
(:class:`~stream_processors.learning_metrics.Progressive`), then learned (``learn_one``) — the
loop of ``river.evaluate.progressive_val_score``, so on one partition the final metrics equal
River's exactly. Quality is reported per bucket of ``bucket_size`` samples (``bucket_index`` =
sample index // bucket_size) as update-style ModelQuality records: a bucket's record is emitted
when the next bucket starts and whenever :meth:`SampleLearner.flush` is called (the partial
bucket), so the latest record per ``model|bucket_index`` key is always the cumulative value as
of its end. A bucket's time (``bucket``) is the Kafka record timestamp of its first labelled
sample: samples carry no event time, and the record timestamp is part of the log, so a replay
or a restart gives the same value. Samples published in bulk share milliseconds, so two
buckets may have the same time: ``bucket_index`` is what identifies a bucket.

These streams are the reference evaluation of River's default model: drift is detected and
reported (DriftEvent, metric) but never acted on, so the figures stay comparable with River's.

Mini-batch mode (``batch_size > 1``) predicts a whole batch with the model as of the batch start
(``predict_proba_many``) then learns it (``learn_many``): the semantics of labels delayed by
up to one batch, *not* equal to ``progressive_val_score``; it exists to measure the speed-up.

>>> learner = SampleLearner("demo", bucket_size=2)
>>> out = [learner.learn(i, {"a": float(i % 2)}, i % 2 == 1, offset=i, timestamp=1000 + 10 * i)
...        for i in range(5)]
>>> [(r["bucket_index"], r["bucket"]) for recs in out for r in recs.quality]
[(0, 1000), (1, 1020)]
>>> [(r["bucket_index"], r["bucket"]) for r in learner.flush().quality], learner.progress.labelled
([(2, 1040)], 5)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from river import linear_model, preprocessing

from stream_processors.learning_metrics import Progressive

__all__ = ["Emitted", "SampleLearner", "default_model", "model_name"]

DRIFT_DETECTOR = "ADWIN"


def default_model() -> Any:
    """River's default model for binary classification: ``StandardScaler | LogisticRegression``."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def model_name(topic: str, prefix: str = "") -> str:
    """Model name of a learning stream: ``<name>`` for ``[prefix]samples.<name>``.

    >>> model_name("t1.samples.phishing", "t1.")
    'phishing'
    """
    name = topic[len(prefix):] if prefix and topic.startswith(prefix) else topic
    return name.split("samples.", 1)[-1]


@dataclass
class Emitted:
    """Records to publish after a step: ModelQuality and DriftEvent dicts."""

    quality: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: Emitted) -> None:
        self.quality.extend(other.quality)
        self.drift.extend(other.drift)


class SampleLearner:
    """State of one learning stream: model, progressive metrics, last applied offset.

    The whole object is pickled as the stream's checkpoint; ``offset`` is the last input offset
    applied, so a re-delivered sample (offset <= ``offset``) is skipped and never learned twice.
    """

    def __init__(self, name: str, bucket_size: int = 100, version: str = "v1",
                 drift_delta: float = 0.002) -> None:
        self.name = name
        self.bucket_size = bucket_size
        self.version = version
        self.model = default_model()
        self.progress = Progressive(drift_delta)
        self.offset = -1
        self.bucket: int | None = None
        """Index of the current bucket (sample index // bucket_size)."""
        self.bucket_start: int | None = None
        """Record timestamp (epoch ms) of the current bucket's first labelled sample."""
        self.skipped = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # checkpoints written before buckets had a time: the current bucket takes the
        # timestamp of the next sample it learns
        state.setdefault("bucket_start", None)
        self.__dict__.update(state)

    def _enter(self, index: int, timestamp: int, out: Emitted) -> None:
        bucket = index // self.bucket_size
        if self.bucket is not None and bucket != self.bucket:
            out.extend(self.flush())
            self.bucket_start = None
        self.bucket = bucket
        if self.bucket_start is None:
            self.bucket_start = int(timestamp)

    def _drift(self, timestamp: int, out: Emitted) -> None:
        out.drift.append({
            "model": self.name, "detector": DRIFT_DETECTOR, "labelled": self.progress.labelled,
            "event_time": timestamp, "action": "none", "pipeline_version": self.version,
        })

    def learn(self, index: int, x: dict[str, Any], y: Any, offset: int,
              timestamp: int = 0) -> Emitted:
        """Predict, score, then learn one sample (skipped when ``offset`` was already applied).

        ``timestamp`` is the message's record timestamp (epoch ms): samples have no event time,
        so it dates the bucket the sample starts and a DriftEvent.
        """
        out = Emitted()
        if offset <= self.offset:
            self.skipped += 1
            return out
        self.offset = offset
        if not isinstance(y, bool):
            self.skipped += 1
            return out
        self._enter(index, timestamp, out)
        proba = self.model.predict_proba_one(x)
        if self.progress.update(y, proba):
            self._drift(timestamp, out)
        self.model.learn_one(x, y)
        return out

    def learn_batch(self, rows: list[tuple[int, dict[str, Any], Any, int, int]],
                    timestamp: int = 0) -> Emitted:
        """Mini-batch step: ``predict_proba_many`` on the batch, score, then ``learn_many``.

        ``rows`` are ``(index, x, y, offset, record timestamp)``; ``timestamp`` dates DriftEvents.
        """
        import pandas as pd

        out = Emitted()
        rows = [r for r in rows if r[3] > self.offset and isinstance(r[2], bool)]
        if not rows:
            return out
        self.offset = rows[-1][3]
        frame = pd.DataFrame([r[1] for r in rows])
        probas = self.model.predict_proba_many(frame)
        p_true = probas[True].to_numpy() if True in probas.columns else [0.0] * len(rows)
        for (index, _x, y, _off, ts), p in zip(rows, p_true, strict=True):
            self._enter(index, ts, out)
            if self.progress.update(y, {False: 1.0 - float(p), True: float(p)}):
                self._drift(timestamp, out)
        self.model.learn_many(frame, pd.Series([r[2] for r in rows]))
        return out

    def flush(self) -> Emitted:
        """The current (partial) bucket's record, so the latest value is always published."""
        out = Emitted()
        # no start yet: resumed from a checkpoint older than bucket times, and nothing learned
        # since, so the record published before that checkpoint is still the current one
        if self.bucket is not None and self.bucket_start is not None:
            out.quality.append(self.progress.quality(self.name, self.bucket_start, self.bucket,
                                                     self.version))
        return out
