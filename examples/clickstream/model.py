"""The clickstream pipeline's conversion model: features of a page view from its visitor's session
so far, declared in pipeline.toml under ``[models.conversion]`` (the generic operator:
stream_processors.operators.model, with occurrence labels: a signup labels the visitor's views of
the hour before it True; a view with none in its hour is labelled False).

The features are stateful (``features_by = "visitor_id"``): ``state`` is the visitor's session so
far, kept by the operator in its checkpoint and updated in the merge's order of the visitor's
views (a new session after 30 minutes without a view, as in ``[sessions.sessions]``). Numbers are
log-scaled and one-hots passed as they are; no StandardScaler (it would blow rare one-hots up).

>>> st = {}
>>> f = view_features({"url": "/", "referrer": "github.com", "event_time": 0}, st)
>>> f["referrer=github.com"], f["landing=/"], f["log_pages"], "saw_pricing" in f
(1.0, 1.0, 0.0, False)
>>> f = view_features({"url": "/pricing", "referrer": "github.com", "event_time": 120_000}, st)
>>> f["saw_pricing"], round(f["log_pages"], 3), round(f["log_minutes"], 3)
(1.0, 0.693, 1.099)
>>> view_features({"url": "/docs", "referrer": "direct", "event_time": 120_000 + 1_800_000}, st)["log_pages"]
0.0
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["GAP_MS", "view_features"]

GAP_MS = 30 * 60_000
"""A session ends after 30 minutes without a view (the pipeline's session gap)."""


def view_features(view: dict[str, Any], state: dict[str, Any]) -> dict[str, float]:
    """Features of one page view from the session so far (``state``: the visitor's, updated)."""
    t = int(view["event_time"])
    last = state.get("last")
    if last is None or t - last >= GAP_MS:
        state.clear()
        state.update(start=t, pages=0, landing=view["url"], referrer=view["referrer"], seen=[])
    state["last"] = t if last is None else max(t, last)
    state["pages"] += 1
    seen: list[str] = state["seen"]
    if view["url"] not in seen:
        seen.append(view["url"])
    f = {
        f"referrer={state['referrer']}": 1.0,
        f"landing={state['landing']}": 1.0,
        f"url={view['url']}": 1.0,
        "log_pages": math.log(state["pages"]),
        "log_minutes": math.log1p(max(t - state["start"], 0) / 60_000),
    }
    if "/pricing" in seen:
        f["saw_pricing"] = 1.0
    if "/signup" in seen:
        f["saw_signup"] = 1.0
    return f
