"""The optimized model operator against its straightforward reference, and its metrics against
River's own (pure logic, no broker).

:class:`tests.support.model_reference.ReferenceModel` is the operator as first written (records
parsed again when released and labelled, features recomputed, River's metric objects). Both are
driven by the same operations — batches of merge records, releases, provisional tails, kill -9
and resume from the last checkpoint with the uncommitted records delivered again, upstream
stages re-sending events — and every output of every step must be equal, floats bit for bit.
"""

from __future__ import annotations

import pickle
import random
from typing import Any

import orjson
import pytest
from river import metrics

from stream_processors.learning_metrics import Progressive
from stream_processors.operators.model import OnlineModel
from tests.support.fraud import FRAUD
from tests.support.learning_synthetic import scenario
from tests.support.model_reference import ReferenceModel

SOURCES = ("o/0", "o/1", "l/0", "l/1")


def per_source(n: int, seed: int) -> dict[str, list[tuple[str, int, str, dict[str, Any], int]]]:
    """Each source's events in offset order: orders a little out of time order, some far too
    late on their partition, a few duplicated order ids and labels, labels of unknown orders,
    labels before their orders."""
    orders, labels = scenario(n, drift_at=n // 2, seed=seed)
    rng = random.Random(seed)
    at = {o["order_id"]: o["event_time"] for o in orders}
    for lb in labels[7::97]:  # a label a second before its order: an orphan until the order comes
        lb["label_time"] = at[lb["order_id"]] - 1000
    labels.sort(key=lambda lb: lb["label_time"])
    for i in range(0, n, 211):  # an order id seen twice (another partition, another record)
        orders.insert(i + 5, {**orders[i], "amount": orders[i]["amount"] + 1.0, "event_time": orders[i]["event_time"]})
    for i in range(0, len(labels), 173):  # a label delivered twice, and one for an order never seen
        labels.insert(i + 1, dict(labels[i]))
        labels.insert(i + 2, {"order_id": f"ghost-{i}", "is_fraud": True, "label_time": labels[i]["label_time"]})
    out: dict[str, list[Any]] = {s: [] for s in SOURCES}
    for p in (0, 1):
        mine = [o for i, o in enumerate(orders) if i % 2 == p]
        for i in range(0, len(mine) - 4, 4):
            block = mine[i:i + 4]
            rng.shuffle(block)
            mine[i:i + 4] = block
        for i in range(50, len(mine) - 60, 89):  # ~2 minutes late on its partition
            mine.insert(i + 60, mine.pop(i))
        out[f"o/{p}"] = [("event", o["event_time"], o["order_id"], o, k) for k, o in enumerate(mine)]
        out[f"l/{p}"] = [("label", lb["label_time"], lb["order_id"], lb, k)
                         for k, lb in enumerate(lb for j, lb in enumerate(labels) if j % 2 == p)]
    return out


def merge_topic(sources: dict[str, list[Any]], seed: int, resend: float) -> list[bytes]:
    """The merge topic's records: sources interleaved at random, each in its own order, with
    upstream stages restarting now and then and sending a few of their records again."""
    rng = random.Random(seed)
    pos = dict.fromkeys(sources, 0)
    out: list[bytes] = []

    def record(src: str, e: Any) -> bytes:
        kind, t, key, data, off = e
        return orjson.dumps({"kind": kind, "time": t, "id": key, "src": src, "off": off, "data": data})

    while any(pos[s] < len(evs) for s, evs in sources.items()):
        s = rng.choice([s for s, evs in sources.items() if pos[s] < len(evs)])
        take = rng.randint(1, 40)
        out += [record(s, e) for e in sources[s][pos[s]:pos[s] + take]]
        pos[s] += take
        if rng.random() < resend:
            back = rng.randint(1, 30)
            out += [record(s, e) for e in sources[s][max(0, pos[s] - back):pos[s]]]
    return out


def drive(learner: Any, records: list[bytes], seed: int, tails: float, restarts: float,
          per_record: bool = False) -> tuple[list[Any], Any]:
    """What a model consumer does with ``records``: random batches added and released (with
    the partial bucket), sometimes the provisional tail, sometimes a kill -9 and a resume from
    the last checkpoint, the records after the last commit delivered again. Every output in
    order, and the last learner. ``per_record``: :meth:`add` with the parsed record instead."""
    rng = random.Random(seed)
    outputs: list[Any] = []
    checkpoint, committed, i = pickle.dumps(learner), 0, 0
    while i < len(records):
        j = min(len(records), i + rng.randint(1, 400))
        if per_record:
            for off in range(i, j):
                ev = orjson.loads(records[off])
                learner.add(ev["kind"], ev["time"], ev["id"], ev["data"], ev["src"], off, ev["off"])
        else:
            learner.add_records([(off, records[off]) for off in range(i, j)])
        out, scores = learner.release()
        out.extend(learner.flush())
        outputs.append(("batch", i, j, out.quality, out.drift, scores))
        if rng.random() < 0.3:  # a checkpoint; the commit after it may not have happened yet
            checkpoint = pickle.dumps(learner)
            committed = max(committed, j - rng.randint(0, 300))
        i = j
        if rng.random() < tails:
            tail, tail_scores = learner.provisional()
            outputs.append(("tail", tail.quality, tail.drift, tail_scores))
        if rng.random() < restarts:
            learner = pickle.loads(checkpoint)
            i = committed
            outputs.append(("restart", i))
    tail, tail_scores = learner.provisional()
    outputs.append(("end", tail.quality, tail_scores, learner.progress.values(), learner.counts))
    return outputs, learner


@pytest.mark.parametrize(("policy", "lag_ms", "seed"), [("challenger", 10_000, 1), ("reset", 10_000, 2),
                                                         ("none", 0, 3), ("challenger", 60_000, 4)])
def test_optimized_learner_publishes_what_the_reference_does_step_by_step(policy: str, lag_ms: int,
                                                                           seed: int) -> None:
    records = merge_topic(per_source(3000, seed=20 + seed), seed=seed, resend=0.25)
    assert len(records) > 6000

    def make(cls: Any) -> Any:
        return cls(FRAUD, lag_ms=lag_ms, drift_policy=policy, sources=SOURCES, horizon_ms=3_600_000)

    ref_out, ref = drive(make(ReferenceModel), records, seed, tails=0.2, restarts=0.15)
    out, lrn = drive(make(OnlineModel), records, seed, tails=0.2, restarts=0.15)
    assert isinstance(lrn, OnlineModel)
    for k, (a, b) in enumerate(zip(out, ref_out, strict=True)):
        assert a == b, f"step {k}: {str(a)[:300]} != {str(b)[:300]}"
    assert lrn.counts == ref.counts
    assert lrn.counts["late"] > 10 and lrn.counts["redelivered"] > 50
    assert lrn.counts["redelivered_upstream"] > 100 and lrn.counts["duplicate"] > 10
    assert lrn.counts["orphan_label"] > 10 and lrn.counts["orphan_matched"] > 10
    assert lrn.counts["learned"] > 1400
    if policy != "none":
        assert any(step[0] == "batch" and step[4] for step in out)  # drift events were compared
    # the learner's own state as the reference's: the model's next predictions, pending probabilities
    x = FRAUD.features(per_source(3, seed=1)["o/0"][0][3])
    assert lrn.model.predict_proba_one(x) == ref.model.predict_proba_one(x)
    assert {k: v[2] for k, v in lrn.pending.items()} == {k: v[2] for k, v in ref.pending.items()}


def test_records_added_one_by_one_as_dicts_publish_the_same() -> None:
    records = merge_topic(per_source(2000, seed=7), seed=7, resend=0.2)
    a, _ = drive(OnlineModel(FRAUD, lag_ms=10_000, sources=SOURCES), records, 7, tails=0.2, restarts=0.1)
    b, _ = drive(OnlineModel(FRAUD, lag_ms=10_000, sources=SOURCES), records, 7, tails=0.2, restarts=0.1,
                 per_record=True)
    c, _ = drive(ReferenceModel(FRAUD, lag_ms=10_000, sources=SOURCES), records, 7, tails=0.2, restarts=0.1,
                 per_record=True)
    assert a == b == c


def old_checkpoint(ref: ReferenceModel) -> bytes:
    """The bytes a checkpoint of the operator held before the optimization: the reference's
    state under the operator's class (buffer of records and bytes, River's ROCAUC)."""
    state = dict(ref.__dict__)
    progress = Progressive.__new__(Progressive)
    progress.__dict__.update(ref.progress.__dict__)
    old = OnlineModel.__new__(OnlineModel)
    old.__dict__.update(state, progress=progress)
    assert isinstance(progress.roc_auc, metrics.ROCAUC) and "layout" not in old.__dict__
    return pickle.dumps(old)


def test_a_checkpoint_of_the_reference_layout_restores_and_goes_on_identically() -> None:
    records = merge_topic(per_source(2500, seed=9), seed=9, resend=0.2)
    ref = ReferenceModel(FRAUD, lag_ms=60_000, sources=SOURCES)
    cut = len(records) // 2
    ref.add_records([(off, records[off]) for off in range(cut)])
    ref.release()
    assert len(ref.buffer) > 50 and len(ref.pending) > 50
    assert any(isinstance(e[6], bytes) for e in ref.buffer) and any(isinstance(e[6], dict) for e in ref.buffer)
    lrn = pickle.loads(old_checkpoint(ref))
    assert isinstance(lrn, OnlineModel)
    rest = [(off, records[off]) for off in range(cut - 300, len(records))]  # some delivered again
    for learner in (ref, lrn):
        learner.add_records(rest)
    a, b = ref.release(), lrn.release()
    assert (a[0].quality, a[0].drift, a[1]) == (b[0].quality, b[0].drift, b[1])
    assert ref.provisional()[1] == lrn.provisional()[1]
    assert lrn.progress.values() == ref.progress.values() and lrn.counts == ref.counts


def test_metrics_equal_rivers_fed_with_the_published_scores() -> None:
    """ROCAUC, Accuracy and LogLoss of River, fed directly with each learned label and the score
    published for its order, in the order the labels are learned (label time, then order id):
    the learner's quality rows hold exactly these values."""
    n = 4000
    orders, labels = scenario(n, drift_at=n // 2, seed=13)
    merged = sorted([("event", o["event_time"], o["order_id"], o) for o in orders]
                    + [("label", lb["label_time"], lb["order_id"], lb) for lb in labels], key=lambda e: e[1])
    run = OnlineModel(FRAUD, lag_ms=10_000, sources=("o/0", "l/0"))
    published: list[dict[str, Any]] = []
    for off, (kind, t, key, data) in enumerate(merged):
        run.add(kind, t, key, data, "o/0" if kind == "event" else "l/0", off)
        published += run.release()[1]
    published += run.release(-1)[1]
    assert run.counts["learned"] == n and run.progress.labelled == n
    score = {s["order_id"]: s["fraud_score"] for s in published}
    acc, roc, ll = metrics.Accuracy(), metrics.ROCAUC(n_thresholds=FRAUD.roc_thresholds), metrics.LogLoss()
    for lb in sorted(labels, key=lambda r: (r["label_time"], r["order_id"])):
        p = score[lb["order_id"]]
        proba = {False: 1.0 - p, True: p}
        acc.update(lb["is_fraud"], max(proba, key=proba.get))  # type: ignore[arg-type]  # River's predict_one
        roc.update(lb["is_fraud"], proba)
        ll.update(lb["is_fraud"], proba)
    final = run.flush().quality[-1]
    assert (final["accuracy"], final["roc_auc"], final["log_loss"]) == (acc.get(), float(roc.get()), ll.get())
