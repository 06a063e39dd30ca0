"""As-of stream-table enrichment: versions of a table row, bitemporal, so live and replay agree.

A stream event is enriched with the table row *as of its event time*, but only from what the
log held *before the event*: a version joins an event when its time field ``<= event_time``
(valid time) **and** its Kafka record timestamp ``<=`` the event's (log time). Why both: how far
the table partition is read ahead of the stream is a matter of timing (a replay applies every
table record of the log before the first event), so a join on valid time alone lets a replay
enrich old events with versions appended to the log later, which the live run could not have
seen. Record timestamps are part of the log, so the join is the same wherever it runs.

Per key we keep the versions sorted by ``(valid time, record time)``, each stored as
``[valid_time, *values, record_ms]`` (the values of :attr:`AsOf.fields`, in order). A version is
dropped only when no event can pick it any more: when a newer one is valid and in the log for
every event within ``retention_ms`` of the partition's stream progress (:meth:`AsOf.upsert`'s
``horizon``), and at most ``max_versions`` are kept per key (a memory bound).

>>> users = AsOf("updated_at", {"user_country": "country", "user_segment": "segment"})
>>> vs = users.upsert([], {"updated_at": 100, "country": "DE", "segment": "new"}, 1000)
>>> vs = users.upsert(vs, {"updated_at": 300, "country": "FR", "segment": "vip"}, 5000)
>>> users.as_of(vs, 99, 9000), users.as_of(vs, 100, 9000)["user_country"]
(None, 'DE')
>>> users.as_of(vs, 10_000, 4999)["user_segment"]  # the FR version was published after the event
'new'
>>> users.null
{'user_country': None, 'user_segment': None}
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_VERSIONS", "RETENTION_MS", "AsOf", "Version"]

MAX_VERSIONS = 64
"""At most this many versions per key are kept (the newest ones): a memory bound, reached only
by a key updated more than this often within the retention."""
RETENTION_MS = 24 * 3600 * 1000
"""How far behind its partition's stream progress (event time and record time) an event may be
and still be enriched from the full history."""

Version = list[Any]  # [valid_time, *values, record_ms]


class AsOf:
    """The versions of one table as one stream's enrichment sees them.

    ``time`` is the table's valid-time field; ``fields`` maps output field -> table field.
    """

    def __init__(self, time: str, fields: Mapping[str, str], retention_ms: int = RETENTION_MS,
                 max_versions: int = MAX_VERSIONS) -> None:
        self.time = time
        self.outputs = tuple(fields)
        self.sources = tuple(fields.values())
        self.retention_ms = retention_ms
        self.max_versions = max_versions
        self.null: dict[str, Any] = dict.fromkeys(self.outputs)
        """The enrichment of an event whose key has no version (at its time, in the log before it)."""
        self._n = len(self.sources)

    def _sort_key(self, v: Version) -> tuple[int, int]:
        return v[0], v[self._n + 1] if len(v) > self._n + 1 else 0

    def upsert(self, versions: list[Version], rec: Mapping[str, Any], record_ms: int | None,
               horizon: tuple[int, int] | None = None) -> list[Version]:
        """Insert a table record published at ``record_ms``; keep the order and the bounds.

        A record equal to a kept version (same valid time and values) adds nothing: the earlier
        copy is visible to every event the later one is. ``horizon`` is ``(event time, record
        time)`` such that every event still to come is at or after both (minus the retention,
        subtracted here): a version with a newer successor valid and published before the horizon
        can never be joined again and is dropped.

        >>> t = AsOf("at", {"c": "country"})
        >>> vs = []
        >>> for at, r in ((5, 50), (1, 10), (3, 30), (3, 31), (3, 60)):
        ...     vs = t.upsert(vs, {"at": at, "country": "DE"}, r)
        >>> [(v[0], v[2]) for v in vs]
        [(1, 10), (3, 30), (5, 50)]
        >>> day = RETENTION_MS
        >>> vs = t.upsert(vs, {"at": 7, "country": "FR"}, 70, horizon=(day + 7, day + 70))
        >>> [(v[0], v[2]) for v in vs]  # only the newest version can still be joined
        [(7, 70)]
        """
        n = self._n
        row = [rec[self.time], *(rec[s] for s in self.sources), 0 if record_ms is None else record_ms]
        sort_key = self._sort_key
        for v in versions:
            if v[0] == row[0] and v[1:n + 1] == row[1:n + 1]:
                if sort_key(v)[1] <= row[n + 1]:
                    return versions  # the same version again, published later: nothing new
                versions = [x for x in versions if x is not v]
                break
        keys = [sort_key(v) for v in versions]
        i = bisect.bisect_right(keys, (row[0], row[n + 1]))
        versions = [*versions[:i], row, *versions[i:]]
        if horizon is not None:
            valid_by, logged_by = horizon[0] - self.retention_ms, horizon[1] - self.retention_ms
            # newest version that every event to come can see: everything valid before it is dead
            keep_from = 0
            for j in range(len(versions) - 1, -1, -1):
                v = versions[j]
                if v[0] <= valid_by and sort_key(v)[1] <= logged_by:
                    keep_from = j
                    break
            versions = versions[keep_from:]
        return versions[-self.max_versions:]

    def as_of(self, versions: list[Version], event_time: int, record_ms: int | None = None) -> dict[str, Any] | None:
        """Output fields of the version valid at ``event_time`` among those published at or
        before ``record_ms`` (None: all of them); None when there is none."""
        i = bisect.bisect_right([v[0] for v in versions], event_time)
        sort_key = self._sort_key
        while i > 0:
            i -= 1
            v = versions[i]
            if record_ms is None or sort_key(v)[1] <= record_ms:
                return dict(zip(self.outputs, v[1:self._n + 1], strict=True))
        return None
