"""Fixtures of the reliability suite: whole pipelines (``kappa run``) under faults.

Every scenario runs the real CLI as a subprocess in its own process group (``kappa run`` and its
children: one sink service + N Faust workers), with its own pipeline version (consumer groups,
output topics, ClickHouse tables), its own ``KAPPA_HOME`` (own chdb directory) and, unless it
shares the session dataset, its own topic prefix. Teardown SIGKILLs every process group a test
started, so nothing outlives the test.

The reference for "exact results" is twofold:

* the generator :class:`~tests.support.ecommerce.Manifest` (orders count and sum per currency,
  revenue per minute, rejected by reason, published = landed + rejected + duplicates), checked
  with :func:`kappa.demo.reconcile` — the demo's own checks;
* a clean run's views over the same input topics (:func:`snapshot`): every row of
  ``kappa.orders`` (every column but ``fraud_score``), ``kappa.revenue_per_minute`` and
  ``kappa.rejected_events`` (source, reason).

Not compared (yet): ``fraud_score`` and ``kappa.model_quality``. Two *clean* runs over the same
log already differ there (fraud_score NULL on 1,407 vs 0 orders; model labelled 1,534 vs 2,941),
because ``kappa run --until-drained`` stops before the fraud model has read the enriched orders:
the drain check does not include the processors' lag on ``kappa.<V>.orders.enriched`` (the
``fraud-orders`` agent), and that agent trickles through its tail at ~1 event/s. Reported to the
runner/learning owners; add both back to :func:`snapshot` once fixed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from kappa import topics
from kappa.kafka import client_config, ensure_topics
from kappa.lag import group_lag, matching_topics
from kappa.settings import Settings
from tests.conftest import REPO, Stack
from tests.support.ecommerce import GeneratorConfig, Manifest, generate, publish_events, reconcile

KAPPA = str(Path(sys.executable).with_name("kappa"))
SEED = 20261125
"""Seed of every random choice in the suite (kill points, flood bytes): runs are reproducible."""
ORDERS = 3000
"""Generator orders per dataset: small, the machine is shared."""
PARTITIONS = 2
DRAIN_TIMEOUT = 300.0


def rng(name: str) -> random.Random:
    """A reproducible random source per scenario (str seeds are stable across runs)."""
    return random.Random(f"{SEED}:{name}")


def start_ms() -> int:
    """A fixed-for-the-test generator start three hours ago, on a minute boundary."""
    now = int(time.time() * 1000)
    return now - 3 * 3_600_000 - now % 60_000


@dataclass
class Pipe:
    """One pipeline version over one set of input topics, driven through the ``kappa`` CLI."""

    stack: Stack
    home: Path
    prefix: str
    version: str
    partitions: int = PARTITIONS
    groups: list[subprocess.Popen[bytes]] = field(default_factory=list)
    runs: int = 0

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.inputs = topics.input_topics(self.prefix)
        self.outputs = topics.output_topics(self.version)
        self.admin = AdminClient(client_config(self.settings(), self.stack.kafka_bootstrap))

    # -- configuration -------------------------------------------------------------------
    def settings(self, **over: Any) -> Settings:
        values: dict[str, Any] = dict(home=self.home, topic_prefix=self.prefix, version=self.version,
                                      partitions=self.partitions)
        values.update(over)
        return self.stack.settings(**values)

    def env(self, **extra: str) -> dict[str, str]:
        env = self.stack.env(self.home)
        env.update(KAPPA_TOPIC_PREFIX=self.prefix, KAPPA_VERSION=self.version,
                   KAPPA_PARTITIONS=str(self.partitions), PYTHONUNBUFFERED="1", **extra)
        return env

    # -- inputs --------------------------------------------------------------------------
    def publish(self, events: int = ORDERS, seed: int = SEED, start: int | None = None) -> Manifest:
        """Generate and publish in-process (idempotent producer); return the manifest."""
        from producers.base import Publisher

        settings = self.settings()
        ensure_topics(settings, self.stack.kafka_bootstrap,
                      topics.input_specs(self.partitions, self.prefix))
        cfg = GeneratorConfig(events=events, seed=seed, start_ms=start or start_ms(),
                              grace_ms=int(settings.window_grace_seconds * 1000))
        records, manifest = generate(cfg)
        with Publisher(settings, self.stack.kafka_bootstrap) as pub:
            publish_events(pub, records)
            summary = pub.flush()
        assert summary.failed == 0 and summary.delivered == len(records), summary
        return manifest

    # -- processes -----------------------------------------------------------------------
    def spawn(self, args: list[str], log: str, **extra: str) -> subprocess.Popen[bytes]:
        """``kappa <args>`` in a new process group (its children join it), output to ``log``."""
        out = open(self.home / log, "ab")
        proc = subprocess.Popen([KAPPA, *args], cwd=REPO, env=self.env(**extra), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        out.close()
        self.groups.append(proc)
        return proc

    def run(self, *args: str, until_drained: bool = True, **extra: str) -> subprocess.Popen[bytes]:
        self.runs += 1
        argv = ["run", *args] + (["--until-drained"] if until_drained else [])
        return self.spawn(argv, f"run-{self.runs}.log", **extra)

    def log(self, n: int | None = None) -> str:
        return (self.home / f"run-{n or self.runs}.log").read_text(errors="replace")

    def wait(self, proc: subprocess.Popen[bytes], timeout: float = DRAIN_TIMEOUT) -> None:
        """Until ``proc`` exits 0 (with the run log in the failure message otherwise)."""
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise AssertionError(f"not drained after {timeout:.0f}s:\n{self.tails()}") from None
        assert code == 0, f"kappa exited {code}:\n{self.tails()}"

    def tails(self) -> str:
        logs = sorted(self.home.glob("*.log")) + sorted((self.home / "logs").glob("*.log"))
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:])
                         for p in logs)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """kill -9 the whole process group of ``proc`` (the runner and its children)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        wait_group_gone(proc.pid)

    def stop_all(self) -> None:
        for proc in self.groups:
            self.kill(proc)
        self.groups.clear()

    # -- observation ---------------------------------------------------------------------
    def ends(self, topic: str) -> int:
        """Sum of the end offsets of ``topic`` (0 when it does not exist yet)."""
        found = matching_topics(self.admin, [topic])
        if not found:
            return 0
        tps = [TopicPartition(topic, p) for p in range(found[topic])]
        futures = self.admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=10)
        try:
            return sum(f.result().offset for f in futures.values())
        except KafkaException:  # a topic just created: no leader yet
            return 0

    def wait_until(self, what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes],
                   timeout: float = 120.0, every: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert proc.poll() is None, f"kappa exited {proc.returncode} before {what}:\n{self.tails()}"
            assert time.monotonic() < deadline, f"no {what} after {timeout:.0f}s:\n{self.tails()}"
            time.sleep(every)

    def wait_emitted(self, fraction: float, expected: int, proc: subprocess.Popen[bytes]) -> None:
        """Until the processors have emitted ``fraction`` of ``expected`` enriched orders."""
        target = max(1, int(fraction * expected))
        self.wait_until(f"{target} enriched orders", lambda: self.ends(self.outputs.enriched) >= target,
                        proc)

    def sink_committed(self) -> int:
        """Messages of the enriched topic the sink has landed (committed offsets)."""
        found = matching_topics(self.admin, [self.outputs.enriched])
        try:
            return group_lag(self.admin, f"kappa-{self.version}-sink", found).consumed if found else 0
        except KafkaException:  # a topic just created: no leader yet
            return 0

    def children(self, runner: subprocess.Popen[bytes]) -> dict[str, int]:
        """``{"sink": pid, "worker-0": pid, ...}``: the live children of a ``kappa run``."""
        out = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat[1]) != runner.pid or stat[0] == "Z":
                continue
            args = [a.decode(errors="replace") for a in argv]
            if "sinks" in args:
                out["sink"] = int(entry.name)
            elif "stream_processors" in args:
                out[f"worker-{args[args.index('--worker') + 1]}"] = int(entry.name)
        return out

    # -- results -------------------------------------------------------------------------
    def q(self, sql: str) -> list[dict[str, Any]]:
        from sinks.query import query_rows

        return query_rows(self.settings(), sql)

    def snapshot(self) -> dict[str, Any]:
        """Every row of every serving view, in a comparable form (lineage/ingestion excluded)."""
        return snapshot(self.q)

    def reconcile(self, manifest: Manifest | dict[str, Any]) -> list[str]:
        data = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
        report = reconcile(self.settings(), data)
        assert report.reconciled, "\n".join(report.lines)
        return report.lines

    def no_duplicates(self) -> int:
        row = self.q("SELECT count() AS n, uniqExact(order_id) AS u FROM kappa.orders")[0]
        assert int(row["n"]) == int(row["u"]), row
        return int(row["n"])

    def rejected_by_code(self) -> Counter[str]:
        return Counter({r["code"]: int(r["n"]) for r in self.q(
            "SELECT splitByChar(':', reason)[1] AS code, count() AS n FROM kappa.rejected_events "
            "GROUP BY code")})


def snapshot(q: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any]:
    """The deterministic content of the views (see the module docstring for the fraud model)."""
    orders = [tuple(r.values()) for r in q(
        "SELECT order_id, user_id, amount, currency, category, payment_method, ip_country, "
        "toUnixTimestamp64Milli(event_time) AS t, user_country, user_segment, "
        "late FROM kappa.orders ORDER BY order_id")]
    revenue = [tuple(r.values()) for r in q(
        "SELECT toUnixTimestamp64Milli(window_start) AS w, category, currency, orders, "
        "round(revenue, 6) AS r FROM kappa.revenue_per_minute ORDER BY w, category, currency")]
    rejected = Counter((r["source"], r["reason"]) for r in q(
        "SELECT source, reason FROM kappa.rejected_events"))
    return {"orders": orders, "revenue": revenue, "rejected": rejected}


def assert_same_views(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal views, with a short diff per view instead of thousands of rows."""
    problems = []
    for view in want:
        if view.startswith("_") or got[view] == want[view]:
            continue
        g, w = got[view], want[view]
        if isinstance(w, Counter):
            missing, extra = w - g, g - w
        else:
            missing, extra = Counter(w) - Counter(g), Counter(g) - Counter(w)
        problems.append(f"{view}: {len(g)} rows vs {len(w)} in the clean run; "
                        f"missing {list(missing)[:3]} (+{max(0, len(missing) - 3)}), "
                        f"extra {list(extra)[:3]} (+{max(0, len(extra) - 3)})")
    assert not problems, "\n".join(problems)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for entry in Path("/proc").iterdir():  # zombies still count for killpg; ignore them
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(stat[2]) == pgid and stat[0] != "Z":
                return True
    return False


def wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        assert time.monotonic() < deadline, f"process group {pgid} survived SIGKILL"
        time.sleep(0.05)


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@dataclass
class Dataset:
    """The shared session input: one generator run on its own prefix."""

    prefix: str
    manifest: Manifest


@pytest.fixture(scope="session")
def dataset(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """``ORDERS`` generator orders published once to a uuid prefix, shared by every version."""
    pipe = Pipe(stack, tmp_path_factory.mktemp("dataset"), f"rel{uuid.uuid4().hex[:8]}.", "unused")
    return Dataset(pipe.prefix, pipe.publish())


@pytest.fixture
def make_pipe(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., Pipe]]:
    """Factory of pipelines (new version, home, prefix unless given); kills them all at the end."""
    pipes: list[Pipe] = []

    def make(prefix: str | None = None, stack_: Stack | None = None, name: str = "p") -> Pipe:
        tag = uuid.uuid4().hex[:8]
        pipe = Pipe(stack_ or stack, tmp_path / f"{name}-{len(pipes)}",
                    prefix or f"rel{tag}.", f"r{tag}")
        pipes.append(pipe)
        return pipe

    yield make
    for pipe in pipes:
        pipe.stop_all()


@pytest.fixture(scope="session")
def clean(stack: Stack, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The clean run's views over the shared dataset (reconciled with the manifest first), always
    on Faust's own consumer path: a suite run with ``KAPPA_FAST_CONSUMER=1`` then compares the fast
    path under faults with the default path's results."""
    tag = uuid.uuid4().hex[:8]
    pipe = Pipe(stack, tmp_path_factory.mktemp("clean"), dataset.prefix, f"r{tag}")
    try:
        t0 = time.monotonic()
        pipe.wait(pipe.run(KAPPA_FAST_CONSUMER="0"))
        pipe.reconcile(dataset.manifest)
        pipe.no_duplicates()
        snap = pipe.snapshot()
        snap["_seconds"] = time.monotonic() - t0
        return snap
    finally:
        pipe.stop_all()


def assert_orders_match(pipe: Pipe, manifest: Manifest) -> None:
    """kappa.orders and kappa.revenue_per_minute equal the manifest (count, sums, windows)."""
    assert pipe.no_duplicates() == manifest.valid_unique_orders
    got = {r["currency"]: (int(r["n"]), round(float(r["amount"]), 2)) for r in pipe.q(
        "SELECT currency, count() AS n, sum(amount) AS amount FROM kappa.orders GROUP BY currency")}
    assert got == {c: (int(t["count"]), round(t["amount"], 2)) for c, t in manifest.valid_totals.items()}
    windows = {(int(r["w"]), r["category"], r["currency"]): (int(r["orders"]), round(float(r["revenue"]), 2))
               for r in pipe.q("SELECT toUnixTimestamp64Milli(window_start) AS w, category, currency, "
                               "orders, revenue FROM kappa.revenue_per_minute")}
    assert windows == {(w["window_start"], w["category"], w["currency"]): (w["orders"], w["revenue"])
                       for w in manifest.revenue}


def read_topic(pipe: Pipe, topic: str) -> list[tuple[int, int, bytes | None]]:
    """Every message of ``topic`` as (partition, offset, value), partition by partition."""
    return [(m.partition(), m.offset(), m.value()) for m in read_messages(pipe, topic)]  # type: ignore[misc]


def read_messages(pipe: Pipe, topic: str) -> list[Any]:
    """Every message of ``topic`` (key, value, timestamp...), partition by partition."""
    from confluent_kafka import Consumer

    c = Consumer(client_config(pipe.settings(), pipe.stack.kafka_bootstrap, **{
        "group.id": f"rel-read-{uuid.uuid4().hex}", "enable.auto.commit": False}))
    try:
        n = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in n}
        want = {p: e for p, e in ends.items() if e > 0}
        c.assign([TopicPartition(topic, p, 0) for p in want])
        pos = dict.fromkeys(want, 0)
        out: list[Any] = []
        deadline = time.monotonic() + 60
        while any(pos[p] < want[p] for p in want):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for m in c.consume(1000, timeout=1.0):
                part, offset = m.partition(), m.offset()
                if m.error() is None and part is not None and offset is not None:
                    pos[part] = offset + 1
                    out.append(m)
        return sorted(out, key=lambda m: (m.partition(), m.offset()))
    finally:
        c.close()


@dataclass
class LogCount:
    """The orders topic counted by the pipeline's definitions (what must have happened)."""

    published: int
    invalid: Counter[str]
    unique_valid: int
    duplicates: int


def count_orders_log(pipe: Pipe) -> LogCount:
    """Decode and validate every message of the orders topic; first occurrence of an id wins."""
    from schemas.rules import for_input, reason_code
    from schemas.serde import DecodeError, Decoder, Registry

    dec = Decoder(Registry(pipe.stack.schema_registry_url), "orders")
    validate_order = for_input("orders")
    now = int(time.time() * 1000)
    invalid: Counter[str] = Counter()
    seen: set[str] = set()
    dups = 0
    msgs = read_topic(pipe, pipe.inputs.topic("orders"))
    for _, _, value in msgs:
        try:
            rec = dec.decode(value or b"")
        except DecodeError:
            invalid["undecodable"] += 1
            continue
        reason = validate_order(rec, now)
        if reason:
            invalid[reason_code(reason)] += 1
        elif rec["order_id"] in seen:
            dups += 1
        else:
            seen.add(rec["order_id"])
    return LogCount(len(msgs), invalid, len(seen), dups)
