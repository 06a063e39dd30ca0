"""User profile versions for the order-user join, as of an order's event time.

Why versions and not just the latest profile: an order must be enriched with the user *as of
its event time*, whatever order the two topics are read in, and a later update must not
rewrite past orders. So per user we keep the recent versions sorted by ``updated_at`` and join
the one with the greatest ``updated_at <= event_time``.

>>> vs = upsert([], {"updated_at": 100, "country": "DE", "segment": "new", "signup_time": 50})
>>> vs = upsert(vs, {"updated_at": 300, "country": "FR", "segment": "vip", "signup_time": 50})
>>> as_of(vs, 99), as_of(vs, 100)["user_country"], as_of(vs, 10_000)["user_segment"]
(None, 'DE', 'vip')
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_VERSIONS", "NULL_USER", "RETENTION_MS", "as_of", "upsert"]

MAX_VERSIONS = 32
"""At most this many versions per user are kept (the newest ones)."""
RETENTION_MS = 24 * 3600 * 1000
"""Versions older than the newest by more than this are dropped (one older one is kept)."""

NULL_USER: dict[str, Any] = {"user_country": None, "user_segment": None, "user_signup_time": None}
"""Attributes of an order whose user is unknown (at its event time)."""

Version = list[Any]  # [updated_at, country, segment, signup_time]


def upsert(versions: list[Version], rec: Mapping[str, Any]) -> list[Version]:
    """Insert a profile record (same ``updated_at`` replaces), keep order and bounds.

    >>> vs = []
    >>> for t in (5, 1, 3, 3):
    ...     vs = upsert(vs, {"updated_at": t, "country": "DE", "segment": str(t), "signup_time": 0})
    >>> [v[0] for v in vs]
    [1, 3, 5]
    """
    row = [rec["updated_at"], rec["country"], rec["segment"], rec["signup_time"]]
    stamps = [v[0] for v in versions]
    i = bisect.bisect_left(stamps, row[0])
    if i < len(versions) and versions[i][0] == row[0]:
        versions = [*versions[:i], row, *versions[i + 1:]]
    else:
        versions = [*versions[:i], row, *versions[i:]]
    cutoff = versions[-1][0] - RETENTION_MS
    keep_from = max(0, bisect.bisect_left([v[0] for v in versions], cutoff) - 1)
    return versions[max(keep_from, len(versions) - MAX_VERSIONS):]


def as_of(versions: list[Version], event_time: int) -> dict[str, Any] | None:
    """User attributes of the version valid at ``event_time``; None when there is none."""
    i = bisect.bisect_right([v[0] for v in versions], event_time)
    if i == 0:
        return None
    _, country, segment, signup = versions[i - 1]
    return {"user_country": country, "user_segment": segment, "user_signup_time": signup}
