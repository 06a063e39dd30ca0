"""Dedupe by a declared id within a declared event-time retention, idempotent under re-delivery.

Per input partition ``p`` the state holds, for each id seen, its *first occurrence*
``[partition, offset, lateness, event_time]`` under ``d<id>``. A later event with the same id
at another (partition, offset) is a duplicate and dropped; the same (partition, offset) again
is the same event re-delivered after a crash, not a duplicate: it is emitted again with the
verdict (lateness) it got the first time. Ids older than the retention (by the partition's
event-time watermark) are forgotten, at most once per ``sweep_every_ms`` of watermark progress.

>>> d = Dedupe(retention_ms=1000)
>>> d.key("o1")
b'do1'
>>> first, raw = d.first(0, 7, "on_time", 500)
>>> d.verdict(None, 0, 7), d.verdict(first, 0, 7), d.verdict(first, 1, 3)
('new', 'on_time', None)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stream_processors.base import State, dumps, loads

__all__ = ["Dedupe"]


class Dedupe:
    """First occurrences of ids in one stage's partitioned state (keys ``d<id>``, sweep mark ``x``)."""

    PREFIX = b"d"
    SWEPT = b"x"

    def __init__(self, retention_ms: int, sweep_every_ms: int = 3600 * 1000) -> None:
        self.retention_ms = retention_ms
        self.sweep_every_ms = sweep_every_ms

    def key(self, event_id: Any) -> bytes:
        """State key of ``event_id`` (its ``str``)."""
        return self.PREFIX + str(event_id).encode()

    @staticmethod
    def verdict(first: list[Any] | None, partition: int, offset: int) -> str | None:
        """``"new"`` for a first occurrence, None for a duplicate, else the re-delivered event's
        original lateness (the same partition and offset as its stored first occurrence)."""
        if first is None:
            return "new"
        if first[0] != partition or first[1] != offset:
            return None
        return str(first[2])

    @staticmethod
    def first(partition: int, offset: int, kind: str, event_time: int) -> tuple[list[Any], bytes]:
        """The stored first occurrence and its JSON (written without ``json.dumps``)."""
        return ([partition, offset, kind, event_time],
                b'[%d,%d,"%s",%d]' % (partition, offset, kind.encode(), event_time))

    def sweep(self, state: State, partition: int, watermark: int | None, writes: dict[bytes, bytes | None],
              get: Callable[[bytes], Any]) -> None:
        """Forget ids older than the retention, at most once per ``sweep_every_ms`` of watermark."""
        if watermark is None:
            return
        last = get(self.SWEPT)
        if last is not None and watermark - last < self.sweep_every_ms:
            return
        cutoff = watermark - self.retention_ms
        for key, value in state.scan(partition, self.PREFIX):
            if key not in writes and loads(value)[3] < cutoff:
                writes[key] = None
        writes[self.SWEPT] = dumps(watermark)
