"""Event-time tumbling windows: assignment, lateness, and the two update-style aggregation stages.

Why two stages: orders are partitioned by user_id, windows are keyed by
``window_start|category|currency``, so every input partition holds a *partial* of each window.
Stage 1 (:class:`PartitionWindows`, one per input partition) keeps that partition's partials
and its watermark; stage 2 (:class:`WindowTotal`, one per window key, after a repartition by
window key) keeps the latest partial of every source partition and sums them. Both stages are
update-style and remember offsets, so re-delivery after a crash never double counts.

>>> window_start(90_000), window_key(60_000, "books", "EUR")
(60000, '60000|books|EUR')
>>> pw = PartitionWindows()
>>> pw.add(0, "books", "EUR", 10.0, event_time=61_000, grace_ms=0)
'on_time'
>>> pw.add(1, "books", "EUR", 5.0, event_time=125_000, grace_ms=0)
'on_time'
>>> pw.add(2, "books", "EUR", 1.0, event_time=62_000, grace_ms=0)  # window 60 s ended + no grace
'too_late'
>>> pw.windows["60000|books|EUR"], pw.watermark, pw.offset
([60000, 'books', 'EUR', 1, 10.0], 125000, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "WINDOW_MS",
    "PartitionWindows",
    "WindowTotal",
    "classify",
    "window_key",
    "window_start",
]

WINDOW_MS = 60_000
"""Tumbling window size: one minute of event time, in ms."""


def window_start(event_time: int, size_ms: int = WINDOW_MS) -> int:
    """Start (inclusive, epoch ms) of the tumbling window holding ``event_time``.

    >>> window_start(59_999), window_start(60_000), window_start(-1)
    (0, 60000, -60000)
    """
    return event_time - event_time % size_ms


def window_key(start: int, category: str, currency: str) -> str:
    """Output key of a revenue window (the contract: ``window_start|category|currency``)."""
    return f"{start}|{category}|{currency}"


def classify(event_time: int, watermark: int | None, grace_ms: int, size_ms: int = WINDOW_MS) -> str:
    """``on_time``, ``within_grace`` or ``too_late`` for an event against its partition's watermark.

    ``watermark`` is the max event time seen on the partition *before* this event. Too late means
    ``window_end + grace <= watermark``: the window is closed and the event is only counted.

    >>> classify(61_000, None, 0), classify(61_000, 119_000, 0), classify(61_000, 120_000, 0)
    ('on_time', 'on_time', 'too_late')
    >>> classify(61_000, 130_000, 60_000), classify(61_000, 180_000, 60_000)
    ('within_grace', 'too_late')
    """
    if watermark is None:
        return "on_time"
    end = window_start(event_time, size_ms) + size_ms
    if end + grace_ms <= watermark:
        return "too_late"
    if end <= watermark:
        return "within_grace"
    return "on_time"


@dataclass
class PartitionWindows:
    """Stage 1: one input partition's watermark, last applied offset and open window partials.

    ``windows`` maps window key -> ``[start, category, currency, orders, revenue]``. Events of a
    partition arrive in offset order, so ``offset`` (the last applied) is enough to skip a
    re-delivered event: :meth:`applied` tells whether it is already counted.
    """

    watermark: int | None = None
    offset: int = -1
    windows: dict[str, list[Any]] = field(default_factory=dict)

    def applied(self, offset: int) -> bool:
        """True when the event at ``offset`` is already reflected in this state."""
        return offset <= self.offset

    def add(self, offset: int, category: str, currency: str, amount: float, event_time: int,
            grace_ms: int, kind: str | None = None) -> str:
        """Apply one valid, first-seen order; return its lateness (see :func:`classify`).

        ``kind`` forces the lateness decided the first time this event was seen (re-delivery
        after a crash keeps its original verdict even though the watermark has moved).
        """
        kind = kind or classify(event_time, self.watermark, grace_ms)
        if kind != "too_late":
            start = window_start(event_time)
            key = window_key(start, category, currency)
            win = self.windows.get(key)
            if win is None:
                win = self.windows[key] = [start, category, currency, 0, 0.0]
            win[3] += 1
            win[4] += amount
        if self.watermark is None or event_time > self.watermark:
            self.watermark = event_time
        self.offset = max(self.offset, offset)
        return kind

    def prune(self, grace_ms: int, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Forget partials of windows closed on this partition (except ``keep``); return their keys.

        Callers keep the windows their current batch touched: that batch's partials are not
        durable yet, and a re-delivery must still find the window to emit it again.

        >>> pw = PartitionWindows(watermark=200_000, windows={"0|a|EUR": [0, "a", "EUR", 1, 1.0]})
        >>> pw.prune(60_000, keep={"0|a|EUR"}), pw.prune(60_000), pw.windows
        ([], ['0|a|EUR'], {})
        """
        if self.watermark is None:
            return []
        closed = [k for k, w in self.windows.items()
                  if w[0] + WINDOW_MS + grace_ms <= self.watermark and k not in keep]
        for k in closed:
            del self.windows[k]
        return closed

    def to_json(self) -> dict[str, Any]:
        return {"wm": self.watermark, "off": self.offset, "win": self.windows}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> PartitionWindows:
        if not data:
            return cls()
        return cls(data["wm"], data["off"], data["win"])


@dataclass
class WindowTotal:
    """Stage 2: the full value of one window = sum of the latest partial of every source partition.

    ``parts`` maps source partition -> ``[orders, revenue, offset]``; a partial whose offset is
    not above the stored one is a re-delivery and changes nothing. ``revision`` grows with
    every emitted change so the highest revision is the current value.

    >>> w = WindowTotal(60_000, "books", "EUR")
    >>> w.apply(0, 2, 30.0, offset=7), w.apply(1, 1, 5.0, offset=3), w.apply(0, 2, 30.0, offset=7)
    (True, True, False)
    >>> w.orders, w.revenue, w.revision
    (3, 35.0, 2)
    """

    start: int
    category: str
    currency: str
    parts: dict[str, list[Any]] = field(default_factory=dict)
    revision: int = 0
    final: bool = False
    at: int = -1
    """Offset (in the partials partition) of the batch that made the current revision: a batch
    re-delivered from offset ``o`` re-emits every window with ``at >= o``, whose output may
    have died with the worker that wrote this state (:class:`~stream_processors.revenue.RevenueStage`)."""

    @property
    def end(self) -> int:
        return self.start + WINDOW_MS

    @property
    def key(self) -> str:
        return window_key(self.start, self.category, self.currency)

    @property
    def orders(self) -> int:
        return sum(p[0] for p in self.parts.values())

    @property
    def revenue(self) -> float:
        # Sorted by partition so the float sum is the same in every run (exact comparisons).
        return sum(self.parts[k][1] for k in sorted(self.parts, key=int))

    def apply(self, partition: int, orders: int, revenue: float, offset: int) -> bool:
        """Take a partial from ``partition``; True (and a new revision) when it changed the value."""
        key = str(partition)
        old = self.parts.get(key)
        if old is not None and offset <= old[2]:
            return False
        self.parts[key] = [orders, revenue, offset]
        self.revision += 1
        return True

    def close(self) -> bool:
        """Mark final (a new revision); False when it already was."""
        if self.final:
            return False
        self.final = True
        self.revision += 1
        return True

    def record(self, version: str) -> dict[str, Any]:
        """The RevenueWindow record of the current value."""
        return {"window_start": self.start, "category": self.category, "currency": self.currency,
                "orders": self.orders, "revenue": self.revenue, "revision": self.revision,
                "final": self.final, "pipeline_version": version}

    def to_json(self) -> dict[str, Any]:
        return {"s": self.start, "c": self.category, "u": self.currency, "p": self.parts,
                "r": self.revision, "f": self.final, "a": self.at}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WindowTotal:
        return cls(d["s"], d["c"], d["u"], d["p"], d["r"], d["f"], d.get("a", -1))
