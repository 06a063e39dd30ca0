"""The model operator as it was written first, kept as the oracle of the optimized one.

:class:`ReferenceModel` is :class:`stream_processors.operators.model.OnlineModel` before its hot
path was optimized: one event at a time, the buffer holding the records (or the merge records'
bytes, parsed again when released and again when labelled), features computed when released and
recomputed when labelled, and River's own ``metrics.Accuracy``, ``ROCAUC`` and ``LogLoss`` objects
(:class:`RiverProgressive`). tests/unit/test_model_reference.py feeds both the same input and
requires the same outputs, bit for bit.
"""

from __future__ import annotations

import heapq
import math
import pickle
from typing import Any

import orjson
from river import drift, metrics

from stream_processors.learning_metrics import predicted_label
from stream_processors.operators.model import _DAY_MS, _NEVER, DRIFT_POLICIES, EVENT, LABEL, ModelSpec
from stream_processors.samples import DRIFT_DETECTOR, Emitted

__all__ = ["ReferenceModel", "RiverProgressive"]


class RiverProgressive:
    """Cumulative Accuracy, ROCAUC, LogLoss, labelled count and an ADWIN on the error stream.

    Pickleable as a whole, so it is checkpointed with its model and resumes where it stopped.
    ``roc_thresholds`` is River's ``ROCAUC(n_thresholds=...)``: keep the default 10 wherever the
    figures must equal ``progressive_val_score`` (the ``samples.*`` streams).
    """

    def __init__(self, drift_delta: float = 0.002, roc_thresholds: int = 10) -> None:
        self.drift_delta = drift_delta
        self.roc_thresholds = roc_thresholds
        self.accuracy = metrics.Accuracy()
        self.roc_auc = metrics.ROCAUC(n_thresholds=roc_thresholds)
        self.log_loss = metrics.LogLoss()
        self.labelled = 0
        self.drift_detections = 0
        self.detector = drift.ADWIN(delta=drift_delta)

    def update(self, y_true: bool, proba: dict[Any, float]) -> bool:
        """Score one prediction made before learning ``y_true``; True when drift is detected."""
        self.labelled += 1
        if not proba:
            return False
        label = predicted_label(proba)
        self.accuracy.update(y_true, label)
        self.roc_auc.update(y_true, proba)
        self.log_loss.update(y_true, proba)
        self.detector.update(0 if label == y_true else 1)
        if self.detector.drift_detected:
            self.drift_detections += 1
            return True
        return False

    def values(self) -> dict[str, float]:
        """Current metric values by ModelQuality field name."""
        return {
            "accuracy": float(self.accuracy.get()),
            "roc_auc": float(self.roc_auc.get()),
            "log_loss": float(self.log_loss.get()),
        }

    def quality(self, model: str, start_ms: int, index: int, version: str) -> dict[str, Any]:
        """A ModelQuality record: cumulative metrics of ``model`` as of the end of bucket
        ``index``, which starts at ``start_ms`` (epoch ms)."""
        return {
            "model": model,
            "bucket": int(start_ms),
            "labelled": self.labelled,
            **self.values(),
            "drift_detections": self.drift_detections,
            "pipeline_version": version,
            "bucket_index": int(index),
        }


class ReferenceModel:
    """The whole state of one model; pickled as its checkpoint (its spec by name).

    Feed it with :meth:`add` (one merged event and its offset in the merged stream), then
    :meth:`release` to apply what the watermark allows; :meth:`provisional` gives the quiet
    stream's tail without applying it. ``offset`` is the last merged offset added: re-delivered
    events at or below it are skipped.
    """

    def __init__(self, spec: ModelSpec, version: str = "v1", *, lag_ms: int = 5_000, horizon_ms: int = 7 * _DAY_MS,
                 bucket_ms: int = 60_000, drift_policy: str = "challenger", drift_delta: float = 0.002,
                 challenger_min: int = 200, sources: tuple[str, ...] = ()) -> None:
        if drift_policy not in DRIFT_POLICIES:
            from kappa.errors import ConfigError

            raise ConfigError(f"drift policy {drift_policy!r} is not one of {', '.join(DRIFT_POLICIES)}")
        self.spec = spec
        self.version = version
        self.lag_ms = lag_ms
        self.horizon_ms = horizon_ms
        self.bucket_ms = bucket_ms
        self.drift_policy = drift_policy
        self.challenger_min = challenger_min
        self.model = self.spec.factory()
        self.progress = RiverProgressive(drift_delta, roc_thresholds=spec.roc_thresholds)
        self.challenger: Any = None
        self.duel = [0.0, 0.0, 0]  # champion loss, challenger loss, labels since detection
        self.pending: dict[str, tuple[dict[str, float] | bytes, int, dict[Any, float] | float]] = {}
        """Scored events waiting for their label: (features, or the merge record they come from;
        event time; predicted probabilities, or the probability of True of a binary model)."""
        self.orphans: dict[str, tuple[bool, int]] = {}
        self.learned: dict[str, int] = {}
        self.buffer: list[tuple[int, int, str, str, int, int, dict[str, Any] | bytes]] = []
        self.source_time: dict[str, int] = dict.fromkeys(sources, _NEVER)
        self.source_offset: dict[str, int] = {}
        self.released = _NEVER
        self.offset = -1
        self.bucket: int | None = None
        self.counts: dict[str, int] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # checkpoints written before per-source offsets (and 7-field buffer entries) existed
        state.setdefault("source_offset", {})
        state["buffer"] = [e if len(e) == 7 else (e[0], e[1], e[2], "", -1, e[3], e[4])
                           for e in state.get("buffer", [])]
        self.__dict__.update(state)

    # -- input -----------------------------------------------------------------------------
    def add(self, kind: str, time: int, key: str, data: dict[str, Any] | bytes, source: str,
            offset: int, source_offset: int | None = None) -> bool:
        """Buffer one merged event (``kind`` "event" or "label"); False when already applied.

        ``offset`` is its offset in the merged stream, ``source_offset`` its offset in its input
        partition ``source`` (None when unknown: then no upstream re-delivery check). ``data`` is
        the event's record, or the JSON merge record holding it under ``"data"``: the buffer
        holds ``fraud_lag_seconds`` of events and is pickled with every checkpoint, and bytes
        cost a fifth of a dict there (and in memory); they are parsed when released.
        """
        if offset <= self.offset:
            self._count("redelivered")
            return False
        self.offset = offset
        if source_offset is not None:
            if source_offset <= self.source_offset.get(source, -1):
                # re-sent by an upstream stage that restarted: this source already gave it
                self._count("redelivered_upstream")
                return False
            self.source_offset[source] = source_offset
        time = int(time)
        seen = self.source_time.get(source, _NEVER)
        if time < seen - self.lag_ms:
            # Later than the lag on its own source: where it would land in the merged order
            # depends on how the sources interleave, so applying it would make the model
            # depend on timing. Counted, not scored, not learned (replay == live).
            self._count("late")
            return True
        if time > seen:
            self.source_time[source] = time
        heapq.heappush(self.buffer, (time, LABEL if kind == "label" else EVENT, key, source,
                                     -1 if source_offset is None else source_offset, offset, data))
        return True

    def add_records(self, rows: Any) -> None:
        """Merge records as read, the way the worker added them (stream_processors.learning)."""
        for offset, value in rows:
            ev = orjson.loads(value or b"{}")
            data = value if ev["kind"] != "label" and value else ev["data"]
            self.add(ev["kind"], ev["time"], ev["id"], data, ev["src"], offset, ev.get("off"))

    @property
    def watermark(self) -> int:
        """Events strictly before this time are released: min latest time over sources, minus lag."""
        if not self.source_time:
            return _NEVER
        return min(self.source_time.values()) - self.lag_ms

    def release(self, until: int | None = None) -> tuple[Emitted, list[dict[str, Any]]]:
        """Apply buffered events before the watermark (``until``: before it; ``-1``: all of them).

        ``-1`` is for the end of a finite input (tests, benchmarks): it commits the learner to
        the tail, which a live stream must not do (see :meth:`provisional`).
        Returns the ModelQuality/DriftEvent records and the score records to publish.
        """
        bound = self.watermark if until is None else (2**62 if until == -1 else until)
        out = Emitted()
        scores: list[dict[str, Any]] = []
        while self.buffer and self.buffer[0][0] < bound:
            time, kind, key, _, _, _, data = heapq.heappop(self.buffer)
            self._enter(time, out)
            if time > self.released:
                self.released = time
                self._expire(time)
            raw = data if isinstance(data, bytes) else None
            if raw is not None:  # the merge record as read (see add)
                data = orjson.loads(raw)["data"]
            assert isinstance(data, dict)
            if kind == LABEL:
                self._label(key, data[self.spec.label], time, out)
            else:
                self._event(key, data, time, out, scores, raw)
        return out, scores

    def provisional(self) -> tuple[Emitted, list[dict[str, Any]]]:
        """The tail a quiet stream publishes: the buffer applied to a copy, this learner untouched.

        Scores and ModelQuality rows only (no drift events): see the module docstring.
        """
        if not self.buffer:
            return Emitted(), []
        twin: ReferenceModel = pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        out, scores = twin.release(-1)
        out.extend(twin.flush())
        return Emitted(quality=out.quality), scores

    def flush(self) -> Emitted:
        """The current (partial) bucket's quality record."""
        out = Emitted()
        if self.bucket is not None:
            out.quality.append(self.progress.quality(self.spec.name, self.bucket, self.bucket, self.version))
        return out

    # -- application -----------------------------------------------------------------------
    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _enter(self, time: int, out: Emitted) -> None:
        bucket = time // self.bucket_ms * self.bucket_ms
        if self.bucket is not None and bucket > self.bucket:
            out.quality.append(self.progress.quality(self.spec.name, self.bucket, self.bucket, self.version))
        if self.bucket is None or bucket > self.bucket:
            self.bucket = bucket

    def _expire(self, now: int) -> None:
        cutoff = now - self.horizon_ms
        for store, what in ((self.pending, "features_expired"), (self.orphans, "orphan_expired"),
                            (self.learned, None)):
            while store:
                key = next(iter(store))
                value = store[key]
                t = value if isinstance(value, int) else value[1]
                if t >= cutoff:
                    break
                del store[key]
                if what:
                    self._count(what)

    def _event(self, key: str, data: dict[str, Any], time: int, out: Emitted,
               scores: list[dict[str, Any]], raw: bytes | None = None) -> None:
        if key in self.pending or key in self.learned:
            self._count("duplicate")
            return
        x = self.spec.features(data)
        proba = self.model.predict_proba_one(x)
        self._count("scored")
        scores.append({self.spec.on: key, self.spec.score_field: float(proba.get(True, 0.0)), "model": self.spec.name,
                       "labelled_before": self.progress.labelled, "event_time": time,
                       "pipeline_version": self.version})
        # Kept until the label: as compact as the checkpoint (which pickles every pending event)
        # allows: the merge record's bytes when there are any (the features are recomputed from
        # them, a pure function) and the probability of fraud alone.
        p = proba.get(True, 0.0)
        self.pending[key] = (x if raw is None else raw, time,
                                  p if proba == {False: 1.0 - p, True: p} else proba)
        if key in self.orphans:
            y, label_time = self.orphans.pop(key)
            self._count("orphan_matched")
            self._label(key, y, max(label_time, time), out)

    def _label(self, key: str, y: bool, time: int, out: Emitted) -> None:
        if key in self.learned:
            self._count("duplicate")
            return
        if key not in self.pending:
            if key in self.orphans:
                self._count("duplicate")
            else:
                self._count("orphan_label")
                self.orphans[key] = (y, time)
            return
        kept, _event_time, p = self.pending.pop(key)
        x = kept if isinstance(kept, dict) else self.spec.features(orjson.loads(kept)["data"])
        proba = p if isinstance(p, dict) else {False: 1.0 - p, True: p}
        self.learned[key] = time
        drifted = self.progress.update(y, proba)
        self._count("learned")
        if self.challenger is not None:
            self._duel(x, y, proba)
        self.model.learn_one(x, y)
        if drifted:
            self._on_drift(time, out)

    def _duel(self, x: dict[str, float], y: bool, proba: dict[Any, float]) -> None:
        def loss(p: dict[Any, float]) -> float:
            q = min(max(p.get(y, 0.0), 1e-15), 1.0)
            return -math.log(q)

        self.duel[0] += loss(proba)
        self.duel[1] += loss(self.challenger.predict_proba_one(x))
        self.duel[2] += 1
        self.challenger.learn_one(x, y)
        if self.duel[2] >= self.challenger_min:
            if self.duel[1] < self.duel[0]:
                self.model = self.challenger
                self._count("challenger_promoted")
            self.challenger = None

    def _on_drift(self, time: int, out: Emitted) -> None:
        action = self.drift_policy
        if action == "reset":
            self.model = self.spec.factory()
        elif action == "challenger" and self.challenger is None:
            self.challenger = self.spec.factory()
            self.duel = [0.0, 0.0, 0]
        out.drift.append({"model": self.spec.name, "detector": DRIFT_DETECTOR, "labelled": self.progress.labelled,
                          "event_time": time, "action": action, "pipeline_version": self.version})
