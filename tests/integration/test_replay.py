"""``kappa replay`` against the real broker, registry and embedded ClickHouse engine.

One log (generator data under a uuid topic prefix) in one KAPPA_HOME; v1 runs live on it, then
replays build other versions beside it. Tests run in file order and share that state. Version
names are unique per run (``<prefix>v1``...): a version is bound to the log it first ran on
(:mod:`kappa.lineage`), and a broker given by KAPPA_KAFKA_BOOTSTRAP outlives the session.

The fraud model is a function of the log (stream_processors/operators/model.py: event-time merge behind a
watermark, provisional tail), so row-for-row comparisons include each order's fraud_score and
every model_quality metric. Exception: a ``--from`` replay starts the fraud model cold at the
boundary (kappa/replay.py), so its scores from there on are not the live ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from kappa import topics
from kappa.kafka import client_config, ensure_topics
from kappa.replay import (
    NotRetained,
    ReplayError,
    SinkBusy,
    StartPoint,
    _view_sql,
    cleanup,
    parse_start,
    replay,
    start_offsets,
)
from kappa.runner import Pipeline
from kappa.settings import Settings
from sinks.query import query_rows
from tests.conftest import Stack

pytestmark = pytest.mark.integration

CATEGORY_MAP = "toys=kids,books=media"


@dataclass
class World:
    stack: Stack
    home: Path
    prefix: str

    def v(self, n: int) -> str:
        """Version ``v<n>`` of this run (unique on the broker)."""
        return f"{self.prefix.rstrip('.')}v{n}"

    def settings(self, **kw: Any) -> Settings:
        return self.stack.settings(home=self.home, topic_prefix=self.prefix, **kw)


def _run(settings: Settings, version: str) -> None:
    Pipeline(settings, version, echo=lambda _: None).run(until_drained=True, poll=1.0, max_seconds=300)


@pytest.fixture(scope="module")
def world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from producers.base import Publisher
    from tests.support.ecommerce import GeneratorConfig, generate, publish_events

    w = World(stack, tmp_path_factory.mktemp("replay-home"), f"rp{os.getpid()}{time.time_ns() % 10**6}.")
    s = w.settings()
    records, _ = generate(GeneratorConfig(events=2000, seed=11, drift_at=1000))
    ensure_topics(s, stack.kafka_bootstrap, topics.input_specs(s.partitions, s.topic_prefix))
    with Publisher(s, stack.kafka_bootstrap) as pub:
        publish_events(pub, records)
        pub.flush()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KAPPA_CATEGORY_MAP", raising=False)
        _run(s, w.v(1))
    yield w


def facts(w: World, version: str, view: str, scores: bool = True) -> list[dict[str, Any]]:
    """The rows of serving view ``view`` computed over ``version``'s tables, minus lineage columns
    (``scores=False``: orders without their fraud_score)."""
    from sinks.migrate import database

    cols = {
        "orders": "order_id, user_id, amount, currency, category, payment_method, ip_country, "
                  "toUnixTimestamp64Milli(event_time) AS et, user_country, user_segment, late, "
                  "source_partition, source_offset" + (", fraud_score" if scores else ""),
        "revenue_per_minute": "toUnixTimestamp64Milli(window_start) AS ws, category, currency, orders, "
                              "round(revenue, 6) AS revenue",
        # every metric, exactly: the models are deterministic functions of the log
        "model_quality": "model, bucket_index, toUnixTimestamp64Milli(bucket) AS bucket_ms, labelled, "
                         "accuracy, roc_auc, log_loss, drift_detections",
        "rejected_events": "source, reason",
    }[view]
    src = _view_sql(view, database(version)) if version != "serving" else f"kappa.{view}"
    return query_rows(w.settings(), f"SELECT {cols} FROM {src} ORDER BY {cols.split(',')[0].split()[-1]}, "
                                    f"{cols}")


def test_replay_refuses_while_a_live_sink_holds_the_directory(world: World) -> None:
    env = {**world.stack.env(world.home), "KAPPA_TOPIC_PREFIX": world.prefix}
    proc = subprocess.Popen([sys.executable, "-m", "sinks", "serve", "--version", world.v(1)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (world.home / "clickhouse-query.json").exists():
            assert time.monotonic() < deadline, "sink endpoint did not come up"
            time.sleep(0.2)
        with pytest.raises(SinkBusy, match="stop kappa run first, or use a ClickHouse server via KAPPA_CLICKHOUSE_URL"):
            replay(world.settings(), "vbusy", parse_start("earliest"), echo=lambda _: None)
    finally:
        proc.terminate()
        proc.wait(60)


def test_unchanged_replay_is_identical_to_live(world: World) -> None:
    out: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KAPPA_CATEGORY_MAP", raising=False)
        result = replay(world.settings(), world.v(2), StartPoint(None), echo=out.append, poll=1.0,
                        max_seconds=300)
    assert result.drained and not result.swapped
    assert any("lag: users" in line and "ETA" in line for line in out), out[:5]
    assert any(line.startswith(f"replay summary: {world.v(2)} from earliest") for line in out)
    for view in ("orders", "revenue_per_minute", "model_quality", "rejected_events"):
        live, again = facts(world, world.v(1), view), facts(world, world.v(2), view)
        assert live, view
        assert again == live, view
    v = result.verification
    assert v is not None
    assert all(v.stats[k][0] == v.stats[k][1] for k in ("orders", "revenue_per_minute", "rejected_events")), v.lines()
    # the views still read v1: nothing was swapped
    served = query_rows(world.settings(), "SELECT DISTINCT pipeline_version AS v FROM kappa.orders")
    assert {r["v"] for r in served} == {world.v(1)}


def test_replay_from_instant_replaces_only_that_range(world: World) -> None:
    rows = query_rows(world.settings(), "SELECT toUnixTimestamp64Milli(quantileExact(0.5)(event_time)) AS mid "
                                        f"FROM kappa_{world.v(1)}.orders")
    mid = int(rows[0]["mid"]) + 12_345
    start = StartPoint(mid)
    assert start.boundary_ms is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KAPPA_CATEGORY_MAP", raising=False)
        result = replay(world.settings(), world.v(3), start, echo=lambda _: None, poll=1.0, max_seconds=300)
    assert result.drained and result.copied["orders"] > 0
    b = start.boundary_ms
    lineage = query_rows(world.settings(),
                         "SELECT pipeline_version AS v, toUnixTimestamp64Milli(min(event_time)) AS lo, "
                         f"toUnixTimestamp64Milli(max(event_time)) AS hi FROM kappa_{world.v(3)}.orders FINAL "
                         "GROUP BY v")
    by = {r["v"]: r for r in lineage}
    assert int(by[world.v(1)]["hi"]) < b <= int(by[world.v(3)]["lo"])  # before B copied from live, from B recomputed
    # the generator's log is published at once (record time >> event time), so the lookup reads it
    # all and the recomputed range equals the live one exactly
    # fraud scores from B on come from a model that started cold at B: not compared here
    assert facts(world, world.v(3), "orders", scores=False) == facts(world, world.v(1), "orders", scores=False)
    assert facts(world, world.v(3), "revenue_per_minute") == facts(world, world.v(1), "revenue_per_minute")
    # fraud quality: copied before B (same as live), recomputed from B
    live_q = [r for r in facts(world, world.v(1), "model_quality") if r["model"] != "fraud" or int(r["bucket_ms"]) < b]
    new_q = [r for r in facts(world, world.v(3), "model_quality") if r["model"] != "fraud" or int(r["bucket_ms"]) < b]
    assert new_q == live_q


def test_changed_transformation_swap_under_query_loop_equals_fresh_run(world: World) -> None:
    probe = ("SELECT (SELECT count() FROM kappa.orders) AS orders, "
             "(SELECT countIf(category = 'media') FROM kappa.orders) AS media, "
             "(SELECT sum(orders) FROM kappa.revenue_per_minute) AS window_orders, "
             "(SELECT countIf(category = 'media') FROM kappa.revenue_per_minute) AS media_windows, "
             "(SELECT count() FROM kappa.rejected_events) AS rejected, "
             "(SELECT count() FROM kappa.model_quality) AS quality, "
             "(SELECT uniqExact(pipeline_version) FROM kappa.orders) AS versions")
    seen: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                seen.append(query_rows(world.settings(), probe)[0])
            except BaseException as exc:
                errors.append(exc)

    threads: list[threading.Thread] = []

    def on_caught_up(_: object) -> None:
        before = query_rows(world.settings(), probe)[0]
        seen.append(before)
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        threads.append(t)
        time.sleep(1.0)  # the loop is running when the swap starts

    said: list[str] = []
    result = replay(world.settings(category_map=CATEGORY_MAP), world.v(4), parse_start("earliest"), swap_views=True,
                    echo=said.append, poll=1.0, max_seconds=300, on_caught_up=on_caught_up)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert result.swapped and result.swapped_from == world.v(1)
    assert (f"swapped: the serving views now read {world.v(4)} (was {world.v(1)}); `kappa run` (no --version) "
            f"now runs {world.v(4)} and keeps them fresh; drop the old one with: kappa replay --cleanup "
            f"{world.v(1)}") in said
    assert not errors, errors[:3]
    assert result.verification is not None and not result.verification.identical
    assert any("category_map" in e for e in result.verification.explanations)
    assert any(e.startswith("orders: orders per category") for e in result.verification.explanations)
    old, new = seen[0], seen[-1]
    assert old != new and int(old["media"]) == 0 and int(new["media"]) > 0
    assert all(r in (old, new) for r in seen), [r for r in seen if r not in (old, new)][:3]
    assert old in seen[1:] or new in seen[1:]
    assert len(seen) > 5
    # the serving views read v4 ...
    served = query_rows(world.settings(), "SELECT DISTINCT pipeline_version AS v FROM kappa.orders")
    assert {r["v"] for r in served} == {world.v(4)}
    assert (world.home / "live_version.json").read_text().count(f'"{world.v(4)}"') == 1
    # ... whose results equal a fresh run of the changed pipeline on the same log
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KAPPA_CATEGORY_MAP", CATEGORY_MAP)
        _run(world.settings(category_map=CATEGORY_MAP), world.v(5))
    for view in ("orders", "revenue_per_minute", "model_quality", "rejected_events"):
        assert facts(world, "serving", view) == facts(world, world.v(5), view), view


def test_cleanup_refuses_the_live_version_and_drops_an_old_one(world: World) -> None:
    s = world.settings()
    v2, v4 = world.v(2), world.v(4)
    with pytest.raises(ReplayError, match=f"refusing to drop {v4}: it is the live version"):
        cleanup(s, v4, echo=lambda _: None)
    dropped = cleanup(s, v2, echo=lambda _: None)
    assert f"database kappa_{v2}" in dropped and any(d.startswith(f"topic kappa.{v2}.") for d in dropped)
    assert f"topic kappa.{v2}.lineage" in dropped  # the version's log binding goes with it
    assert not query_rows(s, f"SELECT name FROM system.databases WHERE name = 'kappa_{v2}'")
    admin = AdminClient(client_config(s, world.stack.kafka_bootstrap))
    deadline = time.monotonic() + 30
    while any(t.startswith((f"kappa.{v2}.", f"kappa-{v2}-")) for t in admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"{v2} topics still listed"
        time.sleep(0.5)
    assert query_rows(s, "SELECT count() AS n FROM kappa.orders")[0]["n"] > 0  # serving untouched


def test_refuses_a_start_that_is_no_longer_retained(stack: Stack, tmp_path: Path) -> None:
    prefix = f"rt{time.time_ns() % 10**9}."
    s = stack.settings(home=tmp_path, topic_prefix=prefix, partitions=1)
    ensure_topics(s, stack.kafka_bootstrap, topics.input_specs(1, prefix))
    orders = topics.input_topics(prefix).topic("orders")
    now = int(time.time() * 1000)
    p = Producer(client_config(s, stack.kafka_bootstrap))
    for i in range(5):
        p.produce(orders, b"x", b"k", timestamp=now - 3_600_000 + i * 600_000)
    p.flush(10)
    admin = AdminClient(client_config(s, stack.kafka_bootstrap))
    for fut in admin.delete_records([TopicPartition(orders, 0, 2)]).values():
        fut.result()
    deleted_before = now - 3_600_000 + 2 * 600_000  # the oldest retained record's time
    with pytest.raises(NotRetained, match="retains records only since"):
        start_offsets(s, stack.kafka_bootstrap, StartPoint(now - 3 * 3_600_000), echo=lambda _: None)
    got = start_offsets(s, stack.kafka_bootstrap, StartPoint(deleted_before + 20 * 60_000), echo=lambda _: None)
    assert got[(orders, 0)] == 4  # first record >= boundary - 5 min (records every 10 min)
    warned: list[str] = []
    assert start_offsets(s, stack.kafka_bootstrap, StartPoint(None), echo=warned.append) == {}
    assert warned and "no longer holds the first records" in warned[0]


# -- after the swap: which version runs, and the replay/cleanup messages --------------------------
KAPPA = str(Path(sys.executable).with_name("kappa"))


def _kappa(w: World, args: list[str], env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI on this world's home and log (no KAPPA_VERSION unless ``env`` sets it)."""
    full = {**w.stack.env(w.home), "KAPPA_TOPIC_PREFIX": w.prefix, **(env or {})}
    return subprocess.run([KAPPA, *args], env=full, capture_output=True, text=True, timeout=timeout)


def _members(w: World, group: str) -> int:
    admin = AdminClient(client_config(w.settings(), w.stack.kafka_bootstrap))
    return len(admin.describe_consumer_groups([group], request_timeout=10)[group].result().members)


def test_replay_refuses_a_version_that_exists(world: World) -> None:
    v1 = world.v(1)  # ran by `kappa run` (the fixture), not live: a replay into it would process nothing
    out: list[str] = []
    with pytest.raises(ReplayError, match=rf"^{v1} exists \(ran by kappa run\): `kappa replay --cleanup {v1}` "
                                          rf"first, or replay into a new version name, e\.g\. --version "):
        replay(world.settings(), v1, parse_start("earliest"), echo=out.append, poll=1.0, max_seconds=120)
    assert not any(line.startswith("replaying from") for line in out), out


def test_replay_into_the_live_version_suggests_a_free_name(world: World) -> None:
    live = world.v(4)  # swapped in by test_changed_transformation_...; v5 was run there too
    with pytest.raises(ReplayError) as err:
        replay(world.settings(), live, parse_start("earliest"), echo=lambda _: None)
    assert f"{live} is the live version" in str(err.value)
    assert str(err.value).endswith(f"e.g. --version {world.v(6)}"), str(err.value)


def test_cleanup_waits_until_a_stopped_runs_session_expires(world: World) -> None:
    from kappa.runner import sink_group

    v1 = world.v(1)
    env = {**world.stack.env(world.home), "KAPPA_TOPIC_PREFIX": world.prefix}
    proc = subprocess.Popen([sys.executable, "-m", "sinks", "serve", "--version", v1], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while _members(world, sink_group(v1)) == 0:
            assert proc.poll() is None and time.monotonic() < deadline, "the v1 sink did not join its group"
            time.sleep(0.5)
    finally:
        proc.kill()  # gone without leaving its group: listed until its session expires
        proc.wait(30)
    assert _members(world, sink_group(v1)) > 0
    out: list[str] = []
    dropped = cleanup(world.settings(), v1, echo=out.append)
    assert any(line.startswith(f"groups of {v1} still list members: {sink_group(v1)} (1)") and "waiting up to"
               in line for line in out), out
    assert f"database kappa_{v1}" in dropped


def test_plain_run_after_swap_and_cleanup_feeds_the_serving_views(world: World) -> None:
    from producers.base import Publisher

    live, v1, v5 = world.v(4), world.v(1), world.v(5)
    s = world.settings()
    count = "SELECT count() AS n FROM kappa.orders"
    before = int(query_rows(s, count)[0]["n"])
    v1_db = f"SELECT name FROM system.databases WHERE name = 'kappa_{v1}'"
    had_v1 = bool(query_rows(s, v1_db))  # False: dropped by the cleanup test above
    tag = f"after-swap-{uuid.uuid4().hex[:8]}"
    ids = [f"{tag}-{i}" for i in range(100)]
    now = int(time.time() * 1000)
    with Publisher(s, world.stack.kafka_bootstrap) as pub:
        for i, oid in enumerate(ids):
            pub.publish(topics.input_topics(world.prefix).topic("orders"),
                        {"order_id": oid, "user_id": 1 + i % 50, "amount": 10.0 + i, "currency": "EUR",
                         "category": "toys", "payment_method": "card", "ip_country": "DE",
                         "event_time": now}, key=str(1 + i % 50))
        pub.flush()
    # plain `kappa run`: no --version, no KAPPA_VERSION (v4 was built with CATEGORY_MAP)
    r = _kappa(world, ["run", "--until-drained"], {"KAPPA_CATEGORY_MAP": CATEGORY_MAP}, timeout=400)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-1500:])
    assert f"running version {live}:" in r.stdout
    assert int(query_rows(s, count)[0]["n"]) == before + 100
    landed = query_rows(s, "SELECT pipeline_version AS v, category, count() AS n FROM kappa.orders "
                           f"WHERE startsWith(order_id, '{tag}-') GROUP BY v, category")
    assert landed == [{"v": live, "category": "kids", "n": 100}]
    assert bool(query_rows(s, v1_db)) == had_v1  # a cleaned-up v1 is not rebuilt
    # another version, explicitly: refused in one line naming the serving version
    for args, env in ((["run", "--version", v5, "--until-drained"], {}),
                      (["run", "--until-drained"], {"KAPPA_VERSION": v5})):
        r = _kappa(world, args, env, timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{v5} is not the serving version: the views read {live}" in lines[0], lines
        assert "--force" in lines[0]
    status = _kappa(world, ["status"], timeout=60)
    assert f"serving version: {live} (swapped at " in status.stdout, status.stdout
