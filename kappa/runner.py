"""``kappa run``: the processors and the sink service as supervised child processes.

Why processes: the Faust workers and the sink each want a core (the GIL), and the embedded
ClickHouse engine must live in exactly one process (the sink service), which also answers
``kappa query`` while the pipeline runs. The runner forwards SIGTERM/Ctrl-C for a clean
shutdown (children flush and commit), restarts a child that dies, prints progress, and with
``until_drained`` stops once every input is consumed to its end offsets and every output
has landed (both read from Kafka's committed offsets, stable over two checks, and for longer
than the fraud learner waits before it publishes the tail of a quiet stream).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from kappa import lineage, metrics, topics
from kappa.errors import KappaError, RegistryUnavailable
from kappa.kafka import client_config, ensure_topics
from kappa.lag import GroupLag, group_lag, matching_topics
from kappa.pipeline import current
from kappa.pipeline.derive import Names
from kappa.runlock import RunLock
from kappa.settings import Settings
from kappa.stack import endpoints

__all__ = ["DrainState", "Pipeline", "model_groups", "processor_group", "sink_group"]


def processor_group(version: str) -> str:
    """Consumer group (= Faust app id) of the processors of ``version`` of the selected pipeline."""
    return str(Names(current(), version).group)


def model_groups(version: str) -> dict[str, str]:
    """Consumer group of each declared model's consumers: its labels and its merge
    (stream_processors.learning), by model."""
    names = Names(current(), version)
    return {m: names.label_group(m) for m in names.pipeline.models}


def sink_group(version: str) -> str:
    """Consumer group of the sink service of ``version``."""
    return str(Names(current(), version).sink_group)


def _export_lag(state: DrainState) -> None:
    """Publish per-partition lag of both groups as kappa_consumer_lag_messages."""
    for lag in (state.processors, state.sink):
        for (topic, partition), (committed, end) in lag.per_partition.items():
            metrics.CONSUMER_LAG.labels(lag.group, topic, str(partition)).set(max(0, end - committed))


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the runner dies (even by kill -9), so no orphan holds chdb."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class DrainState:
    """Lag of the processors over the inputs and of the sink over the outputs."""

    processors: GroupLag
    sink: GroupLag
    partials: frozenset[str] = frozenset()
    """The processors' internal partials topics (idle window ticks flow through them)."""
    models: tuple[GroupLag, ...] = ()
    """Each model consumer's group alone (their partitions are also in ``processors``)."""
    internal: frozenset[str] = frozenset()
    """Topics between two stages (the partials, the models' merges): consumed, but not inputs."""
    missing: tuple[str, ...] = ()
    """Topics some stage reads or writes that the cluster metadata did not list: never drained
    then (after a broker restart, metadata can come back without them for a while)."""

    def _lags(self) -> tuple[int, int]:
        """(data lag of every stage's input, uncommitted idle ticks beyond one per partition).

        The internal partials topic carries one idle tick per partition and second while
        windows wait out their grace; with commits once a second, up to one uncommitted tick
        per partition is normal there (callers also require the ends to stay put).
        """
        data_lag = ticks = partitions = 0
        for (topic, _), (committed, end) in self.processors.per_partition.items():
            if topic in self.partials:
                ticks += max(0, end - committed)
                partitions += 1
            else:
                data_lag += max(0, end - committed)
        return data_lag, max(0, ticks - partitions)

    @property
    def drained(self) -> bool:
        """No data left: every stage's input (inputs, partials, the fraud merge) consumed to its
        end and every output landed, with every topic involved listed by the cluster."""
        data_lag, ticks = self._lags()
        return not self.missing and data_lag == 0 and ticks == 0 and self.sink.total == 0

    def data(self) -> list[tuple[str, str, int, int, int]]:
        """``(group, topic, partition, committed, end)`` of every data partition (the idle
        ticks of the partials topic left out), processors and sink."""
        out = []
        for lag in (self.processors, self.sink):
            for (topic, p), (committed, end) in lag.per_partition.items():
                if topic not in self.partials:
                    group = next((m.group for m in self.models if (topic, p) in m.per_partition), lag.group)
                    out.append((group, topic, p, committed, end))
        return out

    def behind(self, limit: int = 4) -> str:
        """The partitions furthest behind, with the group that holds them (stall reports)."""
        rows = sorted(((end - committed, f"{group} {topic}[{p}] at {committed:,} of {end:,}")
                       for group, topic, p, committed, end in self.data() if end > committed), reverse=True)
        return "; ".join(text for _, text in rows[:limit]) or "nothing (lag only on idle ticks)"

    def line(self, rate: float) -> str:
        """Progress: the inputs (data only: no internal topic, no idle tick), the stages' lag, the sink's."""
        consumed = end = 0
        for (topic, _), (c, e) in self.processors.per_partition.items():
            if topic not in self.partials and topic not in self.internal:
                consumed, end = consumed + c, end + e
        data_lag, ticks = self._lags()
        missing = f" | waiting for topics {', '.join(self.missing)}" if self.missing else ""
        return (f"inputs {consumed:,}/{end:,} consumed (lag {data_lag + ticks:,}) "
                f"| sink lag {self.sink.total:,} | {rate:,.0f} ev/s{missing}")


@dataclass
class _Child:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


STALL_S = 30.0
"""Period over which ``run`` checks that the data lag shrinks (and reports where it waits)."""

METADATA_TTL_S = 2.0
"""Max age of the cluster metadata behind a lag query (see :meth:`Pipeline._metadata`)."""


@dataclass
class Pipeline:
    """Supervises ``workers`` Faust workers and one sink service for ``version``."""

    settings: Settings
    version: str
    workers: int = 1
    echo: Callable[[str], None] = print
    serve_metrics: bool = True
    children: list[_Child] = field(default_factory=list)
    last_state: DrainState | None = None
    """The state of the last :meth:`state` call (progress printers reuse it: one lag query per poll)."""
    _meta: Any = field(default=None, init=False, repr=False)
    _meta_at: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.ep = endpoints(self.settings)
        self.admin = AdminClient(client_config(self.settings, self.ep.kafka_bootstrap))
        self.inputs = topics.input_topics(self.settings.topic_prefix)
        self.outputs = topics.output_topics(self.version)
        logs = self.settings.home / "logs"
        py = sys.executable
        self.children = [
            _Child("sink", [py, "-m", "sinks", "serve", "--version", self.version], logs / f"sink-{self.version}.log")
        ] + [
            _Child(f"worker-{i}", [py, "-m", "stream_processors", "worker", "--version", self.version,
                                   "--worker", str(i)], logs / f"worker-{self.version}-{i}.log")
            for i in range(self.workers)
        ]
        self._stop = False
        self._lock = RunLock(self.settings.home)

    # -- topics and lag ---------------------------------------------------------------
    def prepare(self) -> None:
        """Create missing input and output topics; refuse a version bound to another log.

        The checks run before any child starts: a worker of a version derived from another log
        would restore that log's state (:mod:`kappa.lineage`), and a worker refuses
        faust-streaming, mode or aiokafka versions other than the pinned ones.
        """
        from stream_processors.faust_internals import check_versions

        check_versions()
        ensure_topics(self.settings, self.ep.kafka_bootstrap,
                      topics.input_specs(self.settings.partitions, self.settings.topic_prefix)
                      + self.outputs.specs(self.settings.partitions))
        lineage.bind(self.settings, self.ep.kafka_bootstrap, self.version)

    def published(self) -> int:
        """Records in the pipeline's input topics (their end offsets)."""
        names = Names(current(), self.version, self.settings.topic_prefix)
        found = matching_topics(self.admin, [names.input_topic(n) for n in names.pipeline.inputs])
        return group_lag(self.admin, f"{names.group}-probe", found).end if found else 0

    def state(self) -> DrainState:
        """Current lag of both groups (the processors' group over inputs, the sink's over outputs).

        Raises KafkaException when Kafka does not answer, and replaces the admin client: after
        a broker restart a client that lost every broker re-bootstraps, and librdkafka (2.16)
        may keep the dead broker cached as the groups' coordinator, so every later offset
        query of that client times out (confluentinc/librdkafka#5511); a new client asks
        for the coordinator again.
        """
        try:
            self.last_state = self._state()
            return self.last_state
        except KafkaException:
            self.admin = AdminClient(client_config(self.settings, self.ep.kafka_bootstrap))
            self._meta = None
            raise

    def _metadata(self) -> Any:
        """Cluster metadata, fetched at most every :data:`METADATA_TTL_S` (shared by both groups).

        On a broker with hundreds of topics one fetch costs tens of milliseconds of Python,
        which ``kappa replay`` pays in the process that also hosts the sink. A topic created
        since the last fetch is seen within the TTL, well inside the drain criterion's quiet
        period, so it cannot be missed by ``--until-drained``.
        """
        now = time.monotonic()
        if self._meta is None or now - self._meta_at > METADATA_TTL_S:
            self._meta, self._meta_at = self.admin.list_topics(timeout=10), now
        return self._meta

    def _state(self) -> DrainState:
        i = self.inputs
        names = Names(current(), self.version, self.settings.topic_prefix)
        pipe = names.pipeline
        # inputs, plus every internal topic the group consumes (repartitions, the models' merge)
        internal = [re.escape(f"{names.group}-") + r".*", re.escape(names.learning_prefix) + r".*"]
        meta = self._metadata()
        in_topics = matching_topics(self.admin, [names.input_topic(n) for n in pipe.inputs],
                                    [i.samples_pattern, *internal], meta=meta)
        # labels and the merge: each model's own group (stream_processors.learning)
        groups = model_groups(self.version)
        merges = {names.model_events(m) for m in pipe.models}
        model_topics = {m: {t: n for t, n in in_topics.items()
                            if (t == names.input_topic(model.labels) and model.reads_labels)
                            or t == names.model_events(m)}
                        for m, model in pipe.models.items()}
        taken = {t for topics_ in model_topics.values() for t in topics_}
        in_topics = {t: n for t, n in in_topics.items() if not t.endswith("-changelog")
                     and not t.endswith(".checkpoints") and t not in taken}
        out_topics = matching_topics(
            self.admin, [*self.outputs.all, *(names.dlq(n) for n in pipe.inputs)], meta=meta)
        processors = group_lag(self.admin, processor_group(self.version), in_topics)
        models = tuple(group_lag(self.admin, groups[m], topics_) for m, topics_ in model_topics.items() if topics_)
        for lag in models:
            processors = GroupLag(processors.group, processors.per_partition | lag.per_partition)
        # every topic the stages of this version read or write, named, not discovered: a topic
        # the metadata does not list is a stage nobody can call drained
        listed = set(in_topics) | taken | set(out_topics)
        missing = tuple(t for t in names.required_topics() if t not in listed)
        partials = frozenset(names.partials(w) for w in pipe.windows)
        return DrainState(processors, group_lag(self.admin, sink_group(self.version), out_topics),
                          partials, models, partials | merges, missing)

    # -- processes --------------------------------------------------------------------
    def _start(self, child: _Child) -> None:
        child.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(child.log, "ab")
        child.proc = subprocess.Popen(child.argv, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=self._env(),
                                      preexec_fn=_die_with_parent)
        out.close()
        self._lock.child(child.name, child.proc.pid)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KAPPA_HOME"] = str(self.settings.home.resolve())
        env["KAPPA_VERSION"] = self.version
        env["KAPPA_KAFKA_BOOTSTRAP"] = self.ep.kafka_bootstrap
        env["KAPPA_SCHEMA_REGISTRY_URL"] = self.ep.schema_registry_url
        if self.settings.topic_prefix:
            env["KAPPA_TOPIC_PREFIX"] = self.settings.topic_prefix
        return env

    def _supervise(self) -> None:
        for child in self.children:
            assert child.proc is not None
            code = child.proc.poll()
            if code is not None and not self._stop:
                tail = child.log.read_text(errors="replace").splitlines()[-5:] if child.log.exists() else []
                self.echo(f"! {child.name} exited with {code}; restarting (log {child.log}):\n    "
                          + "\n    ".join(tail))
                child.restarts += 1
                if child.restarts > 5:
                    raise KappaError(f"{child.name} keeps crashing; see {child.log}")
                self._start(child)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every child (they flush and commit), SIGKILL after ``timeout``."""
        self._stop = True
        for child in self.children:
            if child.proc and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.echo(f"! {child.name} did not stop in {timeout:.0f}s; killing it")
                child.proc.kill()
                child.proc.wait()

    def run(self, until_drained: bool = False, poll: float = 2.0, idle_checks: int = 3,
            max_seconds: float | None = None) -> DrainState:
        """Run until SIGTERM/SIGINT (or drained); return the last lag state.

        A runner with the sink holds KAPPA_HOME's run lock (:mod:`kappa.runlock`): a second
        one on the same home is refused at once. The registry is checked before any child
        starts, so an unreachable one is one error, not crashing workers.
        """
        from kappa.stack.manager import registry_healthy

        if any(c.name == "sink" for c in self.children):
            self._lock.acquire(self.version)
        try:
            if not registry_healthy(self.ep.schema_registry_url):
                raise RegistryUnavailable(f"schema registry at {self.ep.schema_registry_url} does not answer: "
                                          "check KAPPA_SCHEMA_REGISTRY_URL or run `kappa up`")
            return self._run(until_drained, poll, idle_checks, max_seconds)
        finally:
            self._lock.release()

    def _run(self, until_drained: bool, poll: float, idle_checks: int,
             max_seconds: float | None) -> DrainState:
        self.prepare()
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def _on_signal(signum: int, _frame: object) -> None:
            self._stop = True

        for s in previous:
            signal.signal(s, _on_signal)
        t0 = time.monotonic()
        if self.serve_metrics:
            metrics.serve("runner")
        for child in self.children:
            self._start(child)
        self.echo(f"running version {self.version}: {self.workers} worker(s) + sink; logs in "
                  f"{self.settings.home / 'logs'}")
        stable = 0
        # the fraud learner publishes its provisional tail fraud_idle_seconds after its last
        # batch (stream_processors.learning): the ends must stay put for longer than that
        quiet_s = self.settings.fraud_idle_seconds + 3.0
        changed_at = time.monotonic()
        last_consumed, last_t = 0, time.monotonic()
        state = self.state()
        last_end = (-1, -1)
        # less than a tenth of the data lag committed in STALL_S: say where it is (a stuck group
        # is otherwise only visible as a run that never ends)
        mark_t, mark_lag, mark_done = time.monotonic(), 0, 0
        try:
            while not self._stop:
                time.sleep(poll)
                self._supervise()
                try:
                    state = self.state()
                except KafkaException as exc:  # a broker restart: the children ride it out, so do we
                    self.echo(f"! lag unavailable ({exc}); retrying")
                    stable = 0
                    continue
                _export_lag(state)
                now = time.monotonic()
                rate = (state.processors.consumed - last_consumed) / max(1e-6, now - last_t)
                last_consumed, last_t = state.processors.consumed, now
                self.echo(f"[{now - t0:6.1f}s] {state.line(max(0.0, rate))}")
                data = state.data()
                lag, done = sum(max(0, e - c) for *_, c, e in data), sum(c for *_, c, _ in data)
                if now - mark_t >= STALL_S:
                    if mark_lag and done - mark_done < 0.1 * mark_lag:
                        self.echo(f"! {done - mark_done:,} offsets committed in {now - mark_t:.0f}s "
                                  f"with a lag of {mark_lag:,}; behind: {state.behind()}")
                    mark_t, mark_lag, mark_done = now, lag, done
                # Idle ticks keep flowing through the internal partials topic while windows wait
                # out their grace on wall-clock time; they carry no data, so they don't count as
                # new input (their lag must still be 0: every data partial was consumed).
                ends = (sum(e for (t, _), (_, e) in state.processors.per_partition.items()
                            if t not in state.partials), state.sink.end)
                if until_drained and state.drained and ends == last_end:
                    stable += 1
                    if stable >= idle_checks and now - changed_at >= quiet_s:
                        break
                else:
                    stable, changed_at = 0, now
                last_end = ends
                if max_seconds is not None and now - t0 > max_seconds:
                    raise KappaError(f"not drained after {max_seconds:.0f}s: {state.line(rate)}")
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.echo(f"stopped after {time.monotonic() - t0:.1f}s; {state.line(0)}")
        return state
