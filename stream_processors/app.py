"""The Faust app of one pipeline version: ``kappa-<version>`` (= consumer group), two batch agents.

- ``orders`` agent: consumes ``users`` + ``orders`` (co-partitioned by user_id, checked at
  start) in batches, runs :class:`~stream_processors.orders.OrderStage`, writes enriched
  orders, DLQ envelopes and window partials;
- ``revenue`` agent: consumes the partials (repartitioned by window key) and runs
  :class:`~stream_processors.revenue.RevenueStage`; a 1 s timer ticks idle partitions so
  windows close on wall-clock time when the input goes quiet.

State lives in one Faust table ``state`` (RocksDB via rocksdict, changelog
``kappa-<version>-state-changelog``) written in bulk by :class:`~stream_processors.io.TableState`.
Each batch is processed, its outputs and changelog records flushed, and only then are its
events acked (``take_events`` acks after the loop body), so committed offsets never run ahead
of durable results. A 1 s timer (:class:`~stream_processors.stalls.StallWatch`) re-reads a source
partition whose fetched records Faust never delivered. The learning engineer's agents join through
``stream_processors.learning.register(app, settings, version)`` when that module exists.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from confluent_kafka.admin import AdminClient

from kappa import lineage, topics
from kappa.errors import ConfigError
from kappa.kafka import TopicSpec, client_config, ensure_topics, faust_broker_credentials
from kappa.metrics import BATCH_SECONDS
from kappa.settings import Settings
from kappa.stack import endpoints
from schemas.serde import Decoder, Registry
from stream_processors import faust_internals, stalls
from stream_processors.base import Emitted
from stream_processors.dimensions import partition_reader
from stream_processors.io import Outputs, TableState
from stream_processors.orders import OrderStage
from stream_processors.revenue import TICK, RevenueStage

__all__ = ["Pipeline", "app_id", "consumed_topics", "create_app", "partials_topic"]

log = logging.getLogger(__name__)

LeanMonitor = faust_internals.LeanMonitor


BATCH_EVENTS = 5000
"""Max events per batch: large enough to amortise per-batch costs, small enough for latency."""
BATCH_WITHIN = 0.25
"""Seconds a batch may wait to fill up."""


def app_id(version: str) -> str:
    """Faust app id = consumer group of version ``version``."""
    return f"kappa-{version}"


def partials_topic(version: str) -> str:
    """Internal repartition topic of the window partials (keyed by window key)."""
    return topics.output_topics(version).partials


def consumed_topics(settings: Settings, version: str) -> list[str]:
    """Every topic the group ``kappa-<version>`` consumes through this module's agents."""
    inputs = topics.input_topics(settings.topic_prefix)
    return [inputs.users, inputs.orders, partials_topic(version)]


def check_copartitioned(admin: AdminClient, users: str, orders: str) -> int:
    """Partition count shared by ``users`` and ``orders``; ConfigError when they differ."""
    meta = admin.list_topics(timeout=30).topics
    counts = {t: len(meta[t].partitions) if t in meta else 0 for t in (users, orders)}
    if counts[users] != counts[orders] or not counts[users]:
        raise ConfigError(
            f"the orders-users join needs co-partitioned topics, found {counts}: recreate them with "
            "the same partition count (KAPPA_PARTITIONS) and both keyed by str(user_id)")
    return counts[users]


@dataclass
class Pipeline:
    """The app and the objects its agents share (exposed for tests and benchmarks)."""

    app: faust.App
    settings: Settings
    version: str
    outputs: Outputs
    orders: OrderStage | None = None
    revenue: RevenueStage | None = None
    state: TableState | None = None
    crash_after_batches: int = 0
    crash_on_close: bool = False

    async def run_batch(self, stage: OrderStage | RevenueStage, events: list[Any], agent: str) -> None:
        """Process one batch end to end; any failure ends the worker hard (nothing acked).

        The wait for Kafka's acks runs in a thread: meanwhile the event loop keeps fetching and
        buffering the next batch (the events of this one are acked only after we return).
        """
        try:
            with BATCH_SECONDS.labels(agent).time():
                # Faust's messages have every field of base.Message: no copy per event
                out: Emitted = stage.process([e.message for e in events])
                assert self.state is not None
                for partition, items in out.writes.items():
                    self.state.write(partition, items)
                if self.crash_on_close and agent == "revenue" and any(r["final"] for _, r in out.revenue):
                    _crash("SIGKILL after the state of a closing revenue batch, before its outputs")
                self.outputs.emit(out)
                self.state.persisted(await self.outputs.flush_async())
            if agent == "orders" and self.crash_after_batches:
                self.crash_after_batches -= 1
                if not self.crash_after_batches:  # outputs flushed, the batch not acked
                    _crash("SIGKILL after the outputs of this batch")
        except Exception:
            # Exactly-once results rest on re-delivery: dying here is the same as kill -9, which
            # the crash tests prove safe; limping on with a dead agent would not be.
            log.critical("batch of %s failed; exiting so the supervisor restarts this worker",
                         agent, exc_info=True)
            logging.shutdown()
            os._exit(70)


def _crash(why: str) -> None:
    """Crash injection: die as kill -9 would (tests of exactly-once results)."""
    log.warning("crash injection: %s", why)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


def create_app(settings: Settings, version: str, datadir: Path, *,
               batch_events: int = BATCH_EVENTS, batch_within: float = BATCH_WITHIN,
               idle_s: float = 1.0, learning: bool = True) -> Pipeline:
    """Build the Faust app of ``version`` with its state in ``datadir`` (unique per worker)."""
    ep = endpoints(settings)
    # refuses other faust/mode/aiokafka versions; Faust's commit bookkeeping without its
    # duplicate-offset stall, its per-message hand-off without four tasks per message
    faust_internals.install(settings.processor_drop_fetch)
    inputs = topics.input_topics(settings.topic_prefix)
    outputs = topics.output_topics(version)
    partials = partials_topic(version)
    keep = {"retention.ms": str(7 * 24 * 3600 * 1000)}
    ensure_topics(settings, ep.kafka_bootstrap,
                  [*topics.input_specs(settings.partitions, settings.topic_prefix),
                   *outputs.specs(settings.partitions)])
    n = check_copartitioned(AdminClient(client_config(settings, ep.kafka_bootstrap)),
                            inputs.users, inputs.orders)
    ensure_topics(settings, ep.kafka_bootstrap, [TopicSpec(partials, n, keep)])
    # The table changelog below is restored into an empty datadir: it must be this log's, and
    # a datadir left by an earlier binding of this version must not be trusted either.
    if lineage.adopt(datadir, lineage.bind(settings, ep.kafka_bootstrap, version)):
        log.warning("state in %s was built under an earlier binding of %s: emptied, restoring the "
                    "changelog", datadir, version)

    app = faust.App(
        app_id(version),
        Monitor=LeanMonitor,
        broker=f"kafka://{ep.kafka_bootstrap}",
        broker_credentials=faust_broker_credentials(settings),
        datadir=str(datadir),
        store="rocksdb://",
        web_enabled=False,
        autodiscover=False,
        topic_partitions=n,
        topic_replication_factor=1,
        table_standby_replicas=0,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_commit_every=10 * batch_events,  # commits also run every second (below)
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4 * batch_events,
        broker_max_poll_records=batch_events,
        broker_session_timeout=10.0,  # a dead worker's partitions move within ~10 s
        broker_heartbeat_interval=3.0,
    )
    registry = Registry(ep.schema_registry_url)
    out = Outputs(settings, ep.kafka_bootstrap, registry, outputs, partials)
    table = app.Table("state", partitions=n, key_type=bytes, value_type=bytes,
                      options={"driver": "rocksdict"}, help="dedupe ids, user versions, windows")
    state = TableState(table, out)
    grace_ms = int(settings.window_grace_seconds * 1000)
    pipe = Pipeline(app, settings, version, out, state=state,
                    crash_after_batches=settings.processor_crash_after_batches,
                    crash_on_close=settings.processor_crash_on_close)
    pipe.orders = OrderStage(version, inputs.users, inputs.orders, Decoder(registry, "users"),
                             Decoder(registry, "orders"), state, grace_ms,
                             category_map=settings.category_mapping)
    pipe.orders.users_source = partition_reader(settings, ep.kafka_bootstrap, inputs.users)
    pipe.orders.orders_source = partition_reader(settings, ep.kafka_bootstrap, inputs.orders)
    pipe.revenue = RevenueStage(version, state, grace_ms, idle_s=idle_s)
    pipe.revenue.partials_source = partition_reader(settings, ep.kafka_bootstrap, partials)
    source = app.topic(inputs.users, inputs.orders, key_serializer="raw", value_serializer="raw")
    partial_topic = app.topic(partials, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="orders")
    async def orders_agent(stream: Any) -> None:
        async for events in stream.take_events(batch_events, within=batch_within):
            await pipe.run_batch(pipe.orders, events, "orders")  # type: ignore[arg-type]

    @app.agent(partial_topic, name="revenue")
    async def revenue_agent(stream: Any) -> None:
        async for events in stream.take_events(batch_events, within=batch_within):
            await pipe.run_batch(pipe.revenue, events, "revenue")  # type: ignore[arg-type]

    @app.timer(idle_s)
    async def idle_ticks() -> None:
        assert pipe.revenue is not None
        idle = pipe.revenue.idle()
        for partition in idle:
            out.produce(partials, None, TICK, partition)
        if idle:
            state.persisted(await out.flush_async())

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        assert pipe.revenue is not None
        for tp in revoked:
            if tp.topic == partials:
                pipe.revenue.forget(tp.partition)

    if learning:
        _register_learning(app, settings, version, out)
    # every topic an agent consumes (orders, users, partials, the learning's samples.*)
    watch = stalls.StallWatch(app, {t for agent in app.agents.values() for t in agent.channel.topics})

    @app.timer(1.0)
    async def stall_watch() -> None:  # records Faust fetched and never delivered: read again
        await watch.tick()

    return pipe


def _register_learning(app: faust.App, settings: Settings, version: str, out: Outputs) -> None:
    """Let ``stream_processors.learning`` add its agents to this app, when it exists."""
    try:
        module = importlib.import_module("stream_processors.learning")
    except ModuleNotFoundError as exc:
        if exc.name != "stream_processors.learning":
            raise
        return
    register = getattr(module, "register", None)
    if register is not None:
        out.fraud_events = module.fraud_events_topic(version)
        register(app, settings, version)
