"""Online models on a labelled stream: score each event at its event time, learn it when its
(delayed) label arrives — a generic operator; a pipeline declares it under ``[models.<name>]``
(stream, label stream, join key, label, features, model; :mod:`kappa.pipeline`).

Semantics (deterministic: a pure function of the log, live, replayed or restarted):

* Events (at their stream's time field) and labels (at the label stream's) of every input
  partition (a *source*: ``<stream>/<p>``, ``<labels>/<p>``) are merged into one
  single-partition topic. The model applies them in the total order ``(time, kind, key, source,
  source offset)``, labels before events at equal times — a key made of the events alone, never
  of their arrival. So **a score is the prediction of the model that has learned exactly the
  labels with a label time <= the event's time** (and whose events it had seen).
* Event-time merge: events wait in a buffer until the *watermark* passes them; watermark = min
  over all sources of the latest time seen on it, minus ``lag_ms``, and only events strictly
  before it are applied. Why nothing can still arrive that sorts before an applied event: per
  source, arrival order is offset order (the stream stage writes each partition's events in
  offset order, the label forwarder each partition's labels), an event re-sent by a restarted
  upstream stage (source offset <= the last one seen from that source) is dropped
  (``redelivered_upstream``), and an event more than ``lag_ms`` behind the latest time of *its
  own* source is ``late`` — neither scored nor learned (a per-source test, hence itself
  deterministic). Every other event is at or after its source's latest time minus the lag, so
  at or after the watermark. The applied sequence is therefore the sorted sequence of all
  non-late events, cut at the watermark, whatever the interleaving of the sources, the batch
  boundaries or the restarts (the checkpoint holds the buffer, the per-source times and offsets,
  and the last merged offset: re-delivered merge records are skipped, ``redelivered``).
  Default lag: 60 s (``fraud_lag_seconds``, the settings' name for every model's lag), the
  window grace.
* The tail: events at or after the watermark wait for more input, and when the inputs stop
  (end of the log, or a pause) the watermark stops too. :meth:`OnlineModel.provisional` then
  applies the whole buffer to a *copy* of the learner and returns what the copy publishes:
  scores and ModelQuality rows, update-style (keyed by the join key and model|bucket), which the
  definitive values overwrite once more input moves the watermark past them. The learner itself
  — its model, metrics, ADWIN, checkpoint — only ever advances along the watermark order. Why
  not release the tail for good when the stream goes quiet, or once the inputs are consumed to
  their end offsets: both cut the sequence at a point set by when the producers paused, so a
  replay reading the same log without that pause would learn in another order. A provisional
  tail never changes the sequence; at the end of a log the buffer holds exactly the non-late
  events at or after the final watermark (a function of the log), so a live run, its replay and
  a restarted learner publish identical rows. Drift events come from the definitive sequence
  only: they are facts, not rows a later value can overwrite.
* A source that is behind (or has no events at all) holds the watermark back: everything
  newer waits in the buffer, and the provisional tail publishes it when the stream is quiet.
  There is deliberately no "idle source" timeout: giving up on a slow source depends on
  timing — in a replay of a long log, the label forwarder runs days of event time ahead of
  the stream stage, and must be waited for. The buffer is bounded by how far the sources are
  apart, not by wall-clock time.
* An event's features are kept until its label arrives, then learned (``learn_one``) after its
  prediction is scored against the label: the progressive metrics compare the prediction made
  at scoring time with the label. Features expire ``horizon_ms`` after the event's time
  (counted ``features_expired``).
* A label whose event is unknown is counted (``orphan_label``) and kept ``horizon_ms``; when its
  event arrives in that time, the event is scored then learned at once (``orphan_matched``);
  otherwise it is dropped and counted (``orphan_expired``). Never silently lost.
* Duplicates (a key in two partitions, an event or a label delivered twice) are dropped by key
  (``duplicate``): a label is never learned twice; the first in merge order wins.
* Quality buckets are event-time minutes (``bucket_ms`` = 60 000): the bucket of a record is the
  minute of the last applied event; the record holds the cumulative metrics as of its end.
  Its ``bucket`` (a time) and ``bucket_index`` are both the minute start in epoch ms.
* Drift: ADWIN on the 0/1 error stream; policy ``reset`` (fresh model), ``challenger`` (a fresh
  model learns beside the champion and replaces it once its log loss over the labels since the
  detection is lower, after ``challenger_min`` labels; the default) or ``none`` (report only).

What a model is — features, River model, label — comes from its :class:`ModelSpec`, built from
the definition by :func:`model_spec`; the spec is not part of the pickled state (a checkpoint
holds the learner's data, the spec names the code), so a checkpoint restores under the spec of
the running definition (:func:`bound_spec`).

>>> spec = ModelSpec("demo", "id", "y", features=lambda e: {"x": float(e["x"])})
>>> lrn = OnlineModel(spec, lag_ms=0, sources=("e/0", "l/0"))
>>> lrn.add("event", 1000, "a", {"x": 1.0}, "e/0", 0, source_offset=0)
True
>>> lrn.add("label", 1500, "a", {"y": True}, "l/0", 1, source_offset=0)
True
>>> lrn.watermark, len(lrn.release()[1])  # the event (t=1000) is before the watermark
(1000, 0)
>>> _, tail = lrn.provisional()  # what a quiet stream publishes; the state is unchanged
>>> [(s["id"], s["demo_score"]) for s in tail], lrn.progress.labelled, len(lrn.buffer)
([('a', 0.5)], 0, 2)
>>> pickle.loads(pickle.dumps(lrn)).spec is spec
True
"""

from __future__ import annotations

import heapq
import math
import pickle
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from river import linear_model, optim

from stream_processors.learning_metrics import Progressive
from stream_processors.samples import DRIFT_DETECTOR, Emitted

if TYPE_CHECKING:
    from kappa.pipeline.definition import Pipeline

__all__ = ["DRIFT_POLICIES", "ModelSpec", "OnlineModel", "bound_spec", "default_model", "field_features",
           "model_spec"]

LABEL, EVENT, OCCURRENCE = 0, 1, 2
_SKIP, _LATE, _TAKE = 0, 1, 2
_LAYOUT = 2
"""Checkpoint layout: 2 = buffer items are features and label values (1: records or bytes)."""
_MAX_NAMES = 1_000_000
DRIFT_POLICIES = ("reset", "challenger", "none")
_NEVER = -(2**62)
_DAY_MS = 86_400_000


def default_model() -> Any:
    """A model's default: logistic regression with Adam (per-weight step sizes, so rare
    indicator features learn as fast as frequent ones)."""
    return linear_model.LogisticRegression(optimizer=optim.Adam(0.01))


def field_features(fields: Sequence[str]) -> Callable[[Mapping[str, Any]], dict[str, float]]:
    """The features of declared ``fields``: numbers as they are, booleans 0/1, strings one-hot
    (``field=value``), missing values left out.

    >>> field_features(("value", "metric", "ok"))({"value": 2, "metric": "temperature", "ok": True})
    {'value': 2.0, 'metric=temperature': 1.0, 'ok': 1.0}
    """
    names = tuple(fields)

    def features(event: Mapping[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in names:
            v = event.get(name)
            if v is None:
                continue
            if isinstance(v, str):
                out[f"{name}={v}"] = 1.0
            else:
                out[name] = float(v)
        return out

    return features


_BOUND: dict[tuple[str, str], ModelSpec] = {}


@dataclass(eq=False)
class ModelSpec:
    """What a model is: its name, join key ``on``, ``label`` field, features and River model.

    Pickled by name (``pipeline``, ``name``) and restored as the spec bound to that name in this
    process (:func:`bound_spec`): a checkpoint holds data, never code.
    """

    name: str
    on: str
    label: str
    features: Callable[[Mapping[str, Any]], dict[str, float]]
    factory: Callable[[], Any] = default_model
    roc_thresholds: int = 10
    """Thresholds of the River ROCAUC (10: River's default; more when probabilities are small)."""
    pipeline: str = ""
    score_field: str = field(default="")
    label_by: str | None = None
    """Occurrence labels (see :class:`OnlineModel`): the field events and label events share."""
    within_ms: int = 0
    features_by: str | None = None
    """Stateful features: ``features(event, state)``, ``state`` a dict per value of this field."""

    def __post_init__(self) -> None:
        self.score_field = self.score_field or f"{self.name}_score"
        _BOUND[(self.pipeline, self.name)] = self

    def __reduce__(self) -> tuple[Any, ...]:
        return bound_spec, (self.pipeline, self.name)


def bound_spec(pipeline: str, name: str) -> ModelSpec:
    """The spec of model ``name`` of ``pipeline`` in this process: the last one built, else the
    selected pipeline's (:func:`kappa.pipeline.current`)."""
    spec = _BOUND.get((pipeline, name))
    if spec is None:
        from kappa.errors import ConfigError
        from kappa.pipeline import current

        pipe = current()
        if pipe.name != pipeline or name not in pipe.models:
            raise ConfigError(f"a checkpoint of model {name!r} of pipeline {pipeline!r} cannot be restored: "
                              f"the selected pipeline is {pipe.name!r} ({pipe.path}) with models "
                              f"{', '.join(pipe.models) or 'none'}")
        spec = model_spec(pipe, name)
    return spec


def model_spec(pipeline: Pipeline, name: str) -> ModelSpec:
    """The spec of ``[models.<name>]`` of ``pipeline``: its features function (a reference) or
    declared feature fields, its model factory (default :func:`default_model`)."""
    m = pipeline.models[name]
    if m.features_function:
        features = pipeline.resolve(m.features_function)
    else:
        features = field_features(m.features)
    factory = pipeline.resolve(m.model) if m.model else default_model
    return ModelSpec(name, m.on, m.label, features, factory, m.roc_thresholds, pipeline.name,
                     label_by=m.label_by, within_ms=m.label_within_ms, features_by=m.features_by)


class OnlineModel:
    """The whole state of one model; pickled as its checkpoint (its spec by name).

    Feed it with :meth:`add_records` (a batch of merge records as read) or :meth:`add` (one
    merged event and its offset in the merged stream), then :meth:`release` to apply what the
    watermark allows; :meth:`provisional` gives the quiet stream's tail without applying it.
    ``offset`` is the last merged offset added: re-delivered events at or below it are skipped.

    The hot path is River's own loop plus the merge: a merge record is parsed once, an event's
    features are computed once, when it is buffered (a pure function of its record), and the
    buffer and the pending events hold them — no record is parsed or featurized again; a label
    is buffered as its value; a binary model's prediction is kept as its probability of True,
    and the progressive metrics take it as such (:meth:`Progressive.update_binary`). Feature
    names are shared between events, so a checkpoint pickles each name once (a buffered
    event's features pickle to a third of its merge record's bytes).
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
        self.progress = Progressive(drift_delta, roc_thresholds=spec.roc_thresholds)
        self.challenger: Any = None
        self.duel = [0.0, 0.0, 0]  # champion loss, challenger loss, labels since detection
        self.pending: dict[str, tuple[dict[str, float] | bytes, int, dict[Any, float] | float]] = {}
        """Scored events waiting for their label: (features, or the merge record they come from
        when added as bytes by :meth:`add`; event time; predicted probabilities, or the
        probability of True of a binary model)."""
        self.orphans: dict[str, tuple[bool, int]] = {}
        self.learned: dict[str, int] = {}
        self.buffer: list[tuple[int, int, str, str, int, int, Any]] = []
        """Heap of what waits for the watermark: (time, kind, key, source, source offset, merged
        offset, item); item: an event's features (or its merge record's bytes, when :meth:`add`
        was given bytes), a label's value."""
        self.source_time: dict[str, int] = dict.fromkeys(sources, _NEVER)
        self.source_offset: dict[str, int] = {}
        self.released = _NEVER
        self.offset = -1
        self.bucket: int | None = None
        self.counts: dict[str, int] = {}
        self.layout = _LAYOUT
        self._names: dict[str, str] = {}
        self.groups: dict[str, list[str]] = {}
        """Occurrence labels: per ``label_by`` value, its scored events waiting for a label event."""
        self.expiring: deque[tuple[int, str, str]] = deque()
        """Occurrence labels: (time, key, group) of the scored events in merge order: labelled
        False once the merge passes time + ``within_ms`` without a label event of their group."""
        self.state: dict[str, tuple[int, dict[str, Any]]] = {}
        """Stateful features: per ``features_by`` value, (last event time, state), least recent first."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_names", None)  # a cache: rebuilt as events come
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # checkpoints written before per-source offsets (and 7-field buffer entries) existed
        state.setdefault("source_offset", {})
        state.setdefault("groups", {})
        state.setdefault("expiring", deque())
        state.setdefault("state", {})
        self.__dict__.update(state)
        self._names = {}
        self.layout, stale = _LAYOUT, state.get("layout", 1) < _LAYOUT
        # Entries of older layouts held an event's record (now its features) and a label's
        # record or merge record (now its value); the heap order is the same (an entry's merged
        # offset is unique, so its item is never compared).
        buffer = []
        for e in state.get("buffer", []):
            old = stale or len(e) != 7
            if len(e) != 7:
                e = (e[0], e[1], e[2], "", -1, e[3], e[4])
            item = e[6]
            if e[1] == LABEL and isinstance(item, dict | bytes):
                e = (*e[:6], self._label_value(item))
            elif e[1] != LABEL and old and isinstance(item, dict):
                e = (*e[:6], self._features(item))
            buffer.append(e)
        self.buffer = buffer

    # -- input -----------------------------------------------------------------------------
    def _features(self, record: Mapping[str, Any], time: int = 0) -> dict[str, float]:
        """The spec's features of ``record``, with names shared between events (see the class doc);
        stateful features (``features_by``) read and update the state of the record's value."""
        names = self._names
        if len(names) > _MAX_NAMES:
            names.clear()
        by = self.spec.features_by
        if by is None:
            x = self.spec.features(record)
        else:
            group = str(record[by])
            kept = self.state.pop(group, None)
            st = {} if kept is None else kept[1]
            x = self.spec.features(record, st)  # type: ignore[call-arg]
            self.state[group] = (max(time, kept[0]) if kept else time, st)  # most recent last
        return {names.setdefault(k, k): v for k, v in x.items()}

    def _item(self, record: Mapping[str, Any], time: int) -> Any:
        """A buffered event's item: its features, with its group for occurrence labels."""
        x = self._features(record, time)
        by = self.spec.label_by
        return x if by is None else (str(record[by]), x)

    def _label_value(self, data: Mapping[str, Any] | bytes) -> Any:
        return (orjson.loads(data)["data"] if isinstance(data, bytes) else data)[self.spec.label]

    def _admit(self, time: int, source: str, offset: int, source_offset: int | None) -> int:
        """_SKIP (merged offset or source offset already seen), _LATE (counted) or _TAKE."""
        if offset <= self.offset:
            self._count("redelivered")
            return _SKIP
        self.offset = offset
        if source_offset is not None:
            if source_offset <= self.source_offset.get(source, -1):
                # re-sent by an upstream stage that restarted: this source already gave it
                self._count("redelivered_upstream")
                return _SKIP
            self.source_offset[source] = source_offset
        seen = self.source_time.get(source, _NEVER)
        if time < seen - self.lag_ms:
            # Later than the lag on its own source: where it would land in the merged order
            # depends on how the sources interleave, so applying it would make the model
            # depend on timing. Counted, not scored, not learned (replay == live).
            self._count("late")
            return _LATE
        if time > seen:
            self.source_time[source] = time
        return _TAKE

    def add(self, kind: str, time: int, key: str, data: dict[str, Any] | bytes, source: str,
            offset: int, source_offset: int | None = None) -> bool:
        """Buffer one merged event (``kind`` "event" or "label"); False when already applied.

        ``offset`` is its offset in the merged stream, ``source_offset`` its offset in its input
        partition ``source`` (None when unknown: then no upstream re-delivery check). ``data`` is
        the event's record, or the JSON merge record holding it under ``"data"``: an event given
        as a record is buffered as its features; given as bytes, it stays bytes until released,
        and its features are then recomputed when its label comes.
        """
        time = int(time)
        verdict = self._admit(time, source, offset, source_offset)
        if verdict != _TAKE:
            return verdict == _LATE
        occurrence = self.spec.label_by is not None
        if kind == "label":
            entry = (time, OCCURRENCE, key, source, -1 if source_offset is None else source_offset, offset, True) \
                if occurrence else (time, LABEL, key, source, -1 if source_offset is None else source_offset,
                                    offset, self._label_value(data))
        else:
            if isinstance(data, bytes) and (occurrence or self.spec.features_by is not None):
                data = orjson.loads(data)["data"]  # stateful: featurized in arrival order, now
            entry = (time, EVENT, key, source, -1 if source_offset is None else source_offset, offset,
                     data if isinstance(data, bytes) else self._item(data, time))
        heapq.heappush(self.buffer, entry)
        return True

    def add_records(self, rows: Sequence[tuple[int, bytes | None]]) -> None:
        """Buffer merge records as read: ``(offset in the merged stream, JSON record)``, each
        ``{"kind", "time", "id", "src", "off", "data"}`` (stream_processors.learning): each record
        parsed once, an event's features computed once."""
        loads, admit, push, buffer = orjson.loads, self._admit, heapq.heappush, self.buffer
        label, item = self.spec.label, self._item
        occurrence = self.spec.label_by is not None
        for offset, value in rows:
            ev = loads(value or b"{}")
            kind, time, src, off = ev["kind"], int(ev["time"]), ev["src"], ev.get("off")
            if admit(time, src, offset, off) != _TAKE:
                continue
            if kind == "label":
                push(buffer, (time, OCCURRENCE, ev["id"], src, -1 if off is None else off, offset, True) if occurrence
                     else (time, LABEL, ev["id"], src, -1 if off is None else off, offset, ev["data"][label]))
            else:
                push(buffer, (time, EVENT, ev["id"], src, -1 if off is None else off, offset, item(ev["data"], time)))

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
        buffer, pop, bucket_ms = self.buffer, heapq.heappop, self.bucket_ms
        label, event = self._label, self._event
        while buffer and buffer[0][0] < bound:
            time, kind, key, _, _, _, item = pop(buffer)
            if self.expiring and time > self.released:
                self._negatives(time, out)  # in the bucket of what was applied before them
            bucket = time // bucket_ms * bucket_ms
            if self.bucket is None or bucket > self.bucket:
                if self.bucket is not None:
                    out.quality.append(self.progress.quality(self.spec.name, self.bucket, self.bucket, self.version))
                self.bucket = bucket
            if time > self.released:
                self.released = time
                self._expire(time)
            if kind == LABEL:
                label(key, item, time, out)
            elif kind == OCCURRENCE:
                self._occurrence(key, time, out)
            else:
                event(key, item, time, out, scores)
        if self.expiring:
            # the watermark passed these events' hours: no label event can still come before it
            # (nor any event: what comes next is at or after it, so the order is the same however
            # the input was batched)
            self._negatives(min(bound, self.watermark), out)
        return out, scores

    def provisional(self) -> tuple[Emitted, list[dict[str, Any]]]:
        """The tail a quiet stream publishes: the buffer applied to a copy, this learner untouched.

        Scores and ModelQuality rows only (no drift events): see the module docstring.
        """
        if not self.buffer:
            return Emitted(), []
        twin: OnlineModel = pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
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

    def _expire(self, now: int) -> None:
        cutoff = now - self.horizon_ms
        state = self.state
        while state:
            group = next(iter(state))
            if state[group][0] >= cutoff:
                break
            del state[group]
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

    def _event(self, key: str, item: dict[str, float] | bytes, time: int, out: Emitted,
               scores: list[dict[str, Any]]) -> None:
        pending = self.pending
        if key in pending or key in self.learned:
            self._count("duplicate")
            return
        group = None
        if isinstance(item, tuple):  # occurrence labels: (group, features)
            group, item = item
        if isinstance(item, bytes):  # added as the merge record: featurized now, kept as bytes
            raw: bytes | None = item
            x = self._features(orjson.loads(item)["data"])
        else:
            raw, x = None, item
        proba = self.model.predict_proba_one(x)
        counts = self.counts
        counts["scored"] = counts.get("scored", 0) + 1
        p = proba.get(True, 0.0)
        spec = self.spec
        scores.append({spec.on: key, spec.score_field: float(p), "model": spec.name,
                       "labelled_before": self.progress.labelled, "event_time": time,
                       "pipeline_version": self.version})
        # Kept until the label: a binary model's prediction as its probability of True alone
        # (the checkpoint pickles every pending event); proba == {False: 1 - p, True: p}
        binary = len(proba) == 2 and True in proba and proba.get(False) == 1.0 - p
        pending[key] = (x if raw is None else raw, time, p if binary else proba)
        if group is not None:
            self.groups.setdefault(group, []).append(key)
            self.expiring.append((time, key, group))
            return
        if key in self.orphans:
            y, label_time = self.orphans.pop(key)
            self._count("orphan_matched")
            self._label(key, y, max(label_time, time), out)

    def _label(self, key: str, y: bool, time: int, out: Emitted) -> None:
        if key in self.learned:
            self._count("duplicate")
            return
        kept = self.pending.pop(key, None)
        if kept is None:
            if key in self.orphans:
                self._count("duplicate")
            else:
                self._count("orphan_label")
                self.orphans[key] = (y, time)
            return
        self._learn(key, kept, y, time, out)

    def _occurrence(self, group: str, time: int, out: Emitted) -> None:
        """A label event of ``group`` at ``time``: each of its events still waiting (all within
        ``within_ms`` before it: older ones were labelled False) is labelled True."""
        keys = self.groups.pop(group, None)
        if not keys:
            self._count("label_without_event")
            return
        self._count("label_events")
        pending = self.pending
        for key in keys:
            kept = pending.pop(key, None)
            if kept is not None:
                self._learn(key, kept, True, time, out)

    def _negatives(self, now: int, out: Emitted) -> None:
        """Events whose ``within_ms`` ended before ``now`` with no label event: labelled False."""
        expiring, pending, groups, within = self.expiring, self.pending, self.groups, self.spec.within_ms
        while expiring and expiring[0][0] + within < now:
            t, key, group = expiring.popleft()
            kept = pending.pop(key, None)
            if kept is None:
                continue
            waiting = groups.get(group)
            if waiting is not None:
                waiting.remove(key)  # the oldest of its group: at the front
                if not waiting:
                    del groups[group]
            self._learn(key, kept, False, t + within, out)

    def _learn(self, key: str, kept: tuple[Any, int, Any], y: bool, time: int, out: Emitted) -> None:
        """Score the kept prediction of ``key`` against ``y``, then learn it."""
        x, _event_time, p = kept
        if isinstance(x, bytes):
            x = self._features(orjson.loads(x)["data"])
        self.learned[key] = time
        if isinstance(p, dict):
            drifted = self.progress.update(y, p)
        else:
            drifted = self.progress.update_binary(y, p)
        counts = self.counts
        counts["learned"] = counts.get("learned", 0) + 1
        if self.challenger is not None:
            self._duel(x, y, p if isinstance(p, dict) else {False: 1.0 - p, True: p})
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
