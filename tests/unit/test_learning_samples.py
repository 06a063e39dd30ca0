"""SampleLearner against River's own progressive_val_score (pure logic, no broker)."""

from __future__ import annotations

import pickle

import pytest
from river import datasets, evaluate, metrics

from stream_processors.samples import SampleLearner, default_model, model_name

T0 = 1_700_000_000_123


def river_reference() -> dict[str, float]:
    """progressive_val_score of the default model on Phishing, one fresh model per metric."""
    out = {}
    for field, metric in (("accuracy", metrics.Accuracy()), ("roc_auc", metrics.ROCAUC()),
                          ("log_loss", metrics.LogLoss())):
        out[field] = evaluate.progressive_val_score(datasets.Phishing(), default_model(), metric).get()
    return out


def test_final_metrics_equal_progressive_val_score() -> None:
    learner = SampleLearner("phishing", bucket_size=100)
    records = []
    for i, (x, y) in enumerate(datasets.Phishing()):
        records += learner.learn(i, x, y, offset=i, timestamp=T0 + i // 3).quality
    records += learner.flush().quality
    ref = river_reference()
    final = records[-1]
    assert final["labelled"] == 1250
    assert [r["bucket_index"] for r in records] == list(range(13))
    # a bucket's time: the record timestamp of its first sample
    assert [r["bucket"] for r in records] == [T0 + k * 100 // 3 for k in range(13)]
    for field, value in ref.items():
        assert final[field] == pytest.approx(value, abs=1e-9), field


def test_checkpoint_resume_equals_uninterrupted_run_and_skips_redelivery() -> None:
    data = list(datasets.Phishing())
    learner = SampleLearner("phishing")
    for i, (x, y) in enumerate(data[:600]):
        learner.learn(i, x, y, offset=i)
    restored: SampleLearner = pickle.loads(pickle.dumps(learner))
    for i, (x, y) in enumerate(data[500:], start=500):  # 100 samples delivered again
        restored.learn(i, x, y, offset=i)
    assert restored.progress.labelled == 1250
    assert restored.skipped == 100
    ref = river_reference()
    assert restored.progress.values()["log_loss"] == pytest.approx(ref["log_loss"], abs=1e-9)


def test_bucket_time_is_the_first_samples_timestamp_in_mini_batches_and_across_a_checkpoint() -> None:
    data = list(datasets.Phishing())[:250]
    one = SampleLearner("phishing", bucket_size=100)
    quality = {}
    for start in range(0, 150, 32):
        rows = [(i, x, y, i, T0 + 7 * i) for i, (x, y) in enumerate(data[start:min(start + 32, 150)], start=start)]
        quality.update({r["bucket_index"]: r["bucket"] for r in one.learn_batch(rows).quality})
    restored: SampleLearner = pickle.loads(pickle.dumps(one))
    for i, (x, y) in enumerate(data[150:], start=150):
        quality.update({r["bucket_index"]: r["bucket"] for r in restored.learn(i, x, y, i, T0 + 7 * i).quality})
    quality.update({r["bucket_index"]: r["bucket"] for r in restored.flush().quality})
    assert quality == {0: T0, 1: T0 + 700, 2: T0 + 1400}


def test_a_checkpoint_from_before_bucket_times_resumes_and_dates_its_bucket_by_the_next_sample() -> None:
    data = list(datasets.Phishing())[:150]
    learner = SampleLearner("phishing", bucket_size=100)
    for i, (x, y) in enumerate(data[:120]):
        learner.learn(i, x, y, i, T0 + i)
    state = dict(learner.__dict__)
    del state["bucket_start"]  # as pickled by a release before buckets had a time
    old = SampleLearner.__new__(SampleLearner)
    old.__setstate__(state)
    assert old.flush().quality == []  # nothing new since its record was published
    out = old.learn(120, *data[120], 120, T0 + 120)
    assert out.quality == [] and old.flush().quality[0]["bucket"] == T0 + 120


def test_mini_batch_mode_learns_everything_and_has_skill() -> None:
    learner = SampleLearner("phishing")
    data = list(datasets.Phishing())
    for start in range(0, len(data), 32):
        rows = [(i, x, y, i, i) for i, (x, y) in enumerate(data[start:start + 32], start=start)]
        learner.learn_batch(rows)
    assert learner.progress.labelled == 1250
    # learn_many takes one SGD step per batch (mean gradient): fewer updates, lower but real skill
    assert learner.progress.values()["roc_auc"] > 0.6


def test_model_name_strips_prefix() -> None:
    assert model_name("abc.samples.phishing", "abc.") == "phishing"
    assert model_name("samples.bananas") == "bananas"
