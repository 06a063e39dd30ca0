"""The fraud model (the generic OnlineModel under the e-commerce spec): delayed labels, deterministic merge,
drift and checkpoints (pure logic)."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from stream_processors.operators.model import OnlineModel
from tests.support.fraud import FraudLearner
from tests.support.learning_synthetic import scenario


def merged(orders: list[dict[str, Any]], labels: list[dict[str, Any]], partitions: int = 2,
           ) -> list[tuple[str, int, str, dict[str, Any], str]]:
    """Interleave like Kafka would: orders and labels of 2 partitions each, by arrival."""
    events = [("order", o["event_time"], o["order_id"], o, f"o/{i % partitions}")
              for i, o in enumerate(orders)]
    events += [("label", lb["label_time"], lb["order_id"], lb, f"l/{i % partitions}")
               for i, lb in enumerate(labels)]
    events.sort(key=lambda e: e[1])
    return events


def run(learner: OnlineModel, events: list[Any], start: int = 0) -> tuple[list[Any], list[Any], list[Any]]:
    quality, drift, scores = [], [], []
    for off, (kind, t, oid, data, src) in enumerate(events[start:], start=start):
        learner.add(kind, t, oid, data, src, off)
        out, sc = learner.release()
        quality += out.quality
        drift += out.drift
        scores += sc
    out, sc = learner.release(-1)
    scores += sc
    quality += out.quality + learner.flush().quality
    drift += out.drift
    return quality, drift, scores


def auc(scores: list[dict[str, Any]], truth: dict[str, bool]) -> float:
    """Exact (rank) ROC AUC: River's ROCAUC uses a few fixed thresholds, too coarse here."""
    ranked = sorted(scores, key=lambda s: s["fraud_score"])
    pos = neg = 0
    wins = 0.0
    for s in ranked:
        if truth[s["order_id"]]:
            pos += 1
            wins += neg
        else:
            neg += 1
    return wins / (pos * neg)


def test_score_is_prediction_of_model_that_learned_labels_up_to_event_time() -> None:
    orders, labels = scenario(300, seed=3)
    learner = FraudLearner(lag_ms=0, sources=("o/0", "o/1", "l/0", "l/1"))
    _, _, scores = run(learner, merged(orders, labels))
    by_id = {s["order_id"]: s for s in scores}
    for o in orders:
        learned = sum(1 for lb in labels if lb["label_time"] <= o["event_time"])
        assert by_id[o["order_id"]]["labelled_before"] == learned
    assert learner.progress.labelled == 300
    assert learner.counts["learned"] == 300 and "orphan_label" not in learner.counts


def test_replay_with_other_interleaving_gives_same_scores_and_model() -> None:
    orders, labels = scenario(400, seed=4)
    a = FraudLearner(lag_ms=10_000, sources=("o/0", "o/1", "l/0", "l/1"))
    b = FraudLearner(lag_ms=10_000, sources=("o/0", "o/1", "l/0", "l/1"))
    ev = merged(orders, labels)
    shuffled = sorted(ev, key=lambda e: (e[1] // 5000, e[2][::-1]))  # reordered within 5 s
    _, _, sa = run(a, ev)
    _, _, sb = run(b, shuffled)
    assert sorted((s["order_id"], s["fraud_score"]) for s in sa) == sorted(
        (s["order_id"], s["fraud_score"]) for s in sb)
    assert a.progress.values() == b.progress.values()


def test_orphan_label_is_counted_and_matched_when_order_arrives() -> None:
    orders, labels = scenario(3, seed=5)
    learner = FraudLearner(lag_ms=0)
    learner.add("label", orders[0]["event_time"] - 10, "o-000000", labels[0] | {"label_time": 0}, "l", 0)
    learner.release(-1)
    assert learner.counts["orphan_label"] == 1
    learner.add("order", orders[0]["event_time"], "o-000000", orders[0], "o", 1)
    _, scores = learner.release(-1)
    assert len(scores) == 1 and learner.counts["orphan_matched"] == 1
    assert learner.progress.labelled == 1


def test_features_expire_after_horizon_and_duplicates_never_learn_twice() -> None:
    orders, _ = scenario(2, seed=6)
    learner = FraudLearner(lag_ms=0, horizon_ms=60_000)
    learner.add("order", orders[0]["event_time"], "o-000000", orders[0], "o", 0)
    learner.add("order", orders[0]["event_time"], "o-000000", orders[0], "o", 1)
    learner.add("label", orders[0]["event_time"] + 1000, "o-000000", {"is_fraud": True}, "l", 2)
    learner.add("label", orders[0]["event_time"] + 1000, "o-000000", {"is_fraud": True}, "l", 3)
    learner.add("order", orders[1]["event_time"], "o-000001", orders[1], "o", 4)
    learner.add("order", orders[1]["event_time"] + 120_000, "o-x", orders[1], "o", 5)
    learner.release(-1)
    assert learner.progress.labelled == 1
    assert learner.counts["duplicate"] == 2
    assert learner.counts["features_expired"] == 1  # o-000001 expired before a label came


def test_checkpoint_restore_redelivery_is_skipped_and_result_identical() -> None:
    orders, labels = scenario(500, seed=8)
    ev = merged(orders, labels)
    ref = FraudLearner(sources=("o/0", "o/1", "l/0", "l/1"))
    run(ref, ev)
    part = FraudLearner(sources=("o/0", "o/1", "l/0", "l/1"))
    for off, (kind, t, oid, data, src) in enumerate(ev[:600]):
        part.add(kind, t, oid, data, src, off)
        part.release()
    restored: OnlineModel = pickle.loads(pickle.dumps(part))
    run(restored, ev, start=450)  # 150 events delivered again after the "crash"
    assert restored.counts["redelivered"] == 150
    assert restored.progress.labelled == 500 == ref.progress.labelled
    assert restored.progress.values() == ref.progress.values()


@pytest.mark.parametrize("policy", ["reset", "challenger"])
def test_drift_detected_and_auc_recovers(policy: str) -> None:
    n, drift_at = 6000, 3000
    orders, labels = scenario(n, drift_at=drift_at, seed=11)
    truth = {lb["order_id"]: lb["is_fraud"] for lb in labels}
    learner = FraudLearner(drift_policy=policy, sources=("o/0", "o/1", "l/0", "l/1"))
    quality, drift, scores = run(learner, merged(orders, labels))
    scores.sort(key=lambda s: s["order_id"])
    before = auc(scores[1000:drift_at], truth)
    just_after = auc(scores[drift_at:drift_at + 500], truth)
    recovered = auc(scores[-1500:], truth)
    print(f"\n{policy}: AUC before={before:.3f} just-after={just_after:.3f} recovered={recovered:.3f} "
          f"detections={[d['labelled'] for d in drift]} counts={learner.counts}")
    assert before > 0.8
    assert just_after < before - 0.3
    assert any(d["labelled"] > drift_at for d in drift)
    assert recovered > 0.8
    assert quality[-1]["labelled"] == n


# -- determinism: the applied sequence is a function of the per-source sequences ----------------
SOURCES = ("o/0", "o/1", "l/0", "l/1")


def per_source(n: int, seed: int) -> dict[str, list[tuple[str, int, str, dict[str, Any], int]]]:
    """Each source's events in its offset order, as the upstream stages write them: orders a little
    out of event-time order, a few far too late (more than the lag behind their partition)."""
    import random

    orders, labels = scenario(n, drift_at=n // 2, seed=seed)
    rng = random.Random(seed)
    out: dict[str, list[Any]] = {s: [] for s in SOURCES}
    for p in (0, 1):
        mine = [o for i, o in enumerate(orders) if i % 2 == p]
        for i in range(0, len(mine) - 4, 4):  # shuffled within 8 s of event time (lag: 10 s)
            block = mine[i:i + 4]
            rng.shuffle(block)
            mine[i:i + 4] = block
        for i in range(50, len(mine) - 60, 97):  # ~2 minutes late on its partition: "late"
            mine.insert(i + 60, mine.pop(i))
        out[f"o/{p}"] = [("order", o["event_time"], o["order_id"], o, k) for k, o in enumerate(mine)]
        out[f"l/{p}"] = [("label", lb["label_time"], lb["order_id"], lb, k)
                         for k, lb in enumerate(lb for j, lb in enumerate(labels) if j % 2 == p)]
    return out


def interleave(sources: dict[str, list[Any]], seed: int, resend: float = 0.0) -> list[tuple[str, Any]]:
    """One arrival order of the merge topic: sources interleaved at random, each in its own order;
    with ``resend``, a stage "restarts" now and then and sends a few of its events again."""
    import random

    rng = random.Random(seed)
    pos = dict.fromkeys(sources, 0)
    merged: list[tuple[str, Any]] = []
    while any(pos[s] < len(evs) for s, evs in sources.items()):
        s = rng.choice([s for s, evs in sources.items() if pos[s] < len(evs)])
        take = rng.randint(1, 40)
        merged += [(s, e) for e in sources[s][pos[s]:pos[s] + take]]
        pos[s] += take
        if resend and rng.random() < resend:
            back = rng.randint(1, 30)
            merged += [(s, e) for e in sources[s][max(0, pos[s] - back):pos[s]]]
    return merged


def publish(merged: list[tuple[str, Any]], seed: int, tails: float = 0.0, restarts: float = 0.0,
            as_read: bool = False,
            ) -> tuple[dict[str, Any], dict[tuple[str, int], Any], list[Any], OnlineModel]:
    """Feed ``merged`` in random batches like the fraud-model agent: release after each batch,
    sometimes publish the provisional tail (a quiet stream), sometimes "kill -9" and resume from
    the last checkpoint with its uncommitted batches re-delivered. Returns what the topics hold
    per key (last value wins: scores by order_id, quality by (model, bucket)) and the drift events.
    ``as_read``: orders are added as the merge record's bytes, like the worker does."""
    import random

    rng = random.Random(seed)
    learner = FraudLearner(lag_ms=10_000, sources=SOURCES)
    scores: dict[str, Any] = {}
    quality: dict[tuple[str, int], Any] = {}
    drift: list[Any] = []

    def emit(out: Any, sc: list[Any]) -> None:
        quality.update({(q["model"], q["bucket"]): q for q in out.quality})
        scores.update({s["order_id"]: s for s in sc})
        drift.extend(out.drift)

    checkpoint, committed, i = pickle.dumps(learner), 0, 0
    while i < len(merged):
        j = min(len(merged), i + rng.randint(1, 300))
        for off in range(i, j):
            src, (kind, t, oid, data, k) = merged[off]
            if as_read and kind == "order":
                data = json.dumps({"kind": kind, "data": data}).encode()
            learner.add(kind, t, oid, data, src, off, source_offset=k)
        out, sc = learner.release()
        out.extend(learner.flush())
        emit(out, sc)
        checkpoint, i = pickle.dumps(learner), j
        if rng.random() < tails:
            emit(*learner.provisional())
        if rng.random() < restarts:  # killed: resume from the checkpoint, from an older commit
            learner = pickle.loads(checkpoint)
            i = rng.randint(committed, i)
        committed = max(committed, i - rng.randint(0, 200))
    emit(*learner.provisional())  # the end of the log: the stream goes quiet
    return scores, quality, drift, learner


def test_arrival_order_pauses_restarts_and_resends_do_not_change_what_is_published() -> None:
    sources = per_source(3000, seed=21)
    ref_scores, ref_quality, ref_drift, ref = publish(interleave(sources, seed=1), seed=1)
    assert ref.counts["late"] > 5 and ref.counts["learned"] > 2500 and ref_drift
    for seed in (2, 3, 4):
        merged = interleave(sources, seed=seed, resend=0.3)
        scores, quality, drift, learner = publish(merged, seed=seed, tails=0.3, restarts=0.1)
        assert learner.counts.get("redelivered_upstream", 0) > 0
        assert learner.counts["late"] == ref.counts["late"]
        assert scores == ref_scores
        assert quality == ref_quality
        assert drift == ref_drift
        assert learner.progress.values() == ref.progress.values()


def test_an_event_at_the_watermark_arriving_after_a_release_keeps_its_place() -> None:
    orders, _ = scenario(3, seed=2)
    a, b, c = ({**o, "event_time": t} for o, t in zip(orders, (50, 100, 200), strict=True))
    lrn = FraudLearner(lag_ms=0, sources=("o/0", "l/0"))
    lrn.add("order", 50, "a", a, "o/0", 0, source_offset=0)
    lrn.add("label", 100, "q", {"is_fraud": False}, "l/0", 1, source_offset=0)
    lrn.add("order", 100, "b", b, "o/0", 2, source_offset=1)
    assert [s["order_id"] for s in lrn.release()[1]] == ["a"]  # b is at the watermark: it waits
    lrn.add("label", 100, "a", {"is_fraud": True}, "l/0", 3, source_offset=1)  # not late: t = watermark
    lrn.add("order", 200, "c", c, "o/0", 4, source_offset=2)
    lrn.add("label", 200, "r", {"is_fraud": False}, "l/0", 5, source_offset=2)
    _, scores = lrn.release()
    # event-time order: label a (t=100) is learned before order b (t=100) is scored
    assert [(s["order_id"], s["labelled_before"]) for s in scores] == [("b", 1)]


def test_provisional_tail_leaves_the_learner_unchanged_and_equals_the_final_release() -> None:
    orders, labels = scenario(400, seed=9)
    lrn = FraudLearner(lag_ms=10_000, sources=("o/0", "o/1", "l/0", "l/1"))
    for off, (kind, t, oid, data, src) in enumerate(merged(orders, labels)):
        lrn.add(kind, t, oid, data, src, off)
        lrn.release()
    assert lrn.buffer
    state = pickle.dumps(lrn)
    out, scores = lrn.provisional()
    assert pickle.dumps(lrn) == state
    end, end_scores = lrn.release(-1)
    end.extend(lrn.flush())
    assert scores == end_scores and out.quality == end.quality and not out.drift


def test_a_checkpoint_from_before_source_offsets_still_loads() -> None:
    orders, _ = scenario(1, seed=1)
    old = FraudLearner(lag_ms=0)
    old.buffer = [(orders[0]["event_time"], 1, "o-000000", 7, orders[0])]  # type: ignore[list-item]  # old 5-field entry
    del old.source_offset
    lrn: OnlineModel = pickle.loads(pickle.dumps(old))
    assert lrn.source_offset == {}
    assert [s["order_id"] for s in lrn.release(-1)[1]] == ["o-000000"]


def test_orders_buffered_as_read_bytes_publish_what_dicts_do() -> None:
    sources = per_source(1500, seed=5)
    ref_scores, ref_quality, ref_drift, ref = publish(interleave(sources, seed=1), seed=1)
    scores, quality, drift, learner = publish(interleave(sources, seed=2, resend=0.2), seed=2,
                                              tails=0.3, restarts=0.1, as_read=True)
    assert (scores, quality, drift) == (ref_scores, ref_quality, ref_drift)
    assert learner.progress.values() == ref.progress.values()


def test_pending_orders_keep_their_record_and_probability_and_old_checkpoints_still_label() -> None:
    orders, labels = scenario(400, seed=3)
    order = {"amount": 9.0, "currency": "EUR", "category": "books", "payment_method": "card",
             "ip_country": "FR", "event_time": 1000}
    lrn = FraudLearner(lag_ms=0, sources=("o/0",))
    lrn.add("order", 1000, "a", json.dumps({"data": order}).encode(), "o/0", 0, source_offset=0)
    lrn.release(-1)
    kept, _, p = lrn.pending["a"]
    assert isinstance(kept, bytes) and isinstance(p, float)  # what the checkpoint pickles
    # a checkpoint written when pending held (features, time, probabilities) labels the same
    events = merged(orders, labels)
    ref, old = FraudLearner(lag_ms=0), FraudLearner(lag_ms=0)
    head = len(events) // 2
    run(ref, events[:head])
    run(old, events[:head])
    old.pending = {oid: (x, t, {False: 1.0 - q, True: q})  # type: ignore[misc]
                   for oid, (x, t, q) in old.pending.items()}
    old = pickle.loads(pickle.dumps(old))
    assert run(old, events, start=head) == run(ref, events, start=head)
    assert old.progress.values() == ref.progress.values()


def test_the_fraud_consumer_commits_the_last_merge_offsets_only_after_the_quiet_tail(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``kappa run --until-drained`` stops once the fraud group has no lag: the merge offsets of
    the last batch must not be committed before the provisional tail of that batch is flushed."""
    from types import SimpleNamespace

    from stream_processors.learning import ModelConsumer

    trace: list[str] = []
    clock = [100.0]

    class Msg:
        def __init__(self, offset: int) -> None:
            self._offset = offset

        def error(self) -> None:
            return None

        def topic(self) -> str:
            return "merge"

        def offset(self) -> int:
            return self._offset

        def value(self) -> bytes:
            return b"{}"

    class Consumer:
        def __init__(self) -> None:
            self.batches = [[Msg(0), Msg(1)], [Msg(2)], [], [], []]

        def consume(self, _n: int, _timeout: float) -> list[Msg]:
            return self.batches.pop(0) if self.batches else []

        def commit(self, offsets: list[Any], asynchronous: bool) -> None:
            trace.append(f"commit {offsets[0].offset}")

    class Lrn:
        settings = SimpleNamespace(fraud_checkpoint_seconds=30.0, fraud_idle_seconds=2.0)
        tail_due, quiet_since, name, learner = False, 0.0, "fraud", None

        def learn(self, rows: list[Any]) -> None:
            trace.append(f"learn {[o for o, _ in rows]}")
            self.tail_due, self.quiet_since = True, clock[0]

        def tail_ready(self, now: float) -> bool:
            return self.tail_due and now - self.quiet_since >= self.settings.fraud_idle_seconds

        def publish_tail(self) -> None:
            trace.append("tail")
            self.tail_due = False

        def flush(self) -> None:
            trace.append("flush")

        def checkpoint_sync(self, _items: Any) -> None:
            trace.append("checkpoint")

    fc = ModelConsumer.__new__(ModelConsumer)
    fc.lrn, fc.consumer, fc.topic, fc.labels = Lrn(), Consumer(), "merge", "labels"  # type: ignore[assignment]
    fc.owned, fc.uncommitted, fc.checkpointed_at, fc.batch, fc.poll_s = True, None, clock[0], 10, 0.2
    fc.checkpointed = None
    monkeypatch.setattr("stream_processors.learning.time.monotonic", lambda: clock[0])
    for dt in (0.0, 0.2, 0.2, 1.0, 1.0):  # two batches, then quiet polls
        clock[0] += dt
        fc.step()
    assert trace == ["learn [0, 1]", "learn [2]", "tail", "flush", "checkpoint", "commit 3"]


def test_a_commit_refused_while_the_group_rejoins_is_retried_not_fatal() -> None:
    """After a broker restart the fraud consumer's commit answered UNKNOWN_MEMBER_ID and the whole
    worker died with a revenue batch in flight. Now: logged, retried at the next checkpoint, the
    checkpoint itself not written twice; a fatal error still raises."""
    from confluent_kafka import KafkaError, KafkaException

    from stream_processors.learning import ModelConsumer

    trace: list[str] = []
    answers = [KafkaError.UNKNOWN_MEMBER_ID, None]

    class Consumer:
        def commit(self, offsets: list[Any], asynchronous: bool) -> None:
            code = answers.pop(0)
            if code is not None:
                trace.append("refused")
                raise KafkaException(KafkaError(code, "Commit failed: Broker: Unknown member"))
            trace.append(f"commit {offsets[0].offset}")

    class Lrn:
        name, learner = "fraud", None

        def checkpoint_sync(self, _items: Any) -> None:
            trace.append("checkpoint")

    fc = ModelConsumer.__new__(ModelConsumer)
    fc.lrn, fc.consumer, fc.topic = Lrn(), Consumer(), "merge"  # type: ignore[assignment]
    fc.uncommitted, fc.checkpointed, fc.checkpointed_at = 7, None, 0.0
    fc.checkpoint()
    assert fc.uncommitted == 7
    fc.checkpoint()
    assert trace == ["checkpoint", "refused", "commit 7"] and fc.uncommitted is None
    answers[:] = [KafkaError._FATAL]
    fc.uncommitted = 9
    with pytest.raises(KafkaException):
        fc.checkpoint()
