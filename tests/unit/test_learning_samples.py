"""SampleLearner against River's own progressive_val_score (pure logic, no broker)."""

from __future__ import annotations

import pickle

import pytest
from river import datasets, evaluate, metrics

from stream_processors.samples import SampleLearner, default_model, model_name


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
        records += learner.learn(i, x, y, offset=i).quality
    records += learner.flush().quality
    ref = river_reference()
    final = records[-1]
    assert final["labelled"] == 1250
    assert [r["bucket"] for r in records] == list(range(13))
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


def test_mini_batch_mode_learns_everything_and_has_skill() -> None:
    learner = SampleLearner("phishing")
    data = list(datasets.Phishing())
    for start in range(0, len(data), 32):
        rows = [(i, x, y, i) for i, (x, y) in enumerate(data[start:start + 32], start=start)]
        learner.learn_batch(rows)
    assert learner.progress.labelled == 1250
    # learn_many takes one SGD step per batch (mean gradient): fewer updates, lower but real skill
    assert learner.progress.values()["roc_auc"] > 0.6


def test_model_name_strips_prefix() -> None:
    assert model_name("abc.samples.phishing", "abc.") == "phishing"
    assert model_name("samples.bananas") == "bananas"
