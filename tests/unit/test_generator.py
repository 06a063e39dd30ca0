"""The e-commerce generator: deterministic, and its manifest follows the pipeline's definitions."""

from __future__ import annotations

import json

import pytest

from kappa.errors import ConfigError
from kappa.pipeline import current
from schemas.fastpath import compile_writer
from schemas.rules import for_input
from schemas.serde import schema_text
from tests.support.ecommerce import ORDER_REASONS, Event, GeneratorConfig, Manifest, generate, manifest_of

START = 1_700_000_000_000
CFG = GeneratorConfig(events=6000, seed=11, start_ms=START, dup_rate=0.02, invalid_rate=0.02,
                      late_rate=0.01)
MIN = 60_000
validate_order, validate_user, validate_label = (for_input(n) for n in ("orders", "users", "order_labels"))


def test_the_generator_breaks_every_declared_order_rule() -> None:
    assert current().input("orders").reasons == ORDER_REASONS


@pytest.fixture(scope="module")
def run() -> tuple[list[Event], Manifest]:
    return generate(CFG)


def _bytes(events: list[Event]) -> list[bytes]:
    writers = {t: compile_writer(json.loads(schema_text(t)), b"") for t in
               ("users", "orders", "order_labels")}
    return [e.key.encode() + b"|" + writers[e.topic](e.value) for e in events]  # type: ignore[misc]


def test_same_seed_same_bytes_other_seed_differs(run: tuple[list[Event], Manifest]) -> None:
    events, manifest = run
    again, manifest2 = generate(CFG)
    assert _bytes(events) == _bytes(again)
    assert manifest == manifest2
    other, _ = generate(GeneratorConfig(events=6000, seed=12, start_ms=START))
    assert _bytes(other) != _bytes(events)


def test_manifest_reconciles(run: tuple[list[Event], Manifest]) -> None:
    events, m = run
    assert m == manifest_of(events, CFG, START)
    assert m.orders_published == CFG.events == sum(e.topic == "orders" for e in events)
    assert m.orders_published == m.valid_unique_orders + m.duplicates + m.invalid_total
    assert m.events == len(events) == m.users + m.user_updates + m.orders_published + m.labels
    assert set(m.invalid) == set(ORDER_REASONS)
    assert m.duplicates > 0 and m.too_late > 0 and m.user_updates > 0
    assert m.labels == m.valid_unique_orders
    on_time = m.valid_unique_orders - m.too_late
    assert sum(w["orders"] for w in m.revenue) == on_time
    assert sum(t["count"] for t in m.valid_totals.values()) == m.valid_unique_orders


def test_users_first_and_valid(run: tuple[list[Event], Manifest]) -> None:
    events, m = run
    assert all(e.kind == "user" for e in events[: m.users])
    now = m.end_ms
    for e in events:
        if e.topic == "users":
            assert validate_user(e.value, now) is None and e.key == str(e.value["user_id"])
        elif e.topic == "order_labels":
            assert validate_label(e.value, now) is None and e.key == e.value["order_id"]
        else:
            assert e.key == str(e.value["user_id"])


def test_lateness_matches_the_processors_definition(run: tuple[list[Event], Manifest]) -> None:
    """Too late on any partitioning: an earlier valid order with the same key is far ahead."""
    events, m = run
    grace = CFG.grace_ms
    max_by_key: dict[str, int] = {}
    global_max = 0
    seen: set[str] = set()
    late_ids = []
    for e in events:
        if e.topic != "orders" or validate_order(e.value, START + 10**11) is not None:
            continue
        oid, et = e.value["order_id"], e.value["event_time"]
        if oid in seen:
            continue
        seen.add(oid)
        window_end = et // MIN * MIN + MIN
        if e.kind == "too_late":
            late_ids.append(oid)
            assert window_end + grace <= max_by_key[e.key]
            assert sum(x.topic == "orders" for x in events[: events.index(e)]) >= 1000
            continue
        assert window_end + grace > global_max  # within grace on every partition
        max_by_key[e.key] = max(max_by_key.get(e.key, 0), et)
        global_max = max(global_max, et)
    assert late_ids == m.too_late_order_ids


def test_labels_after_their_order_and_drift_changes_signal(run: tuple[list[Event], Manifest]) -> None:
    events, m = run
    position = {e.value["order_id"]: i for i, e in enumerate(events)
                if e.topic == "orders" and e.kind in ("order", "too_late")}
    orders = {e.value["order_id"]: e.value for e in events if e.topic == "orders"}
    users = {e.value["user_id"]: e.value for e in events if e.kind == "user"}
    rates = {(a, b): [0, 0] for a in (False, True) for b in (False, True)}
    for i, e in enumerate(events):
        if e.topic == "order_labels":
            assert position[e.value["order_id"]] < i
            order = orders[e.value["order_id"]]
            assert e.value["label_time"] > order["event_time"]
            mismatch = order["ip_country"] != users[order["user_id"]]["country"]
            after = int(order["order_id"].split("-")[1]) >= m.drift_at
            rates[(after, mismatch)][0] += e.value["is_fraud"]
            rates[(after, mismatch)][1] += 1

    def lift(after: bool) -> float:
        (f1, n1), (f0, n0) = rates[(after, True)], rates[(after, False)]
        return (f1 / n1) / (f0 / n0)

    assert lift(False) > 3 and lift(True) < 1.5  # ip_country != country matters before the drift


def test_default_start_ends_before_now_and_the_seed_gives_the_same_times_of_day() -> None:
    now = START + 10 * 86_400_000
    events, m = generate(GeneratorConfig(events=3000, seed=5), now_ms=now)
    assert now - 86_400_000 - MIN < m.end_ms <= now - MIN
    assert m.start_ms % 86_400_000 == 0
    later, _ = generate(GeneratorConfig(events=3000, seed=5), now_ms=now + 5 * 3_600_000 + 1234)
    field = {"users": "updated_at", "orders": "event_time", "order_labels": "label_time"}
    shifts = {b.value[field[a.topic]] - a.value[field[a.topic]] for a, b in zip(events, later, strict=True)}
    assert len(shifts) == 1 and shifts.pop() % 86_400_000 == 0
    for e in events:
        if e.topic == "orders" and e.kind != "invalid":
            assert validate_order(e.value, now) is None


@pytest.mark.parametrize("bad", [{"events": -1}, {"dup_rate": 0.7},
                                 {"dup_rate": 0.2, "invalid_rate": 0.2, "late_rate": 0.2}])
def test_bad_config_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        generate(GeneratorConfig(**{"events": 10, **bad}))  # type: ignore[arg-type]
