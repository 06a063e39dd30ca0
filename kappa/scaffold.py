"""``kappa init DIR``: a small runnable pipeline project to edit into your own.

It writes a definition (``pipeline.toml``), two Avro schemas (a ``teams`` table and a ``tasks``
stream), a rule function (``rules.py``), sample data with a duplicate and invalid rows
(``data/*.jsonl``, timestamps in the hour before ``kappa init`` ran) and a README saying what to
edit. ``kappa demo --pipeline DIR`` runs it end to end.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from kappa.errors import ConfigError

__all__ = ["init_project"]

PIPELINE = '''# A Kappa pipeline: edit it into your own (format: docs/pipelines.md in the Kappa repository).
# Check it with `kappa pipeline show --pipeline {dir}`, run it with `kappa demo --pipeline {dir}`.

[pipeline]
name = "{name}"
database = "{name}"        # ClickHouse database of the views: {name}.tasks, {name}.points_per_minute, ...
description = "Tasks done by teams: validated, deduplicated, enriched with the team's region, points per minute."
samples = {{ teams = "data/teams.jsonl", tasks = "data/tasks.jsonl" }}   # what `kappa demo` publishes

[inputs.teams]             # a table: the latest version per key wins, older ones still enrich older events
key = "team_id"
table = true
time = "updated_at"
rules = [
  {{ field = "team_id", check = "non_empty", code = "empty_team_id", detail = "" }},
  {{ field = "region", check = "in", values = ["emea", "amer", "apac"], code = "bad_region", detail = "{{value}}" }},
]

[inputs.tasks]             # a stream, keyed by the join field so it is co-partitioned with teams
key = "team_id"
time = "event_time"
id = "task_id"             # dedupe: the first event of a task_id wins
dedupe_retention = "24h"
low_cardinality = ["status"]
rules = [
  {{ field = "task_id", check = "non_empty", code = "empty_task_id", detail = "" }},
  {{ field = "status", check = "in", values = ["open", "done", "cancelled"], code = "bad_status" }},
  {{ field = "points", check = "range", ge = 0, le = 100, code = "bad_points" }},
  {{ function = "rules:done_has_points", codes = ["done_without_points"] }},
  {{ field = "event_time", check = "max_ahead", max = "5m", code = "future_event_time" }},
]

[enrich.tasks]             # each task gets its team's region as of the task's time
table = "teams"
on = "team_id"
fields = {{ region = "region" }}

[windows.points_per_minute]
stream = "tasks"
size = "1m"                # add hop = "30s" for hopping windows
grace = "30s"
keys = ["region", "status"]
aggregations = {{ tasks = "count", points = "sum(points)", max_points = "max(points)" }}

[views.done_per_region]    # your own view over the version's tables ({{db}})
sql = """SELECT region, count() AS tasks, sum(points) AS points
FROM {{db}}.tasks FINAL WHERE status = 'done' GROUP BY region"""
'''

TEAMS = {"type": "record", "name": "Team", "namespace": "kappa.example", "fields": [
    {"name": "team_id", "type": "string", "doc": "Stable team id."},
    {"name": "name", "type": "string", "doc": "Display name."},
    {"name": "region", "type": "string", "doc": "emea, amer or apac."},
    {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-millis"},
     "doc": "Event time of this version of the team."}]}
TASKS = {"type": "record", "name": "Task", "namespace": "kappa.example", "fields": [
    {"name": "task_id", "type": "string", "doc": "Unique task event id (dedupe)."},
    {"name": "team_id", "type": "string", "doc": "The team that owns the task."},
    {"name": "status", "type": "string", "doc": "open, done or cancelled."},
    {"name": "points", "type": "long", "doc": "Story points, 0..100."},
    {"name": "note", "type": ["null", "string"], "default": None, "doc": "Optional free text."},
    {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"},
     "doc": "When it happened (event time)."}]}

RULES = '''"""Rules a field condition cannot say. A rule takes the decoded record and the Kafka timestamp
of the record that carries it (epoch ms) and returns None, or "<code>: <detail>"."""


def done_has_points(rec, now_ms):
    if rec.get("status") == "done" and not rec.get("points"):
        return "done_without_points: a done task needs points"
    return None
'''

README = '''# {name}: a Kappa pipeline

Made by `kappa init`. Everything Kappa runs for it is derived from `pipeline.toml`:

    kappa pipeline show --pipeline {dir}      # topics, groups, tables, views it derives
    kappa demo --pipeline {dir}               # publish data/*.jsonl, run until drained, report
    kappa query --pipeline {dir} "SELECT * FROM {name}.points_per_minute ORDER BY window_start"

What to edit:
- `schemas/*.avsc`: one Avro record per input (timestamps: `{{"type": "long", "logicalType": "timestamp-millis"}}`).
- `pipeline.toml`: `[inputs.*]` (key, time, dedupe id, rules), `[enrich.*]`, `[windows.*]`, `[views.*]`.
- `rules.py`: rules a declaration cannot say, referenced as `"rules:function"`.
- `data/*.jsonl`: sample rows (one JSON object per line, field names as in the schemas,
  timestamps as ISO-8601 or epoch ms). Publish your own with
  `kappa produce --pipeline {dir} --file rows.jsonl --topic tasks`, then `kappa run --pipeline {dir}`.
'''


def _rows(now_ms: int, seed: int = 7) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    rng = random.Random(seed)
    start = now_ms - 3_600_000
    regions = ("emea", "amer", "apac")
    teams: list[dict[str, object]] = [{"team_id": f"t{i}", "name": f"Team {i}", "region": regions[i % 3],
                                       "updated_at": start - 86_400_000} for i in range(6)]
    tasks: list[dict[str, object]] = []
    for i in range(300):
        status = rng.choice(("open", "done", "done", "cancelled"))
        tasks.append({"task_id": f"k{i:05d}", "team_id": f"t{rng.randrange(6)}", "status": status,
                      "points": rng.randrange(1, 13) if status == "done" else rng.randrange(0, 5), "note": None,
                      "event_time": start + i * 10_000 + rng.randrange(5_000)})
    tasks.append(dict(tasks[10]))  # a duplicate: dropped, counted
    tasks.append({**tasks[20], "task_id": "k-bad-1", "status": "blocked"})  # bad_status
    tasks.append({**tasks[30], "task_id": "k-bad-2", "points": 500})  # bad_points
    tasks.append({**tasks[40], "task_id": "k-bad-3", "status": "done", "points": 0})  # done_without_points
    # a team moves region: tasks after the move are enriched with the new one
    teams.append({**teams[0], "region": "apac", "updated_at": start + 1_800_000})
    return teams, tasks


def init_project(target: Path, name: str | None = None, now_ms: int | None = None) -> list[Path]:
    """Write the project into ``target`` (new or empty); return the files written."""
    target = target.expanduser()
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target} is not empty: kappa init writes a new project into a new or empty directory")
    name = name or "".join(c if c.isalnum() else "_" for c in target.resolve().name.lower()).strip("_") or "tasks"
    if not name[0].isalpha():
        name = f"p_{name}"
    teams, tasks = _rows(now_ms if now_ms is not None else time.time_ns() // 1_000_000)
    files = {
        "pipeline.toml": PIPELINE.format(name=name, dir=target),
        "schemas/teams.avsc": json.dumps(TEAMS, indent=2) + "\n",
        "schemas/tasks.avsc": json.dumps(TASKS, indent=2) + "\n",
        "rules.py": RULES,
        "data/teams.jsonl": "".join(json.dumps(r) + "\n" for r in teams),
        "data/tasks.jsonl": "".join(json.dumps(r) + "\n" for r in tasks),
        "README.md": README.format(name=name, dir=target),
    }
    written = []
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
