"""examples/clickstream on the real broker: sessions and the interval join against hand-computed
rows (gap boundaries, a merge by a late view, idle close, too late; matched, unmatched at the
interval's end, re-delivered), a kill -9 of the worker giving the rows of a clean run, the
sessions equal to sessionising the not-late page views, and a replay swapped in identical."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.integration.test_pipelines import KAPPA, _env, _jsonl, kappa, query

pytestmark = pytest.mark.integration

CLICK = Path(__file__).resolve().parents[2] / "examples" / "clickstream"
S = 1000
T0 = (time.time_ns() // 1_000_000 - 3 * 3_600_000) // 3_600_000 * 3_600_000


def _scaled(tmp: Path) -> Path:
    """The example with its durations in seconds (gap 30 s, grace 5 s, join and labels within 60 s,
    the model's lag 5 s), so the wall clock closes an idle partition's sessions within a test."""
    root = tmp / "clickstream"
    shutil.copytree(CLICK, root)
    toml = root / "pipeline.toml"
    text = toml.read_text().replace('gap = "30m"', 'gap = "30s"').replace('grace = "5m"', 'grace = "5s"')
    text = text.replace('label_within = "1h"', 'label_within = "60s"').replace('lag = "5m"', 'lag = "5s"')
    toml.write_text(text.replace('upper = "1h"', 'upper = "60s"'))
    return root


def _view(vid: str, visitor: str, url: str, at_s: int) -> dict[str, Any]:
    return {"view_id": vid, "visitor_id": visitor, "url": url, "referrer": "direct", "event_time": T0 + at_s * S}


def _sessions(env: dict[str, str]) -> dict[tuple[str, int], tuple[Any, ...]]:
    return {(r["visitor_id"], (int(r["start"]) - T0) // S): (int(r["page_views"]), r["landing_url"], r["exit_url"],
                                                             (int(r["end"]) - T0) // S, bool(r["final"]))
            for r in query(env, "SELECT visitor_id, toUnixTimestamp64Milli(session_start) AS start, "
                                "toUnixTimestamp64Milli(session_end) AS end, page_views, landing_url, exit_url, final "
                                "FROM clickstream.sessions")}


def _joins(env: dict[str, str]) -> dict[str, bool]:
    return {f"{r['left_id']}|{r['right_id'] or ''}": bool(r["matched"])
            for r in query(env, "SELECT left_id, right_id, matched FROM clickstream.conversions")}


def test_sessions_and_joins_give_the_hand_computed_rows(stack: Stack, tmp_path: Path) -> None:
    env = _env(stack, tmp_path / "home", f"cs{uuid.uuid4().hex[:8]}.", _scaled(tmp_path))
    views = _jsonl(tmp_path / "views.jsonl", [
        _view("p1", "a", "/", 0),
        _view("p4", "b", "/", 5),
        _view("p2", "a", "/pricing", 10),
        _view("p3", "a", "/docs", 42),       # 32 s after p2: a new session of a ([0, 10] still open: 10 + 35 > 42)
        _view("p5", "a", "/features", 25),   # within grace, < 30 s from both: merges a's two sessions
        _view("p2", "a", "/pricing", 11),    # same id: a duplicate, dropped
        _view("p7", "c", "/", 100),          # the watermark jumps: a's [0, 42] and b's [5, 5] close
        _view("p8", "a", "/late", 20),       # would join a's closed session: too late, flagged
        _view("p9", "b", "/pricing", 103),   # 98 s after b's last: a new session, closed by the idle clock
    ])
    signups = _jsonl(tmp_path / "signups.jsonl", [
        {"visitor_id": "a", "plan": "pro", "event_time": T0 + 30 * S},
        {"visitor_id": "c", "plan": "team", "event_time": T0 + 130 * S},
        {"visitor_id": "c", "plan": "enterprise", "event_time": T0 + 131 * S},  # bad_plan
    ])
    prefix = env["KAPPA_TOPIC_PREFIX"]
    for path, topic in ((views, "page_views"), (signups, "signups")):
        done = kappa(env, "produce", "--file", str(path), "--topic", prefix + topic)
        assert done.returncode == 0, done.stdout + done.stderr
    done = kappa(env, "run", "--until-drained")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    late = {r["view_id"]: bool(r["late"]) for r in query(env, "SELECT view_id, late FROM clickstream.page_views")}
    assert late == {"p1": False, "p2": False, "p3": False, "p4": False, "p5": False, "p7": False, "p8": True,
                    "p9": False}
    assert _sessions(env) == {
        ("a", 0): (4, "/", "/docs", 42, True),       # p1, p2, p5, p3: [42, 42] merged away (its tombstone hides it)
        ("b", 5): (1, "/", "/", 5, True),
        ("c", 100): (1, "/", "/", 100, False),
        ("b", 103): (1, "/pricing", "/pricing", 103, False),
    }
    assert query(env, "SELECT count() AS n FROM clickstream_" + env["KAPPA_VERSION"] + ".session_rows FINAL "
                      "WHERE retracted")[0]["n"] in (1, "1")
    # within [0, 60 s] after the view: p1, p2 -> a's signup at 30 s; p7 -> c's at 130 s. p5 and p8 came
    # more than the 5 s grace behind the views' watermark (42 s, 100 s): too late, they join nothing.
    # p3 and p4 have none, and the signups' watermark (130 s) passed their 60 s + grace: unmatched.
    assert _joins(env) == {"p1|0/0": True, "p2|0/0": True, "p7|0/1": True, "p3|": False, "p4|": False}
    rejected = query(env, "SELECT reason FROM clickstream.rejected_events")
    assert [r["reason"] for r in rejected] == ["bad_plan: enterprise"]
    assert _scored(env) == MODEL

    # idle: the wall clock shows c's and b's open sessions final and p9 unmatched, without new events
    run = subprocess.Popen([KAPPA, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            got = _sessions(env)
            if got[("c", 100)][-1] and got[("b", 103)][-1] and "p9|" in _joins(env):
                break
            time.sleep(3)
        assert _sessions(env)[("c", 100)] == (1, "/", "/", 100, True)
        assert _sessions(env)[("b", 103)] == (1, "/pricing", "/pricing", 103, True)
        assert _joins(env)["p9|"] is False
    finally:
        run.terminate()
        run.wait(120)
    # run again over the same log (every stage re-reads nothing new): the rows do not change
    done = kappa(env, "run", "--until-drained")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _joins(env) == {"p1|0/0": True, "p2|0/0": True, "p7|0/1": True, "p3|": False, "p4|": False,
                           "p9|": False}
    assert _scored(env) == MODEL


# The conversion model (lag 5 s, labels within 60 s). p5 (25 s) and p8 (20 s) come more than the
# lag behind a's partition (p3, 42 s): late for the model, not scored. With most partitions empty
# the merge's watermark has not moved, so what is published is the provisional tail: the buffer
# applied in merge order to a copy. a's signup (30 s) labels p1 and p2 True; p4's hour ends at 65 s,
# before p7 (100 s): False; p3's at 102 s, before p9: False; c's signup (130 s) labels p7 True (its
# bad_plan signup was rejected by its stage: no label). p9's hour is not over.
# (view -> labels learned when it was scored, labels learned)
MODEL = ({"p1": 0, "p4": 0, "p2": 0, "p3": 2, "p7": 3, "p9": 4}, 5)


def _scored(env: dict[str, str]) -> tuple[dict[str, int], int]:
    scores = {r["view_id"]: int(r["labelled_before"])
              for r in query(env, "SELECT view_id, labelled_before FROM clickstream.conversion_scores")}
    quality = query(env, "SELECT argMax(labelled, bucket) AS n FROM clickstream.model_quality "
                         "WHERE model = 'conversion'")
    return scores, int(quality[0]["n"]) if quality else -1


def _all(env: dict[str, str]) -> dict[str, Any]:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return sorted((tuple(r.values()) for r in query(env, sql)), key=repr)

    return {
        "page_views": rows("SELECT view_id, visitor_id, url, event_time, late FROM clickstream.page_views"),
        "sessions": rows("SELECT visitor_id, session_start, session_end, page_views, landing_url, exit_url, "
                         "converted FROM clickstream.sessions"),
        # the rows the log decides: pairs, and unmatched views whose hour + grace the signups'
        # watermark of their partition passed (an idle run's wall clock shows some earlier: kappa.replay)
        "conversions": rows(
            "SELECT j.left_id, j.right_id, j.matched FROM clickstream.conversions AS j "
            "LEFT JOIN (SELECT view_id AS _id, source_partition AS _p FROM clickstream.page_views) AS l "
            "ON j.left_id = l._id LEFT JOIN (SELECT source_partition AS _p2, toUnixTimestamp64Milli(max(event_time)) "
            "AS _wm FROM clickstream.signups GROUP BY _p2) AS w ON l._p = w._p2 "
            "WHERE j.matched OR toUnixTimestamp64Milli(j.left_time) + 3900000 < w._wm"),
        "rejected": rows("SELECT reason FROM clickstream.rejected_events"),
        "scores": rows("SELECT view_id, conversion_score, labelled_before FROM clickstream.conversion_scores"),
        "quality": rows("SELECT bucket, labelled, roc_auc, accuracy, log_loss FROM clickstream.model_quality"),
    }


def _sessionised(env: dict[str, str], gap_ms: int = 30 * 60_000) -> set[tuple[str, int, int, int]]:
    by: dict[str, list[int]] = {}
    for r in query(env, "SELECT visitor_id, toUnixTimestamp64Milli(event_time) AS t FROM clickstream.page_views "
                        "WHERE NOT late"):
        by.setdefault(r["visitor_id"], []).append(int(r["t"]))
    out = set()
    for v, ts in by.items():
        ts.sort()
        start = prev = ts[0]
        n = 1
        for t in ts[1:]:
            if t - prev >= gap_ms:
                out.add((v, start, prev, n))
                start, n = t, 0
            prev, n = t, n + 1
        out.add((v, start, prev, n))
    return out


def test_clickstream_killed_mid_stream_equals_a_clean_run_and_replays_identical(stack: Stack, tmp_path: Path) -> None:
    prefix = f"csk{uuid.uuid4().hex[:8]}."
    v = f"k{uuid.uuid4().hex[:6]}"
    clean = _env(stack, tmp_path / "clean", prefix, CLICK, KAPPA_VERSION=f"{v}a")
    done = kappa(clean, "produce", "--generator", "clickstream", "--events", "3000", "--seed", "5")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    done = kappa(clean, "run", "--until-drained")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    want = _all(clean)
    assert want["sessions"] and want["conversions"] and want["rejected"]
    assert len(want["scores"]) > 2000 and want["quality"]
    assert any(row[-1] for row in want["page_views"])  # some views too late
    sessions = {(r["visitor_id"], int(r["s"]), int(r["e"]), int(r["n"])) for r in query(
        clean, "SELECT visitor_id, toUnixTimestamp64Milli(session_start) AS s, "
               "toUnixTimestamp64Milli(session_end) AS e, page_views AS n FROM clickstream.sessions")}
    assert sessions == _sessionised(clean)
    crashed = _env(stack, tmp_path / "crashed", prefix, CLICK, KAPPA_VERSION=f"{v}b")
    worker = subprocess.run([sys.executable, "-m", "stream_processors", "worker", "--version", f"{v}b", "--worker",
                             "0", "--no-learning"], env={**crashed, "KAPPA_PROCESSOR_CRASH_AFTER_BATCHES": "1"},
                            capture_output=True, text=True, timeout=300)
    assert worker.returncode == -9, worker.stdout[-2000:] + worker.stderr[-2000:]
    done = kappa(crashed, "run", "--until-drained")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _all(crashed) == want
    done = kappa(clean, "replay", "--from", "earliest", "--version", f"{v}c", "--swap")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "identical on every view" in done.stdout and "swapped" in done.stdout, done.stdout[-3000:]
    assert _all(clean) == want
