"""Pipelines other than the default on the real broker: examples/iot with hand-computed results,
a kill -9 of its worker giving the results of a clean run, and a project made by `kappa init`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))
IOT = Path(__file__).resolve().parents[2] / "examples" / "iot"
MIN = 60_000
T0 = (time.time_ns() // 1_000_000 - 3 * 3_600_000) // 3_600_000 * 3_600_000
"""An hour boundary a few hours back: every time below is in the past, so no rule rejects it."""


def kappa(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAPPA, *args], env=env, capture_output=True, text=True, timeout=timeout)


def query(env: dict[str, str], sql: str) -> list[dict[str, Any]]:
    done = kappa(env, "query", "--format", "json", sql)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()] if not \
        done.stdout.lstrip().startswith("[") else json.loads(done.stdout)


def _env(stack: Stack, home: Path, prefix: str, pipeline: Path, **extra: str) -> dict[str, str]:
    env = stack.env(home)
    env.update(KAPPA_PIPELINE=str(pipeline), KAPPA_TOPIC_PREFIX=prefix, KAPPA_PARTITIONS="1",
               KAPPA_WINDOW_GRACE_SECONDS="30", KAPPA_VERSION=f"t{uuid.uuid4().hex[:6]}")
    env.update(extra)
    return env


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reading(rid: str, device: str, value: float, at: int, **over: Any) -> dict[str, Any]:
    return {"reading_id": rid, "device_id": device, "metric": "temperature", "value": value, "unit": "celsius",
            "event_time": at, **over}


def test_iot_gives_the_hand_computed_views(stack: Stack, tmp_path: Path) -> None:
    env = _env(stack, tmp_path / "home", f"iot{uuid.uuid4().hex[:8]}.", IOT)
    day = 86_400_000
    devices = _jsonl(tmp_path / "devices.jsonl", [
        {"device_id": "d1", "site": "berlin", "kind": "thermometer", "installed_at": T0 - 9 * day,
         "updated_at": T0 - day},
        {"device_id": "d2", "site": "porto", "kind": "thermometer", "installed_at": T0 - 9 * day,
         "updated_at": T0 - day},
        {"device_id": "d1", "site": "lyon", "kind": "thermometer", "installed_at": T0 - 9 * day,
         "updated_at": T0 + 3 * MIN},  # d1 moves to lyon three minutes in
    ])
    readings = _jsonl(tmp_path / "readings.jsonl", [
        _reading("r1", "d1", 20.0, T0 + 10_000),
        _reading("r2", "d1", 22.0, T0 + 70_000),
        _reading("r2", "d1", 23.0, T0 + 71_000),             # same id: a duplicate, dropped
        _reading("r3", "d1", 30.0, T0 + 200_000),            # after the move: lyon
        _reading("r4", "d2", 10.0, T0 + 30_000),
        _reading("r5", "d2", 290.0, T0 + 31_000, unit="kelvin"),  # bad_unit
        _reading("r6", "d2", 1.0, T0 + 32_000, metric="voltage"),  # bad_metric
        _reading("r7", "d2", 15.0, T0 + 20 * MIN),           # the watermark jumps 20 minutes
        _reading("r8", "d1", 25.0, T0 + 40_000),             # so this one is too late for every window
    ])
    faults = _jsonl(tmp_path / "faults.jsonl", [  # the technicians' checks, later
        {"reading_id": "r1", "is_fault": False, "checked_at": T0 + 50_000},
        {"reading_id": "r4", "is_fault": True, "checked_at": T0 + 60_000},
        {"reading_id": "r9", "is_fault": True, "checked_at": T0 + 65_000},  # no such reading: an orphan
    ])
    for path, topic in ((devices, "devices"), (readings, "readings"), (faults, "faults")):
        done = kappa(env, "produce", "--file", str(path), "--topic", env["KAPPA_TOPIC_PREFIX"] + topic)
        assert done.returncode == 0, done.stdout + done.stderr
    done = kappa(env, "run", "--until-drained")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rows = {r["reading_id"]: r for r in query(env, "SELECT reading_id, site, value, late FROM iot.readings")}
    assert {k: (r["site"], r["value"], r["late"]) for k, r in rows.items()} == {
        "r1": ("berlin", 20.0, False), "r2": ("berlin", 22.0, False), "r3": ("lyon", 30.0, False),
        "r4": ("porto", 10.0, False), "r7": ("porto", 15.0, False), "r8": ("berlin", 25.0, True)}
    rejected = query(env, "SELECT splitByChar(':', reason)[1] AS code FROM iot.rejected_events ORDER BY code")
    assert [r["code"] for r in rejected] == ["bad_metric", "bad_unit"]

    windows = {(int(r["start"]) - T0, r["site"]): (int(r["readings"]), r["avg_value"], r["min_value"], r["max_value"])
               for r in query(env, "SELECT toUnixTimestamp64Milli(window_start) AS start, site, readings, avg_value, "
                                   "min_value, max_value FROM iot.site_metrics")}
    # 5-minute windows every minute: a reading is in the five windows starting in the 5 minutes up to
    # it, except those already closed (end + 30 s grace <= the partition's watermark when it came):
    # r4 (30 s) came after r3 (200 s), so the windows ending at 60 s and 120 s no longer take it
    expected = {}
    arrived = (("berlin", 20.0, 10_000, None), ("berlin", 22.0, 70_000, 10_000), ("lyon", 30.0, 200_000, 70_000),
               ("porto", 10.0, 30_000, 200_000))
    for start in range(-4 * MIN, 4 * MIN, MIN):
        inside = [(site, v) for site, v, at, wm in arrived
                  if start <= at < start + 5 * MIN and (wm is None or start + 5 * MIN + 30_000 > wm)]
        for site in {s for s, _ in inside}:
            vs = [v for s, v in inside if s == site]
            expected[(start, site)] = (len(vs), sum(vs) / len(vs), min(vs), max(vs))
    for start in range(16 * MIN, 21 * MIN, MIN):
        expected[(start, "porto")] = (1, 15.0, 15.0, 15.0)
    assert windows == expected
    assert windows[(0, "berlin")] == (2, 21.0, 20.0, 22.0)  # spelled out: r1 and r2, r8 too late

    # [models.faults]: a reading is scored by the model that learned the checks made up to its time.
    # The merge applies events in time order behind a 60 s lag per source: r4 (30 s) came after r3
    # (200 s) on its partition and r8 (40 s) after r7 (20 min), both beyond the lag, so neither is
    # scored nor learned (a per-source verdict: the same in any replay); r4's check then has no
    # scored reading, like r9's (no such reading): orphans. r1's check (50 s) is the one learned.
    scores = {r["reading_id"]: r for r in query(env, "SELECT reading_id, faults_score, labelled_before, "
                                                     "toUnixTimestamp64Milli(event_time) AS t FROM iot.faults_scores")}
    assert {k: (int(r["labelled_before"]), int(r["t"]) - T0) for k, r in scores.items()} == {
        "r1": (0, 10_000), "r2": (1, 70_000), "r3": (1, 200_000), "r7": (1, 20 * MIN)}
    assert scores["r1"]["faults_score"] == 0.5  # an untrained logistic regression
    assert scores["r2"]["faults_score"] < 0.5  # it learned that r1 (20.0 C) was no fault
    quality = query(env, "SELECT labelled FROM iot.model_quality WHERE model = 'faults' "
                         "ORDER BY bucket_index DESC LIMIT 1")
    assert [int(r["labelled"]) for r in quality] == [1]


def _views(env: dict[str, str]) -> dict[str, Any]:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return sorted((tuple(r.values()) for r in query(env, sql)), key=repr)

    return {
        "readings": rows("SELECT reading_id, device_id, value, site, late FROM iot.readings"),
        "windows": rows("SELECT toUnixTimestamp64Milli(window_start) AS s, site, metric, readings, avg_value, "
                        "min_value, max_value FROM iot.site_metrics"),
        "rejected": rows("SELECT reason FROM iot.rejected_events"),
        "scores": rows("SELECT reading_id, faults_score, labelled_before FROM iot.faults_scores"),
        "quality": rows("SELECT bucket_index, labelled, accuracy, roc_auc, log_loss FROM iot.model_quality"),
    }


def test_iot_worker_killed_mid_stream_gives_the_views_of_a_clean_run(stack: Stack, tmp_path: Path) -> None:
    prefix = f"iotk{uuid.uuid4().hex[:8]}."
    v = f"k{uuid.uuid4().hex[:6]}"
    clean = _env(stack, tmp_path / "clean", prefix, IOT, KAPPA_VERSION=f"{v}a")
    wrong = kappa(clean, "produce", "--generator", "ecommerce", "--events", "10")
    assert wrong.returncode == 2 and "use --generator iot" in wrong.stderr, wrong.stderr
    done = kappa(clean, "produce", "--generator", "iot", "--events", "4000", "--seed", "3")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "readings: published 4,000" in done.stdout, done.stdout
    done = kappa(clean, "run", "--until-drained")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # another version over the same log: its worker killed -9 after its first batch's outputs
    # (before the batch is acked), then the whole version run until drained
    crashed = _env(stack, tmp_path / "crashed", prefix, IOT, KAPPA_VERSION=f"{v}b")
    worker = subprocess.run([sys.executable, "-m", "stream_processors", "worker", "--version", f"{v}b", "--worker",
                             "0", "--no-learning"], env={**crashed, "KAPPA_PROCESSOR_CRASH_AFTER_BATCHES": "1"},
                            capture_output=True, text=True, timeout=300)
    assert worker.returncode == -9, worker.stdout[-2000:] + worker.stderr[-2000:]
    done = kappa(crashed, "run", "--until-drained")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got, want = _views(crashed), _views(clean)
    assert got["readings"] and got["windows"] and got["rejected"] and got["scores"] and got["quality"]
    assert got == want
    # a replay of the clean version's log as another version, swapped in: identical on every view
    done = kappa(clean, "replay", "--from", "earliest", "--version", f"{v}c", "--swap")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "identical on every view" in done.stdout and "swapped" in done.stdout, done.stdout[-3000:]
    assert _views(clean) == want


def test_a_project_made_by_kappa_init_runs_end_to_end(stack: Stack, tmp_path: Path) -> None:
    project = tmp_path / "shop_tasks"
    env = _env(stack, tmp_path / "home", f"ini{uuid.uuid4().hex[:8]}.", project)
    done = kappa(env, "init", str(project))
    assert done.returncode == 0, done.stderr
    done = kappa(env, "demo")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "reconciliation: published 304 = landed 300 + rejected 3 + duplicates 1 -> holds" in done.stdout
    regions = query(env, "SELECT region, count() AS n FROM shop_tasks.tasks WHERE team_id = 't0' GROUP BY region")
    assert {r["region"] for r in regions} == {"emea", "apac"}  # the team moved region half-way
    assert int(query(env, "SELECT count() AS n FROM shop_tasks.done_per_region")[0]["n"]) == 3
