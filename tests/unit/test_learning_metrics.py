"""Progressive metrics: the histogram ROCAUC equals River's ``metrics.ROCAUC`` bit for bit (pure logic)."""

from __future__ import annotations

import math
import pickle
import random

import pytest
from river import metrics

from stream_processors.learning_metrics import ROCAUC, Progressive


def stream(n: int, seed: int, thresholds: int) -> list[tuple[object, float]]:
    """Truths (bools and 0/1 ints) and probabilities: uniform, skewed small, exactly on River's
    thresholds and their neighbours, 0, 1 and NaN."""
    rng = random.Random(seed)
    grid = [i / (thresholds - 1) for i in range(thresholds)]
    out: list[tuple[object, float]] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            p = rng.random()
        elif r < 0.7:
            p = rng.random() ** 6
        elif r < 0.9:
            t = rng.choice(grid)
            p = rng.choice((t, math.nextafter(t, 0.0), math.nextafter(t, 1.0), t - 1e-7, t + 1e-7))
        else:
            p = rng.choice((0.0, 1.0, float("nan"), 1e-300))
        y = rng.random() < (0.1 + 0.6 * p if p == p else 0.3)
        out.append((int(y) if rng.random() < 0.2 else y, min(max(p, 0.0), 1.0) if p == p else p))
    return out


@pytest.mark.parametrize(("thresholds", "seed"), [(10, 1), (200, 2), (2, 3), (37, 4)])
def test_histogram_rocauc_equals_rivers_bit_for_bit_at_every_step(thresholds: int, seed: int) -> None:
    ours, river = ROCAUC(thresholds), metrics.ROCAUC(n_thresholds=thresholds)
    assert ours.thresholds == river.thresholds
    assert ours.get() == river.get()  # empty: both 0
    for i, (y, p) in enumerate(stream(3000, seed, thresholds)):
        proba = {False: 1.0 - p, True: p} if i % 3 else p
        ours.update(y, proba)
        river.update(y, proba)
        if i % 97 == 0 or i < 20:
            a, b = ours.get(), river.get()
            assert a == b or (math.isnan(a) and math.isnan(b)), (i, a, b)
    assert ours.get() == river.get()


def test_a_river_rocauc_converts_to_the_same_counts_and_goes_on_identically() -> None:
    data = stream(2000, 5, 200)
    river, ref = metrics.ROCAUC(n_thresholds=200), metrics.ROCAUC(n_thresholds=200)
    for y, p in data[:1200]:
        river.update(y, p)
        ref.update(y, p)
    ours = ROCAUC.of_river(river)
    direct = ROCAUC(200)
    for y, p in data[:1200]:
        direct.update(y, p)
    assert ours.counts == direct.counts and ours.get() == ref.get()
    for y, p in data[1200:]:
        ours.update(y, p)
        ref.update(y, p)
    assert ours.get() == ref.get()


def test_a_progressive_pickled_with_rivers_rocauc_loads_with_the_histogram() -> None:
    data = [(y, p) for y, p in stream(800, 6, 10) if p == p]  # no NaN: its log loss is NaN
    old, new = Progressive(), Progressive()
    old.roc_auc = metrics.ROCAUC()  # type: ignore[assignment]  # as checkpoints held it before
    for y, p in data[:500]:
        for t in (old, new):
            t.update(bool(y), {False: 1.0 - p, True: p})
    back: Progressive = pickle.loads(pickle.dumps(old))
    assert isinstance(back.roc_auc, ROCAUC)
    for y, p in data[500:]:
        for t in (back, new):
            t.update(bool(y), {False: 1.0 - p, True: p})
    assert back.values() == new.values()
    assert pickle.loads(pickle.dumps(new)).values() == new.values()


def test_progressive_values_equal_rivers_metrics_fed_directly() -> None:
    prog = Progressive(roc_thresholds=200)
    acc, roc, ll = metrics.Accuracy(), metrics.ROCAUC(n_thresholds=200), metrics.LogLoss()
    for y, p in stream(4000, 7, 200):
        if p != p:
            continue
        proba = {False: 1.0 - p, True: p}
        prog.update(bool(y), proba)
        acc.update(bool(y), max(proba, key=proba.get))  # type: ignore[arg-type]
        roc.update(bool(y), proba)
        ll.update(bool(y), proba)
    assert prog.values() == {"accuracy": acc.get(), "roc_auc": float(roc.get()), "log_loss": ll.get()}
