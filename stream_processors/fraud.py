"""The fraud model: score each order at its event time, learn it when its (delayed) label arrives.

Semantics (deterministic: a pure function of the log, live, replayed or restarted):

* Orders (at ``event_time``) and labels (at ``label_time``) of every input partition (a
  *source*: ``orders/<p>``, ``order_labels/<p>``) are merged into one single-partition topic.
  The model applies them in the total order ``(time, kind, order_id, source, source offset)``,
  labels before orders at equal times — a key made of the events alone, never of their arrival.
  So **a score is the prediction of the model that has learned exactly the labels with
  label_time <= the order's event_time** (and whose orders it had seen).
* Event-time merge: events wait in a buffer until the *watermark* passes them; watermark = min
  over all sources of the latest time seen on it, minus ``lag_ms``, and only events strictly
  before it are applied. Why nothing can still arrive that sorts before an applied event: per
  source, arrival order is offset order (the order stage writes each partition's orders in
  offset order, the label forwarder each partition's labels), an event re-sent by a restarted
  upstream stage (source offset <= the last one seen from that source) is dropped
  (``redelivered_upstream``), and an event more than ``lag_ms`` behind the latest time of *its
  own* source is ``late`` — neither scored nor learned (a per-source test, hence itself
  deterministic). Every other event is at or after its source's latest time minus the lag, so
  at or after the watermark. The applied sequence is therefore the sorted sequence of all
  non-late events, cut at the watermark, whatever the interleaving of the sources, the batch
  boundaries or the restarts (the checkpoint holds the buffer, the per-source times and offsets,
  and the last merged offset: re-delivered merge records are skipped, ``redelivered``).
  Default lag: 60 s (``fraud_lag_seconds``), the window grace, which covers the generator's
  out-of-orderness.
* The tail: events at or after the watermark wait for more input, and when the inputs stop
  (end of the log, or a pause) the watermark stops too. :meth:`FraudLearner.provisional` then
  applies the whole buffer to a *copy* of the learner and returns what the copy publishes:
  scores and ModelQuality rows, update-style (keyed by order_id and model|bucket), which the
  definitive values overwrite once more input moves the watermark past them. The learner itself
  — its model, metrics, ADWIN, checkpoint — only ever advances along the watermark order. Why
  not release the tail for good when the stream goes quiet (as this module once did), or once
  the inputs are consumed to their end offsets: both cut the sequence at a point set by when
  the producers paused, so a replay reading the same log without that pause would learn in
  another order. A provisional tail never changes the sequence; at the end of a log the buffer
  holds exactly the non-late events at or after the final watermark (a function of the log),
  so a live run, its replay and a restarted learner publish identical rows. Drift events come
  from the definitive sequence only: they are facts, not rows a later value can overwrite.
* A source that is behind (or has no events at all) holds the watermark back: everything
  newer waits in the buffer, and the provisional tail publishes it when the stream is quiet.
  There is deliberately no "idle source" timeout: giving up on a slow source depends on
  timing — in a replay of a long log, the label forwarder runs days of event time ahead of
  the order stage, and must be waited for. The buffer is bounded by how far the sources are
  apart, not by wall-clock time.
* An order's features are kept until its label arrives, then learned (``learn_one``) after its
  prediction is scored against the label: the progressive metrics of ``fraud`` compare the
  prediction made at scoring time with the label. Features expire ``horizon_ms`` after the
  order's event time (counted ``features_expired``).
* A label whose order is unknown is counted (``orphan_label``) and kept ``horizon_ms``; when its
  order arrives in that time, the order is scored then learned at once (``orphan_matched``);
  otherwise it is dropped and counted (``orphan_expired``). Never silently lost.
* Duplicates (an order id in two partitions, an order or a label delivered twice) are dropped
  by order_id (``duplicate``): a label is never learned twice; the first in merge order wins.
* Quality buckets are event-time minutes (``bucket_ms`` = 60 000): the bucket of a record is the
  minute of the last applied event; the record holds the cumulative metrics as of its end.
  Its ``bucket`` (a time) and ``bucket_index`` are both the minute start in epoch ms.
* Drift: ADWIN on the 0/1 error stream; policy ``reset`` (fresh model), ``challenger`` (a fresh
  model learns beside the champion and replaces it once its log loss over the labels since the
  detection is lower, after ``challenger_min`` labels; the default) or ``none`` (report only).

Features and model (why): fraud is rare (a few %) and its signal sits in thresholds and
combinations — a large amount *in EUR* whatever the currency, a foreign IP, a days-old account,
night hours, a cheap order in one category. So the features are indicator features a linear
model can combine: cumulative amount thresholds in EUR (reference rates :data:`EUR_RATES`),
account-age thresholds, the hour of day, one-hots, and category x amount band. All come from
the enriched order as of its event time (nothing from the label). The model is a logistic
regression with Adam (per-weight step sizes: rare indicators learn as fast as frequent ones);
no StandardScaler, which would blow rare one-hots up to large values and make SGD unstable.
Its ROC AUC uses :data:`ROC_THRESHOLDS` thresholds instead of River's default 10: fraud
probabilities are mostly below 0.1, where 10 evenly spaced thresholds see a single bin.

>>> f = order_features({"amount": 99.0, "currency": "EUR", "category": "books",
...     "payment_method": "card", "ip_country": "FR", "event_time": 3_600_000,
...     "user_country": "DE", "user_signup_time": 0, "user_segment": "new"})
>>> f["ip_mismatch"], f["unknown_user"], f["currency=EUR"], f["hour=01"], f["account_age<7d"]
(1.0, 0.0, 1.0, 1.0, 1.0)
>>> sorted(k for k in f if k.startswith("amount_eur") or "&" in k)
['amount_eur>=25', 'amount_eur>=50', 'books&amount_eur<120']
"""

from __future__ import annotations

import heapq
import math
import pickle
from typing import Any

import orjson
from river import linear_model, optim

from stream_processors.learning_metrics import Progressive
from stream_processors.samples import DRIFT_DETECTOR, Emitted

__all__ = ["DRIFT_POLICIES", "EUR_RATES", "ROC_THRESHOLDS", "FraudLearner", "fraud_model",
           "order_features"]

MODEL = "fraud"
LABEL, ORDER = 0, 1
DRIFT_POLICIES = ("reset", "challenger", "none")
_NEVER = -(2**62)
_DAY_MS = 86_400_000
ROC_THRESHOLDS = 200
"""Thresholds of the fraud model's River ROCAUC: within 0.001 of the exact AUC on generator data
(10, River's default, reads ~0.60 for an exact 0.71); costs ~90 us per label."""
EUR_RATES: dict[str, float] = {
    "EUR": 1.0, "USD": 0.92, "GBP": 1.17, "JPY": 0.0062, "CHF": 1.05, "CAD": 0.68, "AUD": 0.61,
    "SEK": 0.088, "NOK": 0.087, "DKK": 0.134, "PLN": 0.23, "CZK": 0.04}
"""Reference EUR value of one unit of each accepted currency (feature scaling, not accounting)."""
_AMOUNT_EUR = (25, 50, 100, 200, 400, 800)
_AGE_DAYS = (1, 7, 30, 365)
_BANDS_EUR = (30, 60, 120, 250, 500)


def fraud_model() -> Any:
    """Default fraud model: logistic regression with Adam on indicator features (see above)."""
    return linear_model.LogisticRegression(optimizer=optim.Adam(0.01))


def order_features(order: dict[str, Any]) -> dict[str, float]:
    """Features of an enriched order known at order time (no label leakage)."""
    t = int(order["event_time"])
    hour = (t // 3_600_000) % 24
    country = order.get("user_country")
    signup = order.get("user_signup_time")
    eur = max(float(order["amount"]), 0.0) * EUR_RATES.get(order["currency"], 1.0)
    f = {
        "log_amount_eur": math.log1p(eur),
        f"currency={order['currency']}": 1.0,
        f"category={order['category']}": 1.0,
        f"payment={order['payment_method']}": 1.0,
        f"hour={hour:02d}": 1.0,
        "unknown_user": 1.0 if country is None else 0.0,
        "ip_mismatch": 1.0 if country is not None and order["ip_country"] != country else 0.0,
    }
    for threshold in _AMOUNT_EUR:
        if eur >= threshold:
            f[f"amount_eur>={threshold}"] = 1.0
    band = next((str(b) for b in _BANDS_EUR if eur < b), "inf")
    f[f"{order['category']}&amount_eur<{band}"] = 1.0
    if signup is not None:
        days = max(t - int(signup), 0) / _DAY_MS
        f["log_account_age_days"] = math.log1p(days)
        for limit in _AGE_DAYS:
            if days < limit:
                f[f"account_age<{limit}d"] = 1.0
    if order.get("user_segment"):
        f[f"segment={order['user_segment']}"] = 1.0
    return f


class FraudLearner:
    """The whole state of the fraud model; pickled as its checkpoint.

    Feed it with :meth:`add` (one merged event and its offset in the merged stream), then
    :meth:`release` to apply what the watermark allows; :meth:`provisional` gives the quiet
    stream's tail without applying it. ``offset`` is the last merged offset added: re-delivered
    events at or below it are skipped.

    >>> lrn = FraudLearner(lag_ms=0, sources=("o/0", "l/0"))
    >>> order = {"amount": 9.0, "currency": "EUR", "category": "books", "payment_method": "card",
    ...          "ip_country": "FR", "event_time": 1000}
    >>> lrn.add("order", 1000, "a", order, "o/0", 0, source_offset=0)
    True
    >>> lrn.add("label", 1500, "a", {"is_fraud": False}, "l/0", 1, source_offset=0)
    True
    >>> lrn.watermark, len(lrn.release()[1])  # the order (t=1000) is before the watermark
    (1000, 0)
    >>> _, tail = lrn.provisional()  # what a quiet stream publishes; the state is unchanged
    >>> [s["order_id"] for s in tail], lrn.progress.labelled, len(lrn.buffer)
    (['a'], 0, 2)
    """

    def __init__(self, version: str = "v1", *, lag_ms: int = 5_000, horizon_ms: int = 7 * _DAY_MS,
                 bucket_ms: int = 60_000, drift_policy: str = "challenger", drift_delta: float = 0.002,
                 challenger_min: int = 200, sources: tuple[str, ...] = ()) -> None:
        if drift_policy not in DRIFT_POLICIES:
            from kappa.errors import ConfigError

            raise ConfigError(f"drift policy {drift_policy!r} is not one of {', '.join(DRIFT_POLICIES)}")
        self.version = version
        self.lag_ms = lag_ms
        self.horizon_ms = horizon_ms
        self.bucket_ms = bucket_ms
        self.drift_policy = drift_policy
        self.challenger_min = challenger_min
        self.model = fraud_model()
        self.progress = Progressive(drift_delta, roc_thresholds=ROC_THRESHOLDS)
        self.challenger: Any = None
        self.duel = [0.0, 0.0, 0]  # champion loss, challenger loss, labels since detection
        self.pending: dict[str, tuple[dict[str, float] | bytes, int, dict[Any, float] | float]] = {}
        """Scored orders waiting for their label: (features, or the merge record they come from;
        event time; predicted probabilities, or the probability of fraud of a binary model)."""
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
    def add(self, kind: str, time: int, order_id: str, data: dict[str, Any] | bytes, source: str,
            offset: int, source_offset: int | None = None) -> bool:
        """Buffer one merged event (``kind`` "order" or "label"); False when already applied.

        ``offset`` is its offset in the merged stream, ``source_offset`` its offset in its input
        partition ``source`` (None when unknown: then no upstream re-delivery check). ``data`` is
        the event's record, or the JSON merge record holding it under ``"data"``: the buffer
        holds ``fraud_lag_seconds`` of orders and is pickled with every checkpoint, and bytes
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
        heapq.heappush(self.buffer, (time, LABEL if kind == "label" else ORDER, order_id, source,
                                     -1 if source_offset is None else source_offset, offset, data))
        return True

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
        Returns the ModelQuality/DriftEvent records and the FraudScore records to publish.
        """
        bound = self.watermark if until is None else (2**62 if until == -1 else until)
        out = Emitted()
        scores: list[dict[str, Any]] = []
        while self.buffer and self.buffer[0][0] < bound:
            time, kind, order_id, _, _, _, data = heapq.heappop(self.buffer)
            self._enter(time, out)
            if time > self.released:
                self.released = time
                self._expire(time)
            raw = data if isinstance(data, bytes) else None
            if raw is not None:  # the merge record as read (see add)
                data = orjson.loads(raw)["data"]
            assert isinstance(data, dict)
            if kind == LABEL:
                self._label(order_id, bool(data["is_fraud"]), time, out)
            else:
                self._order(order_id, data, time, out, scores, raw)
        return out, scores

    def provisional(self) -> tuple[Emitted, list[dict[str, Any]]]:
        """The tail a quiet stream publishes: the buffer applied to a copy, this learner untouched.

        Scores and ModelQuality rows only (no drift events): see the module docstring.
        """
        if not self.buffer:
            return Emitted(), []
        twin: FraudLearner = pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        out, scores = twin.release(-1)
        out.extend(twin.flush())
        return Emitted(quality=out.quality), scores

    def flush(self) -> Emitted:
        """The current (partial) bucket's quality record."""
        out = Emitted()
        if self.bucket is not None:
            out.quality.append(self.progress.quality(MODEL, self.bucket, self.bucket, self.version))
        return out

    # -- application -----------------------------------------------------------------------
    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _enter(self, time: int, out: Emitted) -> None:
        bucket = time // self.bucket_ms * self.bucket_ms
        if self.bucket is not None and bucket > self.bucket:
            out.quality.append(self.progress.quality(MODEL, self.bucket, self.bucket, self.version))
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

    def _order(self, order_id: str, data: dict[str, Any], time: int, out: Emitted,
               scores: list[dict[str, Any]], raw: bytes | None = None) -> None:
        if order_id in self.pending or order_id in self.learned:
            self._count("duplicate")
            return
        x = order_features(data)
        proba = self.model.predict_proba_one(x)
        self._count("scored")
        scores.append({"order_id": order_id, "fraud_score": float(proba.get(True, 0.0)), "model": MODEL,
                       "labelled_before": self.progress.labelled, "event_time": time,
                       "pipeline_version": self.version})
        # Kept until the label: as compact as the checkpoint (which pickles every pending order)
        # allows: the merge record's bytes when there are any (the features are recomputed from
        # them, a pure function) and the probability of fraud alone.
        p = proba.get(True, 0.0)
        self.pending[order_id] = (x if raw is None else raw, time,
                                  p if proba == {False: 1.0 - p, True: p} else proba)
        if order_id in self.orphans:
            y, label_time = self.orphans.pop(order_id)
            self._count("orphan_matched")
            self._label(order_id, y, max(label_time, time), out)

    def _label(self, order_id: str, y: bool, time: int, out: Emitted) -> None:
        if order_id in self.learned:
            self._count("duplicate")
            return
        if order_id not in self.pending:
            if order_id in self.orphans:
                self._count("duplicate")
            else:
                self._count("orphan_label")
                self.orphans[order_id] = (y, time)
            return
        kept, _event_time, p = self.pending.pop(order_id)
        x = kept if isinstance(kept, dict) else order_features(orjson.loads(kept)["data"])
        proba = p if isinstance(p, dict) else {False: 1.0 - p, True: p}
        self.learned[order_id] = time
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
            self.model = fraud_model()
        elif action == "challenger" and self.challenger is None:
            self.challenger = fraud_model()
            self.duel = [0.0, 0.0, 0]
        out.drift.append({"model": MODEL, "detector": DRIFT_DETECTOR, "labelled": self.progress.labelled,
                          "event_time": time, "action": action, "pipeline_version": self.version})
