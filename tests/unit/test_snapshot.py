"""Checkpoint bytes pickled in a forked child: the same bytes as in-process, errors surface here."""

from __future__ import annotations

import pickle
import threading

import cramjam
import pytest

from stream_processors.operators.model import OnlineModel
from stream_processors.snapshot import blob, snapshot
from tests.support.fraud import FraudLearner


def _learner() -> OnlineModel:
    lrn = FraudLearner(lag_ms=0, sources=("o/0", "l/0"))
    for i in range(2000):
        lrn.add("order", 1000 + i, f"o{i}", {"amount": float(i), "currency": "EUR", "category": "books",
                                            "payment_method": "card", "ip_country": "FR",
                                            "event_time": 1000 + i}, "o/0", i, source_offset=i)
    return lrn


def test_the_child_gives_the_in_process_bytes_and_they_load_back() -> None:
    lrn = _learner()
    data = snapshot(lrn)
    assert data == blob(lrn)
    back = pickle.loads(bytes(cramjam.lz4.decompress(data)))
    assert back.offset == lrn.offset == 1999 and len(back.buffer) == len(lrn.buffer) == 2000


def test_a_snapshot_from_another_thread_while_this_one_holds_a_lock() -> None:
    lrn, out = _learner(), []
    with threading.Lock():  # a lock held elsewhere at fork time does not reach the child's work
        t = threading.Thread(target=lambda: out.append(snapshot(lrn)))
        t.start()
        t.join(30)
    assert out == [blob(lrn)]


def test_an_object_that_cannot_be_pickled_raises_the_real_error() -> None:
    with pytest.raises((TypeError, pickle.PicklingError, AttributeError)):
        snapshot({"f": lambda: None})
