"""The clickstream pipeline's generator: visitors' sessions of page views, their signups, and bad input.

Deterministic for a seed. Each visitor has one to three sessions (views a few minutes apart,
sessions 40 minutes to 2 hours apart); some sign up (kind ``valid`` on ``signups``) minutes after
the last view of a session — likelier after a session from github.com or Hacker News, or one
that reached /pricing or /signup — a few only hours later (no view within the hour before: an
unmatched conversion). The records are published in event-time order with up to 90 s of jitter (out of order, within the
sessions' grace), plus re-sent views (``duplicate``: same view_id), views and signups breaking
each rule in turn (``invalid``), and views four hours behind the clock (``too_late``: a session
of such a view alone would be closed on its partition already, so it lands flagged late and
joins no session).

>>> evs = events(600, seed=1, now_ms=1_700_000_000_000)
>>> evs == events(600, seed=1, now_ms=1_700_000_000_000)
True
>>> sorted({(e.topic, e.kind) for e in evs})  # doctest: +NORMALIZE_WHITESPACE
[('page_views', 'duplicate'), ('page_views', 'invalid'), ('page_views', 'too_late'), ('page_views', 'valid'),
 ('signups', 'invalid'), ('signups', 'valid')]
>>> sum(e.topic == "page_views" for e in evs)
600
"""

from __future__ import annotations

import random
import time
from typing import Any

from producers.generators import Event

__all__ = ["INVALID_SIGNUPS", "INVALID_VIEWS", "PAGES", "REFERRERS", "events"]

PAGES = ("/", "/pricing", "/docs", "/blog/streaming", "/blog/kappa", "/features", "/about", "/signup")
REFERRERS = ("direct", "google.com", "news.ycombinator.com", "twitter.com", "github.com")
PLANS = ("free", "pro", "team")
INVALID_VIEWS = ("empty_view_id", "empty_visitor_id", "bad_url", "future_event_time")
"""The page_views rules of pipeline.toml in their order: each invalid view breaks the next one."""
INVALID_SIGNUPS = ("empty_visitor_id", "bad_plan", "future_event_time")
MINUTE = 60_000
LATE_MS = 4 * 60 * MINUTE
JITTER_MS = 90_000


def _timeline(visitor: str, rng: random.Random, start: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One visitor's views (sessions with gaps under 30 minutes, 40-120 minutes between them) and signups."""
    views: list[dict[str, Any]] = []
    t = start
    best, chance = None, 0.0  # the session most likely to convert, and its chance
    for _ in range(rng.choice((1, 1, 2, 3))):
        referrer = rng.choice(REFERRERS)
        session = []
        for i in range(rng.randint(1, 6)):
            if i:
                t += min(int(rng.expovariate(1 / (3 * MINUTE))), 25 * MINUTE) + 1_000
            session.append({"visitor_id": visitor, "url": rng.choice(PAGES), "referrer": referrer, "event_time": t})
        views += session
        c = _conversion_chance(session)
        if c > chance:
            best, chance = session, c
        t += rng.randint(40, 120) * MINUTE
    signups = []
    luck = rng.random()
    if best is not None and luck < chance:  # converts within the hour after its likeliest session's last view
        at = best[-1]["event_time"] + rng.randint(1, 50) * MINUTE
        signups.append({"visitor_id": visitor, "plan": rng.choice(PLANS), "event_time": at, "converted": True})
    elif luck > 0.95:  # signs up long after its last view: no view in the hour before
        at = views[-1]["event_time"] + rng.randint(90, 180) * MINUTE
        signups.append({"visitor_id": visitor, "plan": rng.choice(PLANS), "event_time": at, "converted": True})
    return views, signups


def _conversion_chance(session: list[dict[str, Any]]) -> float:
    """How likely a session converts: by its referrer, whether it reached the pricing or signup
    page, and its length (what the conversion model can learn from the session so far)."""
    chance = {"github.com": 0.4, "news.ycombinator.com": 0.25, "direct": 0.1, "google.com": 0.05,
              "twitter.com": 0.0}[session[0]["referrer"]]
    urls = {v["url"] for v in session}
    chance += 0.2 * ("/pricing" in urls) + 0.2 * ("/signup" in urls)
    return min(chance, 0.9)


def _break(topic: str, rec: dict[str, Any], reason: str) -> dict[str, Any]:
    bad = dict(rec)
    if reason == "empty_view_id":
        bad["view_id"] = ""
    elif reason == "empty_visitor_id":
        bad["visitor_id"] = " "
    elif reason == "bad_url":
        bad["url"] = "https://example.com/not-a-path"
    elif reason == "bad_plan":
        bad["plan"] = "enterprise"
    else:
        bad["event_time"] = rec["event_time"] + 365 * 24 * 60 * MINUTE
    return bad


def events(count: int, seed: int = 42, now_ms: int | None = None, dup_rate: float = 0.03,
           invalid_rate: float = 0.02, late_rate: float = 0.01) -> list[Event]:
    """About ``count`` page views (exactly ``count`` records on ``page_views``) and their visitors'
    signups, in publish order, ending a minute before ``now_ms``."""
    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    per_visitor = 4
    span = max(count // per_visitor, 1) * 20_000
    origin = now - span - 6 * 60 * MINUTE
    views: list[dict[str, Any]] = []
    signups: list[dict[str, Any]] = []
    n = 0
    while len(views) < count:
        v, s = _timeline(f"vis-{n:05d}", rng, origin + rng.randrange(span))
        views += v
        signups += s
        n += 1
    views.sort(key=lambda r: r["event_time"])
    views = views[:count]
    for i, r in enumerate(views):
        r["view_id"] = f"pv-{seed}-{i:06d}"
    end = views[-1]["event_time"] if views else origin
    signups = [s for s in signups if s["event_time"] <= end]
    timed = [(r["event_time"] + rng.randrange(JITTER_MS), 0, "page_views", r) for r in views]
    timed += [(r["event_time"] + rng.randrange(JITTER_MS), 1, "signups", r) for r in signups]
    timed.sort(key=lambda x: (x[0], x[1], x[3]["visitor_id"]))
    out: list[Event] = []
    sent: list[dict[str, Any]] = []
    bad_views = bad_signups = 0
    budget = len(views)  # each special view replaces a valid one, keeping count page views
    published = 0
    warm = len(timed) // 10
    for i, (_, _, topic, rec) in enumerate(timed):
        if topic == "signups":
            if rng.random() < invalid_rate * 3:
                reason = INVALID_SIGNUPS[bad_signups % len(INVALID_SIGNUPS)]
                bad_signups += 1
                out.append(Event("signups", rec["visitor_id"], _break(topic, rec, reason), "invalid"))
            out.append(Event("signups", rec["visitor_id"], dict(rec), "valid"))
            continue
        if published >= budget:
            break
        roll = rng.random()
        if roll < dup_rate and sent and published + 2 <= budget:
            again = rng.choice(sent[-50:])
            out.append(Event("page_views", again["visitor_id"], dict(again), "duplicate"))
            published += 1
        elif roll < dup_rate + invalid_rate and published + 2 <= budget:
            reason = INVALID_VIEWS[bad_views % len(INVALID_VIEWS)]
            bad_views += 1
            bad = _break(topic, {**rec, "view_id": rec["view_id"] + "-bad"}, reason)
            out.append(Event("page_views", rec["visitor_id"], bad, "invalid"))
            published += 1
        elif roll < dup_rate + invalid_rate + late_rate and i > warm and published + 2 <= budget:
            late = {**rec, "view_id": rec["view_id"] + "-late", "event_time": rec["event_time"] - LATE_MS}
            out.append(Event("page_views", rec["visitor_id"], late, "too_late"))
            published += 1
        out.append(Event("page_views", rec["visitor_id"], dict(rec), "valid"))
        sent.append(rec)
        published += 1
    return out
