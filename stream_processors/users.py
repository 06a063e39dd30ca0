"""User profile versions for the order-user join: bitemporal, so live and replay agree by construction.

An order is enriched with the user *as of its event time*, but only from what the log held
*before the order*: a version joins an order when its ``updated_at <= event_time`` (valid time)
**and** its Kafka record timestamp ``<=`` the order's (log time). Why both: how far the users
partition is read ahead of the orders is a matter of timing (a replay applies every user record
of the log before the first order), so a join on valid time alone lets a replay enrich old
orders with profile versions appended to the log later, which the live run could not have seen.
Record timestamps are part of the log, so the join is the same wherever it runs.

Per user we keep the versions sorted by ``(updated_at, record time)``. A version is dropped only
when no order can pick it any more: when a newer one is valid and in the log for every order
within :data:`RETENTION_MS` of the partition's order progress (:func:`upsert`'s ``horizon``).

>>> vs = upsert([], {"updated_at": 100, "country": "DE", "segment": "new", "signup_time": 50}, 1000)
>>> vs = upsert(vs, {"updated_at": 300, "country": "FR", "segment": "vip", "signup_time": 50}, 5000)
>>> as_of(vs, 99, 9000), as_of(vs, 100, 9000)["user_country"], as_of(vs, 10_000, 9000)["user_segment"]
(None, 'DE', 'vip')
>>> as_of(vs, 10_000, 4999)["user_segment"]  # the FR version was published after the order
'new'
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_VERSIONS", "NULL_USER", "RETENTION_MS", "as_of", "upsert"]

MAX_VERSIONS = 64
"""At most this many versions per user are kept (the newest ones): a memory bound, reached only
by a user updated more than this often within :data:`RETENTION_MS`."""
RETENTION_MS = 24 * 3600 * 1000
"""How far behind its partition's order progress (event time and record time) an order may be
and still be enriched from the full history; the dedupe retention is the same."""

NULL_USER: dict[str, Any] = {"user_country": None, "user_segment": None, "user_signup_time": None}
"""Attributes of an order whose user is unknown (at its event time, in the log before it)."""

Version = list[Any]  # [updated_at, country, segment, signup_time, record_ms]


def _sort_key(v: Version) -> tuple[int, int]:
    return v[0], v[4] if len(v) > 4 else 0


def upsert(versions: list[Version], rec: Mapping[str, Any], record_ms: int | None,
           horizon: tuple[int, int] | None = None) -> list[Version]:
    """Insert a profile record published at ``record_ms``; keep the order and the bounds.

    A record equal to a kept version (same ``updated_at`` and attributes) adds nothing: the
    earlier copy is visible to every order the later one is. ``horizon`` is ``(event time,
    record time)`` such that every order still to come is at or after both (minus
    :data:`RETENTION_MS`, subtracted here): a version with a newer successor valid and
    published before the horizon can never be joined again and is dropped.

    >>> vs = []
    >>> for t, r in ((5, 50), (1, 10), (3, 30), (3, 31), (3, 60)):
    ...     vs = upsert(vs, {"updated_at": t, "country": "DE", "segment": str(t), "signup_time": 0}, r)
    >>> [(v[0], v[4]) for v in vs]
    [(1, 10), (3, 30), (5, 50)]
    >>> day = RETENTION_MS
    >>> vs = upsert(vs, {"updated_at": 7, "country": "FR", "segment": "7", "signup_time": 0}, 70,
    ...             horizon=(day + 7, day + 70))
    >>> [(v[0], v[4]) for v in vs]  # only the newest version can still be joined
    [(7, 70)]
    """
    row = [rec["updated_at"], rec["country"], rec["segment"], rec["signup_time"],
           0 if record_ms is None else record_ms]
    for v in versions:
        if v[0] == row[0] and v[1:4] == row[1:4]:
            if _sort_key(v)[1] <= row[4]:
                return versions  # the same version again, published later: nothing new
            versions = [x for x in versions if x is not v]
            break
    keys = [_sort_key(v) for v in versions]
    i = bisect.bisect_right(keys, (row[0], row[4]))
    versions = [*versions[:i], row, *versions[i:]]
    if horizon is not None:
        valid_by, logged_by = horizon[0] - RETENTION_MS, horizon[1] - RETENTION_MS
        # newest version that every order to come can see: everything valid before it is dead
        keep_from = 0
        for j in range(len(versions) - 1, -1, -1):
            v = versions[j]
            if v[0] <= valid_by and _sort_key(v)[1] <= logged_by:
                keep_from = j
                break
        versions = versions[keep_from:]
    return versions[-MAX_VERSIONS:]


def as_of(versions: list[Version], event_time: int, record_ms: int | None = None) -> dict[str, Any] | None:
    """User attributes of the version valid at ``event_time`` among those published at or before
    ``record_ms`` (None: all of them); None when there is none."""
    i = bisect.bisect_right([v[0] for v in versions], event_time)
    while i > 0:
        i -= 1
        v = versions[i]
        if record_ms is None or _sort_key(v)[1] <= record_ms:
            return {"user_country": v[1], "user_segment": v[2], "user_signup_time": v[3]}
    return None
