"""``kappa demo``: from nothing to a printed report, for any pipeline with sample data.

Up (Kafka + registry) -> topics -> the pipeline's sample data (its generator, or its sample
files) -> run until drained -> a report from its ClickHouse views. A second ``kappa demo`` on
the same ``KAPPA_HOME`` does not publish again: the log is already there, so it just
(re)processes and reports — the Kappa way.

The report comes from the definition alone. What each input must give is computed from the
published records with the pipeline's own declarations — its rules (judged at the publish time,
which is the records' Kafka timestamp within a few seconds) and its dedupe id, first occurrence
wins — so the report checks that nothing was lost or doubled: published = landed + rejected +
duplicates, per stream; then each window's rows and each model's latest progressive quality.

A pipeline may declare its own report, ``[pipeline] report = "module:function"``: the function
gets the :class:`DemoRun` (these measures and lines, the generator's manifest, a query function)
and returns a :class:`DemoReport`. The e-commerce example's reconciles with its generator's
manifest (per currency, per revenue window, the model's quality at the drift).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kappa import stack
from kappa.errors import ConfigError
from kappa.pipeline import DEFAULT, current
from kappa.pipeline import Pipeline as Definition
from kappa.pipeline.derive import Names
from kappa.runner import Pipeline
from kappa.settings import Settings

__all__ = ["DemoReport", "DemoRun", "Expected", "expected", "reconcile", "run_demo"]


@dataclass
class Expected:
    """What one input must give in the views."""

    published: int = 0
    landed: int = 0
    rejected: int = 0
    duplicates: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class DemoReport:
    """The report's lines, and whether the views reconcile with what was published."""

    lines: list[str]
    reconciled: bool


@dataclass
class DemoRun:
    """What a report hook gets: the run, the generic measures and their lines."""

    settings: Settings
    pipeline: Definition
    expected: dict[str, Expected]
    """Per input, what it must give (from the published records and the definition)."""
    manifest: dict[str, Any]
    """The generator's manifest (:class:`producers.generators.Generated`), empty without one."""
    generic: DemoReport
    """The report derived from the definition alone."""

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of read-only ``sql`` (the serving views)."""
        from sinks.query import query_rows

        return query_rows(self.settings, sql)


def expected(pipe: Definition, records: Iterable[tuple[str, dict[str, Any] | None]], now_ms: int,
             edge_rejected: dict[str, int] | None = None) -> dict[str, Expected]:
    """Per input, from ``(input, record)`` in publish order (None: a row rejected at the
    producer edge, already counted in ``edge_rejected``), by the pipeline's rules and dedupe."""
    from schemas.rules import reason_code, validators

    validate = validators(pipe)
    out = {name: Expected() for name in pipe.inputs}
    seen: dict[str, set[Any]] = {name: set() for name in pipe.inputs}
    for name, n in ((k, v) for k, v in (edge_rejected or {}).items() if v):
        out[name].published += n
        out[name].rejected += n
        out[name].reasons["producer"] = out[name].reasons.get("producer", 0) + n
    for name, rec in records:
        e = out[name]
        e.published += 1
        reason = validate[name](rec, now_ms) if rec is not None else None
        if reason:
            e.rejected += 1
            code = reason_code(reason)
            e.reasons[code] = e.reasons.get(code, 0) + 1
            continue
        ident = pipe.inputs[name].id
        if ident is not None and rec is not None:
            if rec[ident] in seen[name]:
                e.duplicates += 1
                continue
            seen[name].add(rec[ident])
        e.landed += 1
    return out


def _publish(settings: Settings, pipe: Definition, events: int, seed: int,
             echo: Callable[[str], None]) -> tuple[dict[str, Expected], dict[str, Any]]:
    from producers.base import Publisher
    from producers.generators import generator_of, publish_events, run_generator

    ep = stack.endpoints(settings)
    generate = generator_of(pipe)
    now = time.time_ns() // 1_000_000
    if generate is not None:
        run = run_generator(generate, events, seed)
        echo(f"publishing {len(run.events):,} events (seed {seed}, {run.note or 'generator ' + str(pipe.generator)})")
        with Publisher(settings, ep.kafka_bootstrap, total=len(run.events)) as pub:
            publish_events(pub, run.events)
            echo(f"  {pub.flush()}")
        return expected(pipe, ((e.topic, e.value) for e in run.events), now), run.manifest
    if not pipe.samples:
        raise ConfigError(f"{pipe.path}: pipeline {pipe.name} has no sample data: declare "
                          "[pipeline] generator = \"module:function\" or samples = { <input> = \"file.jsonl\" }")
    from producers.files import field_types, publish_file

    rows: list[tuple[str, dict[str, Any] | None]] = []
    edge: dict[str, int] = {}
    with Publisher(settings, ep.kafka_bootstrap) as pub:
        for name in pipe.inputs:  # declared order: tables before the streams joined with them
            path = pipe.samples.get(name)
            if path is None:
                continue
            topic = settings.topic_prefix + name
            rep = publish_file(pub, path, topic, report=lambda line: echo(f"  {line}"), now_ms=now)
            echo(f"  {path.name} -> {topic}: {rep.published:,} published, {rep.rejected:,} rejected")
            edge[name] = rep.rejected
            rows += [(name, rec) for rec in _coerced(path, field_types(pipe.inputs[name].schema.name))]
        echo(f"  {pub.flush()}")
    return expected(pipe, rows, now, edge), {}


def _coerced(path: Path, fields: list[Any]) -> Iterable[dict[str, Any]]:
    """The rows of ``path`` as the producer published them (rows it rejected left out)."""
    from producers.files import coerce_row, read_rows

    for _, _, row in read_rows(path, {".csv": "csv"}.get(path.suffix.lower(), "jsonl")):
        if isinstance(row, dict):
            try:
                yield coerce_row(row, fields, from_text=path.suffix.lower() == ".csv")
            except Exception:  # rejected at the edge, counted there
                continue


def reconcile(settings: Settings, pipe: Definition, want: dict[str, Expected]) -> DemoReport:
    """Compare the pipeline's views with what its inputs must give (the definition's report)."""
    from sinks.query import query_rows

    def q(sql: str) -> list[dict[str, Any]]:
        return query_rows(settings, sql)

    db, names = pipe.database, Names(pipe, "v", settings.topic_prefix)
    lines: list[str] = []
    ok = True
    rejected = {r["topic"]: int(r["n"]) for r in q(
        f"SELECT topic, count() AS n FROM {db}.rejected_events GROUP BY topic")}
    for inp in pipe.inputs.values():
        e = want[inp.name]
        if not e.published:
            continue
        topic = names.input_topic(inp.name)
        got_rejected = rejected.get(topic, 0) + rejected.get(names.dlq(inp.name), 0)
        if inp.table or inp.name not in {s.name for s in names.streams()}:
            good = got_rejected == e.rejected
            ok &= good
            lines.append(f"{inp.name}: published {e.published:,}, rejected {got_rejected:,} (expected "
                         f"{e.rejected:,}) {'OK' if good else 'MISMATCH'}")
            continue
        row = q(f"SELECT count() AS n, countIf(late) AS late FROM {db}.{inp.name}")[0]
        landed, late = int(row["n"]), int(row["late"])
        good = landed == e.landed and got_rejected == e.rejected
        ok &= good
        balance = landed + got_rejected + e.duplicates
        ok &= balance == e.published
        lines.append(f"{inp.name}: landed {landed:,} in {db}.{inp.name} (expected {e.landed:,}, {late:,} of them "
                     f"too late), rejected {got_rejected:,} (expected {e.rejected:,}) {'OK' if good else 'MISMATCH'}")
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(e.reasons.items()))
        if reasons:
            lines.append(f"  rejections by reason: {reasons}")
        lines.append(f"  reconciliation: published {e.published:,} = landed {landed:,} + rejected {got_rejected:,} "
                     f"+ duplicates {e.duplicates:,} -> {'holds' if balance == e.published else 'BROKEN'}")
    for w in pipe.windows.values():
        row = q(f"SELECT count() AS n, countIf(final) AS final FROM {db}.{w.name}")[0]
        first = next(iter(w.aggregations))
        counted = q(f"SELECT sum({first}) AS s FROM {db}.{w.name}")[0]["s"] if \
            w.aggregations[first].strip() == "count" else None
        hop = w.size_ms // w.hop_ms
        lines.append(f"{w.name}: {int(row['n']):,} windows ({int(row['final']):,} final)"
                     + (f", {int(counted or 0):,} events counted ({hop} window(s) per event)" if counted is not None
                        else ""))
        ok &= int(row["n"]) > 0
    for se in pipe.sessions.values():
        # sessionising the stream's not-late rows independently must give the same sessions
        time_field, keys = pipe.inputs[se.stream].time, ", ".join(se.keys)
        row = q(f"SELECT count() AS n, countIf(final) AS n_final FROM {db}.{se.name}")[0]
        again = q(f"SELECT countIf(rn = 1 OR ms - prev >= {se.gap_ms}) AS n, count() AS events FROM ("
                  f"SELECT row_number() OVER w AS rn, toUnixTimestamp64Milli({time_field}) AS ms, "
                  f"lagInFrame(toUnixTimestamp64Milli({time_field})) OVER w AS prev FROM {db}.{se.stream} "
                  f"WHERE NOT late WINDOW w AS (PARTITION BY {keys} ORDER BY {time_field} "
                  "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))")[0]
        good = int(row["n"]) == int(again["n"]) and int(row["n"]) > 0
        ok &= good
        lines.append(f"{se.name}: {int(row['n']):,} sessions in {db}.{se.name} ({int(row['n_final']):,} final) = "
                     f"sessionising the {int(again['events']):,} not-late {se.stream} per {keys} "
                     f"({se.gap_ms // 60_000} min gap): {int(again['n']):,} -> {'holds' if good else 'BROKEN'}")
    for j in pipe.joins.values():
        # (aliases unlike the columns: ClickHouse resolves a column name to an alias of the same name)
        row = q(f"SELECT uniqExact(left_id) AS n, uniqExactIf(left_id, matched) AS n_matched, "
                f"countIf(matched) AS pairs FROM {db}.{j.name}")[0]
        n, matched = int(row["n"]), int(row["n_matched"])
        lines.append(f"{j.name}: {n:,} {j.left} joined ({j.how} join), {matched:,} with {j.right} within "
                     f"[{j.lower_ms // 1000}s, {j.upper_ms // 1000}s] ({int(row['pairs']):,} pairs), "
                     f"{n - matched:,} unmatched; {j.left} whose interval is still open wait for its end")
        ok &= n > 0
    if pipe.models:
        quality = {r["model"]: r for r in q(
            "SELECT model, argMax(labelled, bucket) AS labelled, argMax(roc_auc, bucket) AS roc_auc, "
            f"argMax(accuracy, bucket) AS accuracy FROM {db}.model_quality GROUP BY model")}
        for m in pipe.models:
            r = quality.get(m)
            lines.append(f"{m} model (cumulative): ROC AUC {float(r['roc_auc']):.3f}, accuracy "
                         f"{float(r['accuracy']):.3f} after {int(r['labelled']):,} labels" if r
                         else f"{m} model: no quality rows yet")
    views = ", ".join(f"{db}.{v}" for v in names.views())
    where = "" if pipe.root == DEFAULT else f" --pipeline {pipe.root}"
    lines.append(f'next: .venv/bin/kappa query{where} "SELECT * FROM {db}.'
                 f'{next(iter(names.views()))} LIMIT 10"  (views: {views})')
    return DemoReport(lines, ok)


def _saved(path: Path) -> tuple[dict[str, Expected], dict[str, Any]]:
    doc = json.loads(path.read_text())
    if "expected" not in doc:  # written before the generator's manifest was kept beside it
        doc = {"expected": doc}
    return {k: Expected(**v) for k, v in doc["expected"].items()}, doc.get("manifest", {})


def run_demo(settings: Settings, events: int = 20_000, seed: int = 42,
             echo: Callable[[str], None] = print, max_seconds: float = 900) -> DemoReport:
    """Up, topics, publish the sample data, run until drained, report (also echoed)."""
    from kappa.versions import choose_run_version

    pipe = current()
    # the default pipeline's messages name no pipeline (as every other command's)
    named = pipe.root != DEFAULT
    t0 = time.monotonic()
    echo("1/4 starting the local stack (Kafka + schema registry)"
         + (f" for pipeline {pipe.name}" if named else "") + " ...")
    for row in stack.up(settings):
        echo(f"  {row.name:<9} {row.address}  {row.detail}")
    version = choose_run_version(settings, echo=echo)  # after a swap: the version the views serve
    runner = Pipeline(settings, version, echo=echo)
    echo("2/4 creating topics ...")
    runner.prepare()
    saved = settings.home / "manifests" / f"{pipe.name}.json"
    if saved.exists() and runner.published() > 0:
        want, manifest = _saved(saved)
        echo(f"3/4 the log already holds the demo's {sum(e.published for e in want.values()):,} events: "
             "not publishing again")
    else:
        echo(f"3/4 generating {pipe.title} events ..." if pipe.generator else "3/4 publishing sample data ...")
        want, manifest = _publish(settings, pipe, events, seed, echo)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"expected": {k: asdict(v) for k, v in want.items()}, "manifest": manifest}))
    echo(f"4/4 running {pipe.name if named else 'pipeline'} {version} until drained ...")
    runner.run(until_drained=True, max_seconds=max_seconds)
    report = reconcile(settings, pipe, want)
    if pipe.report:
        own = pipe.resolve(pipe.report)(DemoRun(settings, pipe, want, manifest, report))
        report = DemoReport(own.lines, own.reconciled and report.reconciled)
    echo("")
    echo(f"=== Kappa demo report{f': pipeline {pipe.name}' if named else ''} ({time.monotonic() - t0:.0f}s) ===")
    for line in report.lines:
        echo(line)
    return report
