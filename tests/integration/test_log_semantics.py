"""Results are a function of the log: a replay on another day, after more of the log was written,
gives what the live run gave — on the real broker, registry and embedded ClickHouse engine.

One log in one KAPPA_HOME, written and processed live in two rounds, then replayed:

1. a generator batch, processed live (v1);
2. a second generator batch over the same user ids whose event times reach back before the
   first batch's end, with many profile updates (valid times inside batch 1's orders), plus
   orders whose event time is ahead of their own Kafka record timestamp; processed live again;
3. a minute after round 2 was published, ``kappa replay --from earliest`` as v2.

Every serving view over v2 must equal the one over v1, fraud scores and model quality included:
the replay applies every user record before the first order (users are read to their end), so
a join on valid time alone would give batch 1's orders profile versions the live run could not
have seen; a "too far ahead" test against the wall clock would accept a minute later what the
live run rejected.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from kappa import topics
from kappa.kafka import client_config, ensure_topics
from kappa.pipeline import current
from kappa.replay import StartPoint, replay
from producers.base import Publisher
from schemas.serde import Encoder, Registry
from sinks.query import query_rows
from tests.conftest import Stack
from tests.integration.test_replay import World, _run, facts
from tests.support.ecommerce import GeneratorConfig, generate, publish_events

pytestmark = pytest.mark.integration

MAX_FUTURE_MS = next(r.params["max"] for r in current().input("orders").rules if r.check == "max_ahead")

MINUTE = 60_000


def _publish(w: World, cfg: GeneratorConfig) -> None:
    records, _ = generate(cfg)
    with Publisher(w.settings(), w.stack.kafka_bootstrap) as pub:
        publish_events(pub, records)
        pub.flush()


def _ahead_orders(w: World, now: int) -> dict[str, tuple[int, int]]:
    """Orders with explicit record timestamps: ``order_id -> (record ts, event time)``."""
    s = w.settings()
    enc = Encoder(Registry(w.stack.schema_registry_url), f"{topics.input_topics(s.topic_prefix).topic('orders')}-value",
                  "orders")
    past = now - 10 * MINUTE
    cases = {
        # 5.5 min ahead of a record published now: rejected live, and still by a replay later
        "ahead-now": (now, now + 330_000),
        # 5.5 min ahead of a record stamped 10 min ago: behind the wall clock, still rejected
        "ahead-past": (past, past + 330_000),
        # 4 min ahead of its record: within the allowance, valid
        "skew-ok": (past, past + 240_000),
    }
    p = Producer(client_config(s, w.stack.kafka_bootstrap, **{"enable.idempotence": True}))
    for oid, (ts, et) in cases.items():
        rec = {"order_id": oid, "user_id": 1, "amount": 42.0, "currency": "EUR", "category": "books",
               "payment_method": "card", "ip_country": "DE", "event_time": et}
        p.produce(topics.input_topics(s.topic_prefix).topic("orders"), enc.encode(rec), b"1", timestamp=ts)
    assert p.flush(30) == 0
    return cases


@pytest.fixture(scope="module")
def log_world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, float]]:
    w = World(stack, tmp_path_factory.mktemp("log-home"), f"ls{os.getpid()}{time.time_ns() % 10**6}.")
    s = w.settings()
    ensure_topics(s, stack.kafka_bootstrap, topics.input_specs(s.partitions, s.topic_prefix))
    now = int(time.time() * 1000)
    start1 = now - 60 * MINUTE - now % MINUTE
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KAPPA_CATEGORY_MAP", raising=False)
        _publish(w, GeneratorConfig(events=1500, seed=31, users=150, start_ms=start1, drift_at=750))
        _run(s, w.v(1))
        # round 2: the same user ids, event times from before batch 1 ended, many profile updates
        _publish(w, GeneratorConfig(events=1500, seed=32, users=150, start_ms=start1 - 5 * MINUTE,
                                    update_rate=0.3, drift_at=750))
        _ahead_orders(w, int(time.time() * 1000))
        published = time.monotonic()
        _run(s, w.v(1))
    yield w, published


def _rejected(w: World, version: str) -> dict[str, str]:
    from sinks.migrate import database

    rows = query_rows(w.settings(), f"SELECT source, reason FROM {database(version)}.rejected_events FINAL "
                                    "WHERE reason LIKE 'future_event_time%'")
    return {r["source"]: r["reason"] for r in rows}


def test_replay_after_more_log_and_a_later_clock_is_identical_to_live(log_world: tuple[World, float]) -> None:
    w, published = log_world
    wait = 65 - (time.monotonic() - published)
    if wait > 0:  # "a minute or more later": the wall clock has moved past the allowance
        time.sleep(wait)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KAPPA_CATEGORY_MAP", raising=False)
        result = replay(w.settings(), w.v(2), StartPoint(None), echo=lambda _: None, poll=1.0, max_seconds=300)
    assert result.drained
    # verdicts on the records with explicit timestamps: the same live and replayed
    live_orders = {r["order_id"] for r in facts(w, w.v(1), "orders") if r["order_id"] in
                   ("ahead-now", "ahead-past", "skew-ok")}
    assert live_orders == {"skew-ok"}
    assert {r["order_id"] for r in facts(w, w.v(2), "orders") if r["order_id"] in
            ("ahead-now", "ahead-past", "skew-ok")} == {"skew-ok"}
    assert len(_rejected(w, w.v(1))) == len(_rejected(w, w.v(2))) >= 2
    assert _rejected(w, w.v(1)) == _rejected(w, w.v(2))
    assert f"more than {MAX_FUTURE_MS // 1000}s ahead" in next(iter(_rejected(w, w.v(2)).values()))
    # round 2 really updated profiles inside batch 1's order times (else the test proves nothing)
    live = facts(w, w.v(1), "orders")
    assert sum(1 for r in live if r["user_country"] is not None) > 1000
    for view in ("orders", "revenue_per_minute", "model_quality", "rejected_events"):
        again = facts(w, w.v(2), view)
        diff = _first_difference(facts(w, w.v(1), view), again)
        assert diff is None, f"{view}: {diff}"


def _first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str | None:
    if a == b:
        return None
    only_a = [r for r in a if r not in b]
    only_b = [r for r in b if r not in a]
    return (f"{len(a)} live vs {len(b)} replayed rows; {len(only_a)} only live, {len(only_b)} only "
            f"replayed; first: {only_a[:1]} vs {only_b[:1]}")
