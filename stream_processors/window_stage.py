"""Stage 2: window partials (repartitioned by window key) -> update-style rows per window.

Each window key lives in one partition of the partials topic; the generic
:class:`~stream_processors.operators.windows.WindowMerge` merges the partials of every source
partition, closes a window (``final=true``) when ``window_end + grace <= watermark`` where the
watermark is the max partition watermark seen in partials — or, when the stream is idle, that
watermark advanced by the wall-clock time since the last partial (the timer's ticks drive
this), so windows flush even if no event follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from stream_processors.base import Emitted, Message, State
from stream_processors.operators.windows import TICK, WindowMerge, WindowSpec
from stream_processors.windows import upgrade_legacy

__all__ = ["TICK", "WindowStage"]


class WindowStage(WindowMerge):
    """The merge stage of one declared window: one record out per changed window.

    (Its name is the first pipeline's; the class is generic.)"""

    def __init__(self, version: str, state: State, grace_ms: int, idle_s: float = 1.0,
                 clock: Callable[[], float] = time.time, spec: WindowSpec | None = None,
                 with_end: bool = False) -> None:
        """``spec``: the window the stream stage declares (required);
        ``with_end``: records carry ``window_end`` too (the derived window schemas have it)."""
        if spec is None:
            raise TypeError("WindowStage needs the declared window's spec (spec=...)")
        super().__init__(spec, version, state, idle_s, clock, upgrade=upgrade_legacy)
        self.grace_ms = grace_ms
        self.with_end = with_end

    def process(self, msgs: Sequence[Message]) -> Emitted:
        """Apply a batch of partials/ticks; emit the new value of every changed window."""
        out = Emitted()
        out.window_values = self.merge(msgs, out.writes)
        if self.with_end:
            size = self.spec.size_ms
            for _, rec in out.window_values:
                rec["window_end"] = rec["window_start"] + size
        return out
