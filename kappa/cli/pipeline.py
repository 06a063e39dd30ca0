"""``kappa pipeline show``: what a pipeline definition derives (topics, groups, tables, views)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

__all__ = ["init", "pipeline"]


@click.group()
def pipeline() -> None:
    """The pipeline definition (--pipeline DIR / KAPPA_PIPELINE, default examples/ecommerce)."""


def derived(version: str, prefix: str, partitions: int) -> dict[str, Any]:
    """Everything :func:`show` prints, as data."""
    from kappa.pipeline import current
    from kappa.pipeline.derive import Names
    from sinks.ddl import tables

    pipe = current()
    names = Names(pipe, version, prefix)
    inputs = []
    for name, inp in pipe.inputs.items():
        kind = "table" if inp.table else ("labels" if any(m.labels == name and m.reads_labels
                                                          for m in pipe.models.values())
                                          else "stream")
        inputs.append({"topic": names.input_topic(name), "dlq": names.dlq(name), "kind": kind,
                       "partitions": inp.partitions or partitions, "key": inp.key, "time": inp.time,
                       "schema": inp.schema.name, "subject": f"{names.input_topic(name)}-value",
                       "id": inp.id, "rules": list(inp.reasons),
                       "cleanup": "compact" if inp.table else "delete (kept forever)"})
    streams = [i.name for i in names.streams()]
    consumed = [names.input_topic(s) for s in streams]
    consumed += [names.input_topic(e.table) for e in pipe.enrich.values()]
    consumed += [names.input_topic(s) for members in names.agents().values() for s in members if s not in streams]
    consumed += [names.partials(w) for w in pipe.windows] + [names.ticks(a) for a in names.ticked()]
    groups = [{"group": names.group, "role": "stream processors", "topics": consumed},
              {"group": names.sink_group, "role": "sink (committed = landed in ClickHouse)",
               "topics": [o.topic for o in names.outputs()] + [names.dlq(n) for n in pipe.inputs]}]
    groups += [{"group": names.label_group(m.name), "role": f"labels of model {m.name}" if m.reads_labels else
                f"model {m.name} (its {m.labels} labels forwarded by their stage)",
                "topics": [names.input_topic(m.labels) if m.reads_labels else names.model_events(m.name)]}
               for m in pipe.models.values()]
    derived_tables = tables(pipe)
    outputs = [{"topic": o.topic, "kind": o.kind, "key": o.key, "schema": o.schema,
                "table": f"{names.tables_db}.{o.table}",
                "order_by": list(derived_tables[o.table].order_by) if o.table in derived_tables else None}
               for o in names.outputs()]
    return {"pipeline": pipe.name, "file": str(pipe.path), "description": pipe.description,
            "operators": operators(pipe),
            "database": pipe.database, "version": version, "tables_database": names.tables_db,
            "inputs": inputs, "outputs": outputs, "groups": groups,
            "views": {f"{pipe.database}.{v}": what for v, what in names.views().items()},
            "until_drained": consumed + [names.input_topic(m.labels) for m in pipe.models.values()
                                         if m.reads_labels]}


def operators(pipe: Any) -> list[str]:
    """One line per declared session window and interval join: what its operator computes."""
    from kappa.settings import get_settings
    from stream_processors.operators.joins import join_spec
    from stream_processors.operators.sessions import session_spec

    grace = int(get_settings().window_grace_seconds * 1000)
    out = []
    for decl in pipe.sessions.values():
        s = session_spec(decl, grace)
        out.append(f"sessions.{s.name}: {s.stream} per {', '.join(s.keys)}, gap {s.gap_ms} ms, grace {s.grace_ms} ms, "
                   f"rows keyed by {', '.join(s.keys)}, session_start ({', '.join(a.name for a in s.aggregations)})")
    for decl in pipe.joins.values():
        j = join_spec(decl, grace)
        out.append(f"joins.{j.name}: {j.how} {j.left} x {j.right} on {j.on}, {j.right}.time - {j.left}.time in "
                   f"[{j.lower_ms}, {j.upper_ms}] ms, grace {j.grace_ms} ms")
    return out


@pipeline.command()
@click.option("--version", "version", default=None, help="Pipeline version (default: the one `kappa run` runs).")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def show(version: str | None, as_json: bool) -> None:
    """Print what the definition derives: topics, subjects, groups, tables, views."""
    from kappa.settings import get_settings

    settings = get_settings()
    data = derived(version or settings.version, settings.topic_prefix, settings.partitions)
    if as_json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    echo = click.echo
    echo(f"pipeline {data['pipeline']}  ({data['file']})")
    if data["description"]:
        echo(f"  {data['description']}")
    echo(f"serving database {data['database']}; version {data['version']} stores its tables in "
         f"{data['tables_database']}")
    echo("\ninputs (topic, kind, partitions, key, event time, schema -> subject, reason codes)")
    for i in data["inputs"]:
        dedupe = f", dedupe by {i['id']}" if i["id"] else ""
        echo(f"  {i['topic']:<22} {i['kind']:<7} {i['partitions']:>2}  key {i['key']:<12} time "
             f"{i['time'] or '-':<12} {i['schema']} -> {i['subject']}{dedupe}; {i['cleanup']}")
        echo(f"  {'':<22} rules: {', '.join(i['rules']) or 'none'}; rejected to {i['dlq']}")
    echo("\noutputs (topic -> table, key)")
    for o in data["outputs"]:
        order = f", ORDER BY ({', '.join(o['order_by'])})" if o["order_by"] else ""
        echo(f"  {o['topic']:<36} -> {o['table']}  key {o['key']}{order}  [{o['schema']}]")
    echo("\nconsumer groups")
    for g in data["groups"]:
        echo(f"  {g['group']:<22} {g['role']}: {', '.join(g['topics'])}")
    echo("\nviews")
    for v, what in data["views"].items():
        echo(f"  {v:<30} {what}")
    if data["operators"]:
        echo("\nsessions and joins (what their operators compute)")
        for line in data["operators"]:
            echo(f"  {line}")
    echo(f"\n--until-drained waits for: {', '.join(data['until_drained'])} (and every output landed)")


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option("--name", default=None, help="Pipeline (and ClickHouse database) name (default: from DIRECTORY).")
def init(directory: str, name: str | None) -> None:
    """Scaffold a small runnable pipeline project in DIRECTORY (new or empty)."""
    from pathlib import Path

    from kappa.pipeline import load
    from kappa.scaffold import init_project

    written = init_project(Path(directory), name)
    pipe = load(directory)  # what it wrote loads
    for path in written:
        click.echo(f"  wrote {path}")
    click.echo(f"pipeline {pipe.name} in {directory}: next, "
               f"`kappa demo --pipeline {directory}` (then see {Path(directory) / 'README.md'})")
