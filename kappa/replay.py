"""``kappa replay``: a backfill is the same code re-reading the retained log as a new version.

How it runs. A replay as version ``V`` starts ``V``'s Faust workers (group/app id
``kappa-V``, changelogs ``kappa-V-*``, output topics ``kappa.V.*``, RocksDB under
``KAPPA_HOME/processors/V``, models from no checkpoint) as child processes, and ``V``'s sink
*inside the replay process* (a thread) writing database ``kappa_V``. The serving views keep
reading the live version's tables until ``--swap``.

Why the sink runs in this process. The embedded engine (chdb) locks ``KAPPA_HOME/clickhouse``
to one process. Hosting ``V``'s sink here means this process owns the directory for the whole
replay: it answers ``kappa query`` (read-only endpoint, as the sink service does), and it can
repoint the views while holding the endpoint's connection lock, so a query running during the
swap sees the old views or the new ones, never a mix of them and never an error. Hence, with
the embedded engine, a running ``kappa run`` (whose sink holds the directory) makes the replay
refuse (:class:`SinkBusy`): stop it first, or use a ClickHouse server (``KAPPA_CLICKHOUSE_URL``),
where both run side by side and each ``CREATE OR REPLACE VIEW`` is atomic per view.

``--from ISO-8601`` (time ``T``). The boundary ``B`` is ``T`` floored to the window size (one
minute), so no window is split. Fact inputs (``orders``, ``order_labels``) start at the offsets
whose record timestamp is ``>= B - 5 min`` (``offsets_for_times``; 5 min is the accepted future
skew of event time, so every event with event time ``>= B`` comes after that offset when
producers stamp records at publish time); dimension topics (``users``) and ``samples.*`` are
read in full. Once drained, ``V``'s rows before ``B`` (by event time / window start / quality
bucket; processor rejections by input offset) are replaced with the live version's rows: only
``[B, now)`` is recomputed. At the boundary: windows from ``B`` on are recomputed from the
orders read; dedupe knows only order ids read by ``V`` (a duplicate of an order published
before the start offset lands, with that order's event time, so before ``B`` it is replaced by
the live copy); the fraud model starts cold at the start offset, so its quality buckets from
``B`` on are cumulative from there; the ``samples.*`` learners re-learn from scratch (all of
their rows are recomputed). Records published long after their event time (a backfilled log)
make the lookup start earlier: more work, same result.

Retention. Input topics keep everything (``kappa.topics``); when a fact topic's oldest retained
record is newer than the requested start, the replay refuses (:class:`NotRetained`).

>>> parse_start("earliest").at_ms is None
True
>>> s = parse_start("2024-05-01T10:15:30Z")
>>> s.at_ms, s.boundary_ms
(1714558530000, 1714558500000)
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from kappa import lineage, versions
from kappa.errors import KappaError
from kappa.kafka import client_config
from kappa.pipeline import current
from kappa.pipeline.derive import Names
from kappa.runner import DrainState, Pipeline, model_groups, processor_group, sink_group
from kappa.settings import Settings
from kappa.stack import endpoints

__all__ = [
    "FUTURE_SKEW_MS",
    "NotRetained",
    "ReplayError",
    "ReplayResult",
    "SinkBusy",
    "StartPoint",
    "Verification",
    "cleanup",
    "parse_start",
    "replay",
    "verify",
]

FUTURE_SKEW_MS = 5 * 60_000
"""Event time may be this far ahead of processing time (validation rule): the offset lookup margin."""
BOUNDARY_MS = 60_000
"""``--from`` is floored to this (the revenue window size) so no window is split."""


class ReplayError(KappaError):
    """A replay (or cleanup) cannot run as asked."""


class SinkBusy(ReplayError):
    """Another process (a running ``kappa run``) holds the embedded ClickHouse directory."""


class NotRetained(ReplayError):
    """The requested start is older than the oldest record the log still retains."""


# -- start point -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartPoint:
    """Where a replay starts: ``at_ms`` None = the earliest retained offsets."""

    at_ms: int | None = None

    @property
    def boundary_ms(self) -> int | None:
        """``at_ms`` floored to the window size: the first instant recomputed."""
        return None if self.at_ms is None else self.at_ms // BOUNDARY_MS * BOUNDARY_MS

    def __str__(self) -> str:
        if self.boundary_ms is None:
            return "earliest"
        return datetime.fromtimestamp(self.boundary_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def parse_start(text: str) -> StartPoint:
    """``earliest`` or an ISO-8601 instant (no zone = UTC).

    >>> parse_start("2024-05-01 10:00").at_ms
    1714557600000
    >>> parse_start("yesterday")
    Traceback (most recent call last):
    ...
    kappa.replay.ReplayError: --from takes 'earliest' or an ISO-8601 instant (2024-05-01T10:00:00Z), not 'yesterday'
    """
    if text.strip().lower() == "earliest":
        return StartPoint(None)
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReplayError(f"--from takes 'earliest' or an ISO-8601 instant (2024-05-01T10:00:00Z), "
                          f"not {text!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return StartPoint(int(dt.timestamp() * 1000))


def check_version(version: str) -> str:
    """A version name usable in topic, group and database names.

    >>> check_version("v2-fix_1")
    'v2-fix_1'
    >>> check_version("v 2")
    Traceback (most recent call last):
    ...
    kappa.replay.ReplayError: version names use letters, digits, '_' and '-' (got 'v 2')
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", version):
        raise ReplayError(f"version names use letters, digits, '_' and '-' (got {version!r})")
    return version


# -- Kafka side: start offsets and retention ----------------------------------------------------
def _consumer(settings: Settings, bootstrap: str, group: str) -> Consumer:
    return Consumer(client_config(settings, bootstrap, **{
        "group.id": group, "enable.auto.commit": False, "enable.partition.eof": False}))


def _partitions(consumer: Consumer, names: list[str]) -> list[TopicPartition]:
    meta = consumer.list_topics(timeout=10).topics
    return [TopicPartition(t, p) for t in names if t in meta and not meta[t].error
            for p in sorted(meta[t].partitions)]


def _oldest_timestamp(settings: Settings, bootstrap: str, tp: TopicPartition, offset: int) -> int | None:
    probe = _consumer(settings, bootstrap, f"kappa-replay-probe-{uuid.uuid4().hex[:8]}")
    try:
        probe.assign([TopicPartition(tp.topic, tp.partition, offset)])
        for msg in probe.consume(1, timeout=10):
            if msg.error() is None:
                return int(msg.timestamp()[1])
        return None
    finally:
        probe.close()


def start_offsets(settings: Settings, bootstrap: str, start: StartPoint,
                  echo: Callable[[str], None] = print) -> dict[tuple[str, int], int]:
    """Per fact partition, the offset a replay from ``start`` begins at (empty for earliest).

    Raises NotRetained when a fact partition's oldest retained record is newer than ``start``.
    """
    c = _consumer(settings, bootstrap, f"kappa-replay-probe-{uuid.uuid4().hex[:8]}")
    try:
        fact = [settings.topic_prefix + n for n, inp in current().inputs.items() if not inp.table]
        tps = _partitions(c, fact)
        lows = {(tp.topic, tp.partition): c.get_watermark_offsets(tp, timeout=10) for tp in tps}
        truncated = [tp for tp in tps if lows[(tp.topic, tp.partition)][0] > 0]
        if start.boundary_ms is None:
            if truncated:
                echo(f"! the log no longer holds the first records of {len(truncated)} partition(s) "
                     f"({', '.join(f'{t.topic}/{t.partition}' for t in truncated)}): "
                     "the replay starts at the oldest retained ones")
            return {}
        for tp in truncated:
            low = lows[(tp.topic, tp.partition)][0]
            oldest = _oldest_timestamp(settings, bootstrap, tp, low)
            if oldest is not None and oldest > start.boundary_ms:
                since = datetime.fromtimestamp(oldest / 1000, UTC).isoformat()
                raise NotRetained(
                    f"cannot replay from {start}: {tp.topic}/{tp.partition} retains records only since "
                    f"{since} (offset {low}); pick a later --from or restore the log")
        lookup = start.boundary_ms - FUTURE_SKEW_MS
        found = c.offsets_for_times([TopicPartition(tp.topic, tp.partition, lookup) for tp in tps],
                                    timeout=10)
        out = {}
        for tp in found:
            low, high = lows[(tp.topic, tp.partition)]
            out[(tp.topic, tp.partition)] = high if tp.offset < 0 else max(low, tp.offset)
        return out
    finally:
        c.close()


def commit_start(settings: Settings, bootstrap: str, version: str,
                 offsets: dict[tuple[str, int], int]) -> bool:
    """Commit ``offsets`` for the processors of ``version`` (labels: their model's consumer group)
    unless either group committed any already.

    Returns False when the group has progress of its own (a resumed replay keeps it).
    """
    if not offsets:
        return True
    # the models' label streams are read by the models' consumer group
    groups = model_groups(version)
    labels_of = {settings.topic_prefix + m.labels: groups[name] for name, m in current().models.items()
                 if m.reads_labels}
    per_group: dict[str, dict[tuple[str, int], int]] = {}
    for (t, p), o in offsets.items():
        per_group.setdefault(labels_of.get(t, processor_group(version)), {})[(t, p)] = o
    consumers = {g: _consumer(settings, bootstrap, g) for g in per_group}
    try:
        for g, offs in per_group.items():
            committed = consumers[g].committed([TopicPartition(t, p) for t, p in offs], timeout=10)
            if any(tp.offset >= 0 for tp in committed):
                return False
        for g, offs in per_group.items():
            consumers[g].commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offs.items()],
                                asynchronous=False)
        return True
    finally:
        for c in consumers.values():
            c.close()


# -- ClickHouse side -----------------------------------------------------------------------------
def _open(settings: Settings) -> Any:
    """The read-write backend, or SinkBusy when a running sink owns the embedded directory."""
    from sinks.backends import open_backend
    from sinks.embedded import LockedByAnotherProcess
    from sinks.query import endpoint_url

    busy = ("a running sink (`kappa run`) holds the embedded ClickHouse directory "
            f"{settings.home / 'clickhouse'}: stop kappa run first, or use a ClickHouse server via "
            "KAPPA_CLICKHOUSE_URL")
    if not settings.clickhouse_url and endpoint_url(settings) is not None:
        raise SinkBusy(busy)
    try:
        return open_backend(settings)  # waits while a `kappa query` holds the directory a moment
    except LockedByAnotherProcess as exc:
        raise SinkBusy(str(exc) if endpoint_url(settings) is None else busy) from exc


def _count(backend: Any, sql: str) -> int:
    return int(backend.scalar(sql) or 0)


def _tables_exist(backend: Any, db: str) -> set[str]:
    return {r[0] for r in backend.rows(f"SELECT name FROM system.tables WHERE database = '{db}'")}


def _bounded() -> dict[str, str]:
    """Table -> its event-time column (rows before the boundary come from the live version): the
    pipeline's streams, windows, sessions (by start), joins (by the left event's time), and its
    models' scores and drift events."""
    pipe = current()
    kinds = {"stream": "", "window": "window_start", "session": "session_start", "join": "left_time",
             "scores": "event_time"}
    out = {o.table: (pipe.input(o.name).time or "") if o.kind == "stream" else kinds[o.kind]
           for o in Names(pipe, "v").outputs() if o.kind in kinds}
    if pipe.models:
        out.update(drift_events="event_time")
    return {t: c for t, c in out.items() if c}


def apply_boundary(backend: Any, live: str, version: str, boundary_ms: int,
                   offsets: dict[tuple[str, int], int]) -> dict[str, int]:
    """Replace ``version``'s rows before ``boundary_ms`` with ``live``'s; return rows copied per table."""
    from sinks.migrate import database

    old, new = database(live), database(version)
    at = f"fromUnixTimestamp64Milli(toInt64({boundary_ms}), 'UTC')"
    scopes = {t: f"{col} < {at}" for t, col in _bounded().items()}
    models = current().models
    if models:
        scopes["model_quality"] = f"model IN ({', '.join(repr(m) for m in models)}) AND bucket < {at}"
    if offsets:
        before = " OR ".join(
            f"(topic = '{t}' AND toInt32OrZero(splitByChar('/', source)[-2]) = {p} "
            f"AND toInt64OrZero(splitByChar('/', source)[-1]) < {o})" for (t, p), o in sorted(offsets.items()))
        scopes["rejected_events"] = f"stage = 'processor' AND ({before})"
    copied = {}
    have = _tables_exist(backend, old)
    for table, where in scopes.items():
        backend.execute(f"ALTER TABLE {new}.{table} DELETE WHERE {where} SETTINGS mutations_sync = 1")
        if table in have:
            backend.execute(f"INSERT INTO {new}.{table} SELECT * FROM {old}.{table} FINAL WHERE {where}")
            copied[table] = _count(backend, f"SELECT count() FROM {new}.{table} FINAL WHERE {where}")
    return copied


# -- verification -------------------------------------------------------------------------------
_KAPPA_STATS = {
    "model_quality": "count() AS rows, sum(labelled) AS labelled_sum",
    "rejected_events": "count() AS rows",
    "drift_events": "count() AS rows",
}
_KAPPA_BREAKDOWNS = {
    "rejected_events": ("splitByChar(':', reason)[1]", "count()"),
    "model_quality": ("model", "argMax(roc_auc, bucket_index)"),
}
_LABELS = {"rejected_events": "rejections per reason", "model_quality": "last ROC AUC per model"}


@dataclass(frozen=True)
class _Measures:
    """What the verification compares on each view, derived from the definition."""

    stats: dict[str, str]
    """view -> aggregates compared (``expr AS name, ...``)."""
    breakdowns: dict[str, tuple[str, str]]
    """view -> (dimension, measure) shown when the view differs."""
    labels: dict[str, str]
    """view -> how its breakdown reads (``<measure> per <dimension>``)."""
    mapped: dict[str, str]
    """stream view -> its breakdown field when that field has a declared value map."""
    sources: dict[str, str] = field(default_factory=dict)
    """view -> the SQL its measures read instead of the view (``{db}`` and ``{<view>}``: the
    version's database and the SQL of its views): sessions and joins with ``_decided``."""


def _stats(grace_ms: int = 0) -> _Measures:
    """The verification's measures, from the definition: per stream view its rows, the sums of
    its numeric fields (not the key, id or time), late rows and the non-null counts of its
    nullable columns (enrichment, scores), broken down by its first value-mapped field, else its
    first window key, else its first low-cardinality field; per window its rows and the sums of
    its aggregations, by its first key; Kappa's own views as for every pipeline."""
    from sinks.ddl import tables

    pipe = current()
    derived = tables(pipe)
    stats: dict[str, str] = {}
    breakdowns: dict[str, tuple[str, str]] = {}
    labels: dict[str, str] = {}
    mapped: dict[str, str] = {}
    for inp in Names(pipe, "v").streams():
        skip = {inp.key, inp.id, inp.time}
        parts = ["count() AS rows"]
        parts += [f"round(sum({f.name}), {2 if f.type in ('float', 'double') else 0}) AS {f.name}"
                  for f in inp.schema.fields if f.numeric and not f.nullable and f.name not in skip]
        parts.append("countIf(late) AS late")
        columns = derived[inp.name].columns if inp.name in derived else ()
        own = {f.name for f in inp.schema.fields}
        parts += [f"countIf({c} IS NOT NULL) AS {c}_set" for c, t in columns
                  if t.startswith("Nullable") and c not in own]
        stats[inp.name] = ", ".join(parts)
        keys = [k for w in pipe.windows.values() if w.stream == inp.name for k in w.keys]
        dim = next(iter([*inp.value_maps, *keys, *inp.low_cardinality]), None)
        if dim is not None:
            breakdowns[inp.name] = (dim, "count()")
            labels[inp.name] = f"{inp.name} per {dim}"
            if dim in inp.value_maps:
                mapped[inp.name] = dim
    for w in pipe.windows.values():
        first = next(iter(w.aggregations))
        stats[w.name] = "count() AS rows, " + ", ".join(
            f"round(sum({a}), {0 if fn.strip() == 'count' else 6}) AS {a}" for a, fn in w.aggregations.items())
        if w.keys:
            breakdowns[w.name] = (w.keys[0], f"sum({first})")
            labels[w.name] = f"window {first} per {w.keys[0]}"
    # What the wall clock shows early (an idle partition's sessions final, its unmatched left
    # events) depends on how long a run sat idle, which a replay cannot reproduce: sessions and
    # joins are compared on what the log decides (``_decided``: the partition's watermark, the
    # latest event time of its stream, has passed the session's close or the left event's
    # interval end + grace; every pair is decided).
    sources: dict[str, str] = {}
    streams = {i.name for i in Names(pipe, "v").streams()}
    for se in pipe.sessions.values():
        sums = "".join(f", round(sum({a}), 6) AS {a}" for a, spec in se.aggregations.items()
                       if spec.split("(")[0].strip().lower() in ("count", "sum"))
        stats[se.name] = f"count() AS rows, countIf(final AND _decided) AS final{sums}"
        breakdowns[se.name] = (se.keys[0], "count()")
        time_field, by = pipe.inputs[se.stream].time, ", ".join(se.keys)
        closing = se.gap_ms + (grace_ms if se.grace_ms is None else se.grace_ms)
        on = " AND ".join(f"s.{k} = k._k_{k}" for k in se.keys)
        named = ", ".join(f"{k} AS _k_{k}" for k in se.keys)  # not the names of s: no clash in s.*
        sources[se.name] = (
            f"SELECT s.*, (toUnixTimestamp64Milli(s.session_end) + {closing} <= w._wm) "
            f"AS _decided FROM {{{se.name}}} AS s "
            f"LEFT JOIN (SELECT {named}, any(source_partition) AS _p FROM {{{se.stream}}} GROUP BY {by}) AS k ON {on} "
            f"LEFT JOIN (SELECT source_partition AS _p2, toUnixTimestamp64Milli(max({time_field})) AS _wm "
            f"FROM {{{se.stream}}} GROUP BY _p2) AS w ON k._p = w._p2")
    for j in pipe.joins.values():
        stats[j.name] = "countIf(_decided) AS rows, countIf(matched) AS matched"
        breakdowns[j.name] = ("matched", "countIf(_decided)")
        left, right = pipe.inputs[j.left], pipe.inputs[j.right]
        if j.right not in streams or j.left not in streams:
            stats[j.name], breakdowns[j.name] = "count() AS rows, countIf(matched) AS matched", ("matched", "count()")
            continue
        reach = j.upper_ms + (grace_ms if j.grace_ms is None else j.grace_ms)
        ident = left.id or "concat(toString(source_partition), '/', toString(source_offset))"
        sources[j.name] = (
            f"SELECT j.*, (j.matched OR toUnixTimestamp64Milli(j.left_time) + {reach} < w._wm) "
            f"AS _decided FROM {{{j.name}}} AS j "
            f"LEFT JOIN (SELECT {ident} AS _id, source_partition AS _p FROM {{{j.left}}}) AS l ON j.left_id = l._id "
            f"LEFT JOIN (SELECT source_partition AS _p2, toUnixTimestamp64Milli(max({right.time})) AS _wm "
            f"FROM {{{j.right}}} GROUP BY _p2) AS w ON l._p = w._p2")
    if pipe.models:
        stats["model_quality"] = _KAPPA_STATS["model_quality"]
        breakdowns["model_quality"] = _KAPPA_BREAKDOWNS["model_quality"]
    stats["rejected_events"] = _KAPPA_STATS["rejected_events"]
    breakdowns["rejected_events"] = _KAPPA_BREAKDOWNS["rejected_events"]
    if pipe.models:
        stats["drift_events"] = _KAPPA_STATS["drift_events"]
    return _Measures(stats, breakdowns, {**_LABELS, **labels}, mapped, sources)


@dataclass
class Verification:
    """Per-view aggregates of the live version vs the replayed one, and what explains differences."""

    live: str | None
    version: str
    stats: dict[str, tuple[dict[str, float], dict[str, float]]] = field(default_factory=dict)
    explanations: list[str] = field(default_factory=list)
    breakdown_differs: bool = False

    @property
    def identical(self) -> bool:
        """Same aggregates on every view, and same per-category/reason/model breakdowns."""
        return all(a == b for a, b in self.stats.values()) and not self.breakdown_differs

    def lines(self) -> list[str]:
        out = [f"verification: live {self.live or '(none)'} vs replayed {self.version}"]
        out.append(f"  {'view':<20} {'measure':<13} {'live':>16} {'replayed':>16} {'diff':>12}")
        for view, (old, new) in self.stats.items():
            for k in new:
                a, b = old.get(k, 0.0), new[k]
                diff = "" if a == b else f"{b - a:+,.2f}".rstrip("0").rstrip(".")
                out.append(f"  {view:<20} {k:<13} {a:>16,.2f} {b:>16,.2f} {diff:>12}".replace(".00 ", "    "))
        out.append("  " + ("identical on every view" if self.identical else "differences:"))
        out.extend("    " + e for e in self.explanations)
        return out


def _view_sql(view: str, db: str, sources: dict[str, str] | None = None) -> str:
    """The SQL the verification reads for ``view`` over ``db`` (its measures' source, if any)."""
    from sinks.views import VIEWS

    source = (sources or {}).get(view)
    if source is None:
        return f"({VIEWS[view].format(db=db)})"
    return "(" + source.format(db=db, **{v: f"({sql.format(db=db)})" for v, sql in VIEWS.items()}) + ")"


def version_config(settings: Settings, version: str) -> dict[str, Any] | None:
    """What ``kappa replay`` recorded about ``version`` (its knobs), or None."""
    path = settings.home / "versions" / f"{version}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return None


def verify(settings: Settings, backend: Any, live: str | None, version: str) -> Verification:
    """Row counts and sums per serving view over ``live``'s tables and ``version``'s."""
    from sinks.migrate import database

    report = Verification(live, version)
    dbs = [database(v) for v in (live, version) if v]
    present = [_tables_exist(backend, db) for db in dbs]
    from sinks.rows import tables_of

    measures_of = _stats(int(settings.window_grace_seconds * 1000))
    stats, breakdowns = measures_of.stats, measures_of.breakdowns
    first_table = next(iter(tables_of(current())))
    for view, measures in stats.items():
        got = []
        for db, have in zip(dbs, present, strict=True):
            try:
                row = backend.rows(f"SELECT {measures} FROM {_view_sql(view, db, measures_of.sources)}") \
                    if first_table in have else []
            except KappaError:
                row = []
            names = [m.rsplit(" AS ", 1)[1] for m in measures.split(", ") if " AS " in m]
            got.append({n: float(v or 0) for n, v in zip(names, row[0], strict=True)} if row else {})
        old, new = (got[0], got[1]) if live else ({}, got[0])
        report.stats[view] = (old, new)
    if live is None:
        report.explanations.append("no live version: nothing to compare with")
        return report
    cfg_old, cfg_new = version_config(settings, live), version_config(settings, version)
    knobs_old = (cfg_old or {}).get("settings", {})
    knobs_new = (cfg_new or {}).get("settings", {})
    for k in sorted(set(knobs_old) | set(knobs_new)):
        if cfg_old is not None and knobs_old.get(k) != knobs_new.get(k):
            report.explanations.append(f"settings differ: {k} {knobs_old.get(k)!r} -> {knobs_new.get(k)!r}")
    if cfg_old is None and any(knobs_new.values()):
        report.explanations.append(f"{version} ran with {', '.join(f'{k}={v!r}' for k, v in knobs_new.items() if v)}"
                                   f" ({live}'s settings were not recorded: it was not started by kappa replay)")
    if cfg_new and cfg_new.get("from") not in (None, "earliest"):
        report.explanations.append(f"{version} recomputed only event time >= {cfg_new['from']}; "
                                   f"earlier rows were copied from {live}")
    for view, (old, new) in report.stats.items():
        if view not in breakdowns:
            continue
        dim, measure = breakdowns[view]
        sides = []
        for db in (database(live), database(version)):
            sides.append({str(r[0]): float(r[1]) for r in backend.rows(
                f"SELECT {dim} AS k, {measure} FROM {_view_sql(view, db, measures_of.sources)} GROUP BY k "
                "ORDER BY k")})
        changed = [(k, sides[0].get(k), sides[1].get(k)) for k in sorted(set(sides[0]) | set(sides[1]))
                   if sides[0].get(k) != sides[1].get(k)]
        if not changed:
            continue
        report.breakdown_differs = True
        parts = [f"{k}: {_num(a)} -> {_num(b)}" for k, a, b in changed[:8]]
        more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
        label = measures_of.labels.get(view, f"{measure} per {dim}")
        report.explanations.append(f"{view}: {label}: " + "; ".join(parts) + more)
        field_ = measures_of.mapped.get(view)
        if field_ and old == new:
            report.explanations.append(f"{view}: same rows and sums, only {field_} moved "
                                       f"(a changed value map of {field_})")
        if view == "model_quality":
            report.explanations.append("model_quality: the models learn from the (changed) features, "
                                       "so their metrics follow the transformation")
    return report


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{int(v):,}" if float(v).is_integer() else f"{v:.4f}"


# -- swap -------------------------------------------------------------------------------------------
@contextmanager
def _queries_paused(service: Any) -> Iterator[None]:
    """Hold the in-process query endpoint's connection lock (embedded engine), else nothing.

    Every ``kappa query`` statement answered by this process takes that lock, so while it is
    held no query runs: each query sees all views before the swap or all views after it.
    """
    endpoint = getattr(service, "endpoint", None)
    lock = getattr(getattr(endpoint, "backend", None), "_lock", None)
    with lock if lock is not None else nullcontext():
        yield


def swap(settings: Settings, backend: Any, version: str, service: Any = None) -> str | None:
    """Repoint every serving view at ``version``; record it as live; return the previous one."""
    from sinks.migrate import database
    from sinks.views import SERVING_DB, VIEWS, serving_version, swap_views

    previous = serving_version(backend)
    with _queries_paused(service):
        swap_views(backend, version)
    db = database(version)
    rows = backend.rows(f"SELECT name, create_table_query FROM system.tables WHERE database = '{SERVING_DB}' "
                        "AND engine = 'View'")
    stale = sorted(set(VIEWS) - {name for name, sql in rows if f"{db}." in sql})
    if stale:
        raise ReplayError(f"views not repointed at {db}: {', '.join(stale)}")
    versions.record_live(settings, version, previous, datetime.now(UTC).isoformat())
    return previous


# -- the replay -------------------------------------------------------------------------------------
class _ReplayPipeline(Pipeline):
    """The lead's supervisor, for the workers only (the sink runs in the replay process)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.children = [c for c in self.children if c.name != "sink"]

    def _env(self) -> dict[str, str]:
        env = super()._env()
        for knob in current().knobs:  # this version's knobs, explicitly
            env[f"KAPPA_{knob.upper()}"] = self.settings.knob(knob)
        return env


@dataclass
class ReplayResult:
    """What a replay did."""

    version: str
    start: StartPoint
    drained: bool
    seconds: float
    catch_up_seconds: float
    events: int
    verification: Verification | None = None
    swapped_from: str | None = None
    swapped: bool = False
    copied: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.catch_up_seconds if self.catch_up_seconds > 0 else 0.0


class _Progress:
    """Progress line per poll: lag per input, sink lag, rate and ETA."""

    def __init__(self, pipe: Pipeline, echo: Callable[[str], None]) -> None:
        self.pipe, self.echo = pipe, echo
        self.t0 = time.monotonic()
        self.first: int | None = None
        self.last: tuple[float, int] | None = None
        self.rate = 0.0
        self.caught_up_at: float | None = None
        self.state: DrainState | None = None

    def __call__(self, line: str) -> None:
        if not line.startswith("["):
            self.echo(line)
            return
        s = self.pipe.last_state or self.pipe.state()  # the run loop queried it for this very line
        now = time.monotonic()
        self.state = s
        consumed = s.processors.consumed
        if self.first is None:
            self.first = consumed
        if self.last is not None and now > self.last[0]:
            inst = (consumed - self.last[1]) / (now - self.last[0])
            self.rate = inst if self.rate == 0 else 0.5 * self.rate + 0.5 * inst
        self.last = (now, consumed)
        if s.drained and self.caught_up_at is None:
            self.caught_up_at = now
        i = self.pipe.inputs
        lag = s.processors.by_topic()
        shown = [i.prefix + n for n in current().inputs] + sorted(t for t in lag if t.startswith(i.samples("")))
        parts = [f"{t.removeprefix(i.prefix)} {lag[t]:,}" for t in shown if t in lag]
        internal = sum(v for t, v in lag.items() if t not in shown)
        eta = (s.processors.total + s.sink.total) / self.rate if self.rate > 0 else float("inf")
        eta_s = "done" if s.drained else ("?" if eta == float("inf") else f"{eta:,.0f}s")
        self.echo(f"[{now - self.t0:6.1f}s] lag: {' | '.join(parts)} | internal {internal:,} | "
                  f"sink {s.sink.total:,} | {max(0.0, self.rate):,.0f} ev/s | ETA {eta_s}")


def replay(settings: Settings, version: str, start: StartPoint, *, swap_views: bool = False,
           workers: int = 1, echo: Callable[[str], None] = print, poll: float = 2.0,
           max_seconds: float | None = None,
           on_caught_up: Callable[[Verification], None] | None = None) -> ReplayResult:
    """Replay the retained log as ``version``; with ``swap_views`` repoint the views once caught up.

    ``settings`` are the new version's (e.g. its value-map knobs). ``on_caught_up`` is called
    with the verification report before the swap (tests use it to start a query loop).
    """
    from sinks import migrate
    from sinks.service import SinkService
    from sinks.views import serving_version

    check_version(version)
    t0 = time.monotonic()
    backend = _open(settings)
    service: SinkService | None = None
    thread: threading.Thread | None = None
    try:
        live = serving_version(backend)
        existing = _existing_versions(settings, backend)
        if version == live:
            raise ReplayError(f"{version} is the live version (the serving views read it): replay into "
                              f"a new version name, e.g. --version {versions.next_free(version, existing)}")
        _refuse_existing(settings, backend, version, start, existing)
        ep = endpoints(settings)
        lineage.bind(settings, ep.kafka_bootstrap, version)  # before anything is committed for it
        offsets = start_offsets(settings, ep.kafka_bootstrap, start, echo)
        if start.boundary_ms is not None and live is None:
            raise ReplayError(f"--from {start} replaces a range of the live version's results, but no "
                              "version is live yet: use --from earliest")
        if live is not None:  # its rows are copied and compared in the current table shapes
            migrate.apply(backend, live)
        migrate.apply(backend, version)
        fresh = commit_start(settings, ep.kafka_bootstrap, version, offsets)
        if not fresh:
            echo(f"{processor_group(version)} has committed offsets already: resuming where it stopped")
        _record(settings, version, start)
        echo(f"replaying from {start} as {version} (live: {live or 'none'}); "
             f"{'fact inputs from ' + str(sum(offsets.values())) + ' offsets in' if offsets else ''}")
        service = SinkService(settings, version, backend=backend)
        service.start()
        thread = threading.Thread(target=service.run, name=f"kappa-sink-{version}", daemon=True)
        thread.start()
        pipe = _ReplayPipeline(settings, version, workers=workers)
        progress = _Progress(pipe, echo)
        progress.first = pipe.state().processors.consumed
        pipe.echo = progress
        state = pipe.run(until_drained=True, poll=poll, max_seconds=max_seconds)
        drained = state.drained
        caught = (progress.caught_up_at or time.monotonic()) - progress.t0
        events = state.processors.consumed - (progress.first or 0)
        result = ReplayResult(version, start, drained, 0.0, caught, events)
        if not drained:
            echo(f"replay of {version} stopped before catching up: nothing swapped "
                 f"(run the same command again to resume)")
            return result
        _record(settings, version, start, caught_up=True)
        if start.boundary_ms is not None and live is not None:
            result.copied = apply_boundary(backend, live, version, start.boundary_ms, offsets)
            echo(f"rows before {start} copied from {live}: "
                 + ", ".join(f"{t} {n:,}" for t, n in result.copied.items()))
        result.verification = verify(settings, backend, live, version)
        for line in result.verification.lines():
            echo(line)
        if on_caught_up is not None:
            on_caught_up(result.verification)
        if swap_views:
            result.swapped_from = swap(settings, backend, version, service)
            result.swapped = True
            echo(f"swapped: the serving views now read {version} (was {live or 'none'}); "
                 f"`kappa run` (no --version) now runs {version} and keeps them fresh"
                 + (f"; drop the old one with: kappa replay --cleanup {live}" if live else ""))
        result.seconds = time.monotonic() - t0
        echo(f"replay summary: {version} from {start}: {result.events:,} input events in "
             f"{result.catch_up_seconds:.1f}s ({result.events_per_s:,.0f} ev/s), "
             f"total {result.seconds:.1f}s, {'swapped' if result.swapped else 'not swapped'}")
        return result
    finally:
        if thread is not None and service is not None:
            service.stop()
            thread.join(timeout=120)
        elif service is not None:
            service.close()
        else:
            backend.close()


def _record(settings: Settings, version: str, start: StartPoint, caught_up: bool = False) -> None:
    path = settings.home / "versions" / f"{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    started = (version_config(settings, version) or {}).get("started_at") if caught_up else None
    path.write_text(json.dumps({"version": version, "from": str(start),
                                "started_at": started or datetime.now(UTC).isoformat(),
                                "caught_up": caught_up,
                                "settings": {k: settings.knob(k) for k in current().knobs}}))


def _existing_versions(settings: Settings, backend: Any) -> set[str]:
    """Version names in use: versioned databases (``kappa_<V>``) and this home's records."""
    dbs = {r[0] for r in backend.rows("SELECT name FROM system.databases WHERE startsWith(name, 'kappa_')")}
    return {db.removeprefix("kappa_") for db in dbs} | versions.known_versions(settings)


def _refuse_existing(settings: Settings, backend: Any, version: str, start: StartPoint,
                     existing: set[str]) -> None:
    """Refuse a replay into a version that exists already, unless it resumes an unfinished
    replay from the same start (its groups' committed offsets would make it process nothing)."""
    from sinks.migrate import database

    if not _tables_exist(backend, database(version)):
        return
    record = version_config(settings, version)
    if record is not None and not record.get("caught_up") and record.get("from") == str(start):
        return  # an interrupted replay: resume it
    how = ("ran by kappa run" if record is None else
           f"replayed from {record.get('from')} already" if record.get("caught_up") else
           f"an unfinished replay from {record.get('from')}")
    raise ReplayError(f"{version} exists ({how}): `kappa replay --cleanup {version}` first, or replay into "
                      f"a new version name, e.g. --version {versions.next_free(version, existing)}")


# -- cleanup ------------------------------------------------------------------------------------------
SESSION_EXPIRY_S = 15.0
"""How long cleanup waits for the members of a stopped run to leave its groups: every consumer of
a version (Faust workers, fraud consumer, sink) has a 10 s session timeout, plus a margin."""


def _members(admin: Any, groups: list[str]) -> dict[str, int]:
    """Members per group that has any (groups Kafka cannot describe count as empty)."""
    out: dict[str, int] = {}
    try:
        described = admin.describe_consumer_groups(groups, request_timeout=10)
    except KafkaException:
        return out
    for g, fut in described.items():
        try:
            n = len(fut.result().members)
        except KafkaException:
            continue
        if n:
            out[g] = n
    return out


def _wait_groups_left(admin: Any, version: str, groups: list[str], echo: Callable[[str], None],
                      timeout: float) -> None:
    """Return once no group of ``version`` has members; ReplayError if some still do after ``timeout``.

    A run that stopped a moment ago can still be listed: a consumer that did not leave its
    group (killed, or closed without a leave request) stays a member until its session
    expires. So members are first waited out for up to one session timeout.
    """
    busy = _members(admin, groups)
    if not busy:
        return
    names = ", ".join(f"{g} ({n})" for g, n in sorted(busy.items()))
    echo(f"groups of {version} still list members: {names}; a run stopped moments ago stays listed "
         f"until its session expires: waiting up to {timeout:.0f}s")
    deadline = time.monotonic() + timeout
    while busy and time.monotonic() < deadline:
        time.sleep(1.0)
        busy = _members(admin, groups)
    if busy:
        g, n = sorted(busy.items())[0]
        raise ReplayError(f"{version} is running (group {g} still has {n} member(s) after {timeout:.0f}s, "
                          f"longer than a session lasts): stop it before cleaning up")
    echo(f"groups of {version} have no members any more: cleaning up")


def cleanup(settings: Settings, old: str, echo: Callable[[str], None] = print,
            session_expiry_s: float = SESSION_EXPIRY_S) -> list[str]:
    """Drop ``old``'s tables, topics, consumer groups and local state; never the live version."""
    from confluent_kafka.admin import AdminClient

    from sinks.migrate import database
    from sinks.views import serving_version

    check_version(old)
    ep = endpoints(settings)
    admin = AdminClient(client_config(settings, ep.kafka_bootstrap))
    groups = [processor_group(old), *model_groups(old).values(), sink_group(old)]
    recorded = versions.read_live(settings)
    if recorded is not None and recorded.version == old:  # refuse before waiting on its groups
        raise ReplayError(f"refusing to drop {old}: it is the live version (the serving views read "
                          "it); swap to another version first (kappa replay --version V --swap)")
    _wait_groups_left(admin, old, groups, echo, session_expiry_s)
    dropped: list[str] = []
    with _open(settings) as backend:
        live = serving_version(backend)
        if old == live:
            raise ReplayError(f"refusing to drop {old}: it is the live version (the serving views read "
                              "it); swap to another version first (kappa replay --version V --swap)")
        db = database(old)
        if db in {r[0] for r in backend.rows("SELECT name FROM system.databases")}:
            backend.execute(f"DROP DATABASE IF EXISTS {db} SYNC")
            dropped.append(f"database {db}")
    old_names = Names(current(), old)
    patterns = [re.compile(re.escape(f"{old_names.group}-") + ".*"),
                re.compile(re.escape(old_names.output_prefix) + ".*")]
    names = [t for t in admin.list_topics(timeout=10).topics if any(p.fullmatch(t) for p in patterns)]
    if names:
        for name, fut in admin.delete_topics(names, operation_timeout=30).items():
            try:
                fut.result()
                dropped.append(f"topic {name}")
            except KafkaException as exc:
                echo(f"! could not delete topic {name}: {exc}")
    for g, fut in admin.delete_consumer_groups(groups, request_timeout=10).items():
        try:
            fut.result()
            dropped.append(f"group {g}")
        except KafkaException:
            pass  # never existed
    local = settings.home / "processors" / old
    if local.exists():
        shutil.rmtree(local)
        dropped.append(f"local state {local}")
    (settings.home / "versions" / f"{old}.json").unlink(missing_ok=True)
    if not dropped:
        echo(f"nothing to clean up for {old}")
    for d in dropped:
        echo(f"dropped {d}")
    return dropped
