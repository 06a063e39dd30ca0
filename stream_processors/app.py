"""The Faust app of one pipeline version: ``<db>-<version>`` (= consumer group), batch agents
derived from the definition.

- an agent per stream input: consumes the stream (with its enrichment's table, co-partitioned
  by the join key, checked at start) in batches, runs :class:`~stream_processors.stream.StreamStage`,
  writes the valid events, DLQ envelopes and window partials (two joined streams share one
  agent: :class:`~stream_processors.joined.JoinedStage`);
- an agent per window: consumes its partials (repartitioned by window key) and runs
  :class:`~stream_processors.window_stage.WindowStage`; a 1 s timer ticks idle partitions so
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

import asyncio
import importlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from confluent_kafka.admin import AdminClient

from kappa import lineage, topics
from kappa.errors import ConfigError
from kappa.kafka import TopicSpec, client_config, ensure_topics, faust_broker_credentials, replication
from kappa.metrics import BATCH_SECONDS
from kappa.pipeline import current
from kappa.pipeline.derive import Names
from kappa.settings import Settings
from kappa.stack import endpoints
from schemas.serde import Decoder, Registry
from stream_processors import faust_internals, stalls
from stream_processors.base import Emitted
from stream_processors.dimensions import partition_reader
from stream_processors.fast_source import FastSource
from stream_processors.io import Outputs, Route, TableState
from stream_processors.joined import JoinedStage
from stream_processors.stream import StreamStage
from stream_processors.window_stage import TICK, WindowStage

__all__ = ["Pipeline", "app_id", "consumed_topics", "create_app", "partials_topic"]

log = logging.getLogger(__name__)

LeanMonitor = faust_internals.LeanMonitor


BATCH_EVENTS = 5000
"""Max events per batch: large enough to amortise per-batch costs, small enough for latency."""
BATCH_WITHIN = 0.25
"""Seconds a batch may wait to fill up."""


def app_id(version: str) -> str:
    """Faust app id = consumer group of version ``version`` (of the selected pipeline)."""
    return Names(current(), version).group


def partials_topic(version: str, window: str | None = None) -> str:
    """Internal repartition topic of a window's partials (keyed by window key; default: the first)."""
    pipe = current()
    return Names(pipe, version).partials(window or next(iter(pipe.windows)))


def consumed_topics(settings: Settings, version: str) -> list[str]:
    """Every topic the group ``<database>-<version>`` consumes through this module's stage agents."""
    pipe = current()
    names = Names(pipe, version, settings.topic_prefix)
    out = []
    for members in names.agents().values():
        for s in members:
            out.append(names.input_topic(s))
            if s in pipe.enrich:
                out.append(names.input_topic(pipe.enrich[s].table))
    return out + [names.partials(w) for w in pipe.windows] + [names.ticks(a) for a in names.ticked()]


def check_copartitioned(admin: AdminClient, table: str, stream: str) -> int:
    """Partition count shared by ``table`` and ``stream``; ConfigError when they differ."""
    meta = admin.list_topics(timeout=30).topics
    counts = {t: len(meta[t].partitions) if t in meta else 0 for t in (table, stream)}
    if counts[table] != counts[stream] or not counts[table]:
        raise ConfigError(
            f"the {stream}-{table} join needs co-partitioned topics, found {counts}: recreate them with "
            "the same partition count (KAPPA_PARTITIONS or the inputs' partitions) and both keyed by the "
            "join field")
    return counts[table]


def _partitions(admin: AdminClient, topic: str) -> int:
    meta = admin.list_topics(topic, timeout=30).topics.get(topic)
    if meta is None or not meta.partitions:
        raise ConfigError(f"input topic {topic} does not exist: create it (kappa topics create)")
    return len(meta.partitions)


@dataclass
class Pipeline:
    """The app and the objects its agents share (exposed for tests and benchmarks)."""

    app: faust.App
    settings: Settings
    version: str
    outputs: Outputs
    stages: dict[str, StreamStage] = field(default_factory=dict)
    """Stream stage (and its agent) per stream input."""
    windows: dict[str, WindowStage] = field(default_factory=dict)
    """Window merge stage (and its agent) per window."""
    routes: dict[str, Route] = field(default_factory=dict)
    """Where each agent's outputs go."""
    states: dict[str, TableState] = field(default_factory=dict)
    """The state table of each stream and window (a window shares its stream's)."""
    joined: dict[str, JoinedStage] = field(default_factory=dict)
    """The agents that run joined streams (named after their first stream), by agent."""
    crash_after_batches: int = 0
    crash_on_close: bool = False
    fast: FastSource | None = None
    """The stream agents' sources read outside Faust's per-message path (``KAPPA_FAST_CONSUMER``)."""

    async def run_batch(self, stage: StreamStage | WindowStage | JoinedStage, messages: list[Any], agent: str) -> None:
        """Process one batch end to end; any failure ends the worker hard (nothing acked).

        The wait for Kafka's acks runs in a thread: meanwhile the event loop keeps fetching and
        buffering the next batch (the events of this one are acked only after we return).
        """
        try:
            with BATCH_SECONDS.labels(agent).time():
                done = stage.process(messages)
                # a joined agent's batch: each stream's outputs with its own state and route
                parts: list[tuple[str, Emitted]] = done if isinstance(done, list) else [(agent, done)]
                for name, out in parts:
                    for partition, items in out.writes.items():
                        self.states[name].write(partition, items)
                    if self.crash_on_close and name in self.windows and any(r["final"] for _, r in out.window_values):
                        _crash("SIGKILL after the state of a closing window batch, before its outputs")
                for name, out in parts:
                    self.outputs.emit(out, self.routes[name])
                acked = await self.outputs.flush_async()
                for name, _ in parts:
                    self.states[name].persisted(acked)
            if (agent in self.stages or agent in self.joined) and self.crash_after_batches:
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
    """Build the Faust app of ``version`` of the selected pipeline, its state in ``datadir``
    (unique per worker): an agent per stream (with its enrichment's table) and per window."""
    ep = endpoints(settings)
    # refuses other faust/mode/aiokafka versions; Faust's commit bookkeeping without its
    # duplicate-offset stall, its per-message hand-off without four tasks per message,
    # its own producer with acks=all + idempotence as every Kappa producer
    faust_internals.install(settings.processor_drop_fetch)
    definition = current()
    names = Names(definition, version, settings.topic_prefix)
    outputs = topics.output_topics(version)
    keep = {"retention.ms": str(7 * 24 * 3600 * 1000)}
    ensure_topics(settings, ep.kafka_bootstrap,
                  [*topics.input_specs(settings.partitions, settings.topic_prefix),
                   *outputs.specs(settings.partitions)])
    admin = AdminClient(client_config(settings, ep.kafka_bootstrap))
    agents = names.agents()
    streams = [definition.input(s) for members in agents.values() for s in members]
    counts: dict[str, int] = {}
    for inp in streams:
        enrich = definition.enrich.get(inp.name)
        stream_topic = names.input_topic(inp.name)
        counts[inp.name] = (check_copartitioned(admin, names.input_topic(enrich.table), stream_topic) if enrich
                            else _partitions(admin, stream_topic))
    for a, members in agents.items():
        for s in members[1:]:
            check_copartitioned(admin, names.input_topic(s), names.input_topic(a))
    windows = {w.name: w for w in definition.windows.values()}
    ensure_topics(settings, ep.kafka_bootstrap,
                  [*(TopicSpec(names.partials(w.name), counts[w.stream], keep) for w in windows.values()),
                   *(TopicSpec(names.ticks(a), counts[a], {"retention.ms": str(3600 * 1000)})
                     for a in names.ticked())])
    # Faust creates its changelog and assignor topics itself: the same replication as Kappa's
    rep = replication(settings, ep.kafka_bootstrap)
    # The table changelog below is restored into an empty datadir: it must be this log's, and
    # a datadir left by an earlier binding of this version must not be trusted either.
    if lineage.adopt(datadir, lineage.bind(settings, ep.kafka_bootstrap, version)):
        log.warning("state in %s was built under an earlier binding of %s: emptied, restoring the "
                    "changelog", datadir, version)
    n = max(counts.values(), default=settings.partitions)

    app = faust.App(
        names.group,
        Monitor=LeanMonitor,
        broker=f"kafka://{ep.kafka_bootstrap}",
        broker_credentials=faust_broker_credentials(settings),
        datadir=str(datadir),
        store="rocksdb://",
        web_enabled=False,
        autodiscover=False,
        topic_partitions=n,
        topic_replication_factor=rep.factor,
        producer_acks=-1,
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
    out = Outputs(settings, ep.kafka_bootstrap, registry, names.rejected)
    grace_ms = int(settings.window_grace_seconds * 1000)
    pipe = Pipeline(app, settings, version, out,
                    crash_after_batches=settings.processor_crash_after_batches,
                    crash_on_close=settings.processor_crash_on_close)
    decoders = {name: Decoder(registry, inp.schema.name) for name, inp in definition.inputs.items()}
    stream_outputs = {o.name: o for o in names.outputs() if o.kind == "stream"}
    window_outputs = {o.name: o for o in names.outputs() if o.kind == "window"}
    row_outputs = {o.name: o for o in names.outputs() if o.kind in ("session", "join")}
    ticked = set(names.ticked())
    plain = [i.name for i in names.streams()]
    # per stream, the models' merges its valid events go to: as events, or as occurrence labels
    learned: dict[str, list[tuple[str, str, str, str]]] = {}
    for m in definition.models.values() if learning else ():
        learned.setdefault(m.stream, []).append(
            (names.model_events(m.name), "event", m.on, definition.inputs[m.stream].time or ""))
        if not m.reads_labels:
            learned.setdefault(m.labels, []).append(
                (names.model_events(m.name), "label", m.label_by or "", definition.inputs[m.labels].time or ""))
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    sources_of: dict[str, list[str]] = {}
    for inp in streams:
        s = inp.name
        # the first stream's table keeps the name of earlier releases (changelog <group>-state-changelog)
        table = app.Table("state" if plain[:1] == [s] else f"state-{s}", partitions=counts[s], key_type=bytes,
                          value_type=bytes, options={"driver": "rocksdict"},
                          help=f"{s}: dedupe ids, table versions, windows",
                          extra_topic_configs={"min.insync.replicas": str(rep.min_insync)})
        state = TableState(table, out)
        stage = StreamStage(version, definition, s, decoders, state, grace_ms, prefix=settings.topic_prefix,
                            value_maps={f: settings.value_map(m) for f, m in inp.value_maps.items()})
        enrich = definition.enrich.get(s)
        sources = [names.input_topic(s)]
        if enrich is not None:
            stage.table_source = partition_reader(settings, ep.kafka_bootstrap, names.input_topic(enrich.table))
            sources.insert(0, names.input_topic(enrich.table))
        stage.stream_source = partition_reader(settings, ep.kafka_bootstrap, names.input_topic(s))
        stage.idle_s, stage.partitions = idle_s, counts[s]
        window = next((w for w in windows.values() if w.stream == s), None)
        pipe.stages[s], pipe.states[s] = stage, state
        rows = {o.name: (o.topic, o.schema) for o in row_outputs.values()
                if (o.kind == "session" and definition.sessions[o.name].stream == s)
                or (o.kind == "join" and definition.joins[o.name].left == s)}
        stream_out = stream_outputs.get(s)  # none for a model's label stream joined here
        pipe.routes[s] = out.route(stream_out.topic if stream_out else None, stream_out.schema if stream_out else None,
                                   partials_topic=names.partials(window.name) if window else None,
                                   learn=learned.get(s, ()), rows=rows)
        sources_of[s] = sources
        if window is not None:
            merge = WindowStage(version, state, grace_ms, idle_s=idle_s, spec=stage.window,
                                 with_end=window_outputs[window.name].schema.startswith("derived:"))
            partials = names.partials(window.name)
            merge.partials_source = partition_reader(settings, ep.kafka_bootstrap, partials)
            pipe.windows[window.name], pipe.states[window.name] = merge, state
            pipe.routes[window.name] = out.route(window_topic=window_outputs[window.name].topic,
                                                 window_schema=window_outputs[window.name].schema)
            _stage_agent(pipe, app.topic(partials, **raw), window.name, batch_events, batch_within)
    if settings.fast_consumer:
        routes = {t: a for a, members in agents.items() for s in members for t in sources_of[s]}
        pipe.fast = FastSource(app, settings, ep.kafka_bootstrap, names.group, routes, batch_events, batch_within)
        log.warning("KAPPA_FAST_CONSUMER on: %s read by one confluent-kafka consumer in batches, not through "
                    "Faust's per-message path", ", ".join(sorted(routes)))
    for a, members in agents.items():
        channel = [t for s in members for t in sources_of[s]]
        if a in ticked:
            channel.append(names.ticks(a))
            pipe.stages[a].ticks_topic = names.ticks(a)
        if len(members) > 1:
            pipe.joined[a] = JoinedStage(version, definition, {s: pipe.stages[s] for s in members},
                                         pipe.states[a], grace_ms, idle_s=idle_s)
            pipe.joined[a].ticks_topic = names.ticks(a) if a in ticked else None
        _stage_agent(pipe, app.topic(*channel, **raw), a, batch_events, batch_within)

    partials_of = {names.partials(w): w for w in pipe.windows}

    @app.timer(idle_s)
    async def idle_ticks() -> None:
        ticked = False
        for w, merge in pipe.windows.items():
            for partition in merge.idle():
                out.produce(names.partials(w), None, TICK, partition)
                ticked = True
        now = time.time()
        for a in names.ticked():  # sessions and joins: through their agent, state before rows
            runner = pipe.joined.get(a) or pipe.stages[a]
            for partition in runner.due(now):
                out.produce(names.ticks(a), None, TICK, partition)
                ticked = True
        if ticked:
            acked = await out.flush_async()
            for state in {id(s): s for s in pipe.states.values()}.values():
                state.persisted(acked)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        if pipe.fast is not None:  # no batch of a revoked partition may run on after this
            await pipe.fast.drain()
        for tp in revoked:
            w = partials_of.get(tp.topic)
            if w is not None:
                pipe.windows[w].forget(tp.partition)

    if learned:
        _register_learning(app, settings, version, out)
    # every topic an agent consumes (streams, tables, partials, the learning's samples.*)
    watch = stalls.StallWatch(app, {t for agent in app.agents.values() for t in agent.channel.topics})

    @app.timer(1.0)
    async def stall_watch() -> None:  # records Faust fetched and never delivered: read again
        await watch.tick()

    return pipe


def _stage_agent(pipe: Pipeline, channel: Any, name: str, batch_events: int, batch_within: float) -> None:
    """An agent ``name`` running its stage on batches of ``channel``."""
    stage: StreamStage | WindowStage | JoinedStage = (pipe.joined.get(name) or pipe.stages.get(name)
                                                       or pipe.windows[name])

    fast = pipe.fast if pipe.fast is not None and name in pipe.fast.queues else None

    async def run(stream: Any) -> None:
        if fast is None:
            async for events in stream.take_events(batch_events, within=batch_within):
                # Faust's messages have every field of base.Message: no copy per event
                await pipe.run_batch(stage, [e.message for e in events], name)
            return
        # the sources come from the fast source; Faust's stream still brings the ticks
        lock = fast.locks[name]
        serving = asyncio.ensure_future(fast.serve(name, lambda msgs: pipe.run_batch(stage, msgs, name)))
        serving.add_done_callback(_fatal_unless_cancelled)
        try:
            async for events in stream.take_events(batch_events, within=batch_within):
                async with lock:
                    await pipe.run_batch(stage, [e.message for e in events], name)
        finally:
            serving.cancel()

    run.__name__ = run.__qualname__ = f"agent_{name}"
    pipe.app.agent(channel, name=name)(run)


def _fatal_unless_cancelled(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("fast source agent loop failed; exiting so the supervisor restarts this worker",
                     exc_info=task.exception())
        logging.shutdown()
        os._exit(70)


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
        register(app, settings, version)
