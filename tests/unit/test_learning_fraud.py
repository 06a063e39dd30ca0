"""FraudLearner: delayed labels, deterministic merge, drift and checkpoints (pure logic)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from stream_processors.fraud import FraudLearner
from stream_processors.learning_synthetic import scenario


def merged(orders: list[dict[str, Any]], labels: list[dict[str, Any]], partitions: int = 2,
           ) -> list[tuple[str, int, str, dict[str, Any], str]]:
    """Interleave like Kafka would: orders and labels of 2 partitions each, by arrival."""
    events = [("order", o["event_time"], o["order_id"], o, f"o/{i % partitions}")
              for i, o in enumerate(orders)]
    events += [("label", lb["label_time"], lb["order_id"], lb, f"l/{i % partitions}")
               for i, lb in enumerate(labels)]
    events.sort(key=lambda e: e[1])
    return events


def run(learner: FraudLearner, events: list[Any], start: int = 0) -> tuple[list[Any], list[Any], list[Any]]:
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
    restored: FraudLearner = pickle.loads(pickle.dumps(part))
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
