"""Stage 2: window partials (repartitioned by window key) -> update-style revenue per window.

Each window key lives in one partition of the partials topic; its state ``w<key>`` is a
:class:`~stream_processors.windows.WindowTotal`. A window closes (``final=true``) when
``window_end + grace <= watermark`` where the watermark is the max partition watermark seen in
partials — or, when the stream is idle, that watermark advanced by the wall-clock time since
the last partial (the timer's ticks drive this), so windows flush even if no event follows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from stream_processors.base import Emitted, Message, State, dumps, loads
from stream_processors.dimensions import fill_gaps
from stream_processors.windows import WindowTotal

__all__ = ["TICK", "RevenueStage"]

TICK = b'{"tick":1}'
"""Value of the timer's idle-tick messages on the partials topic."""


class RevenueStage:
    """Merges partials into totals and closes windows; remembers open windows per partition."""

    def __init__(self, version: str, state: State, grace_ms: int, idle_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.version = version
        self.state = state
        self.grace_ms = grace_ms
        self.idle_s = idle_s
        self.clock = clock
        self._open: dict[int, set[str]] = {}
        self._last_seen: dict[int, float] = {}
        self.partials_source: Callable[..., list[Message]] | None = None
        """Reads a partials partition from an offset up to another: the offsets Faust skipped
        around a rebalance (stream_processors.dimensions). Offset ``q`` in state: last applied."""

    def forget(self, partition: int) -> None:
        """Drop the in-memory view of ``partition`` (revoked: another worker may change it)."""
        self._open.pop(partition, None)
        self._last_seen.pop(partition, None)

    def open_windows(self, partition: int) -> set[str]:
        """Keys of the not-yet-final windows of ``partition`` (loaded from state once)."""
        found = self._open.get(partition)
        if found is None:
            found = self._open[partition] = {
                k[1:].decode() for k, v in self.state.scan(partition, b"w") if not loads(v)["f"]
            }
            self._last_seen.setdefault(partition, self.clock())
        return found

    def idle(self) -> list[int]:
        """Partitions with open windows and no partial for ``idle_s``: the timer ticks them."""
        now = self.clock()
        return [p for p, keys in self._open.items()
                if keys and now - self._last_seen.get(p, now) >= self.idle_s]

    def process(self, msgs: Sequence[Message]) -> Emitted:
        """Apply a batch of partials/ticks; emit the new value of every changed window."""
        out = Emitted()
        by_part: dict[int, list[Message]] = defaultdict(list)
        for m in msgs:
            by_part[m.partition].append(m)
        for p, ms in by_part.items():
            ms.sort(key=lambda m: m.offset)
            done = loads(self.state.get(p, b"q"))
            if self.partials_source is not None:
                ms = fill_gaps(ms, done, self.partials_source, "partials")
            # Offsets up to ``done`` are in the state already: a worker applied them, wrote the
            # state (RocksDB first) and may have died before its outputs were acknowledged.
            again = [m.offset for m in ms if done is not None and m.offset <= done]
            self._partition(p, ms, out, min(again) if again else None)
            out.writes.setdefault(p, {})[b"q"] = dumps(max(ms[-1].offset, -1 if done is None else done))
        return out

    def _partition(self, p: int, ms: list[Message], out: Emitted, redelivered_from: int | None = None) -> None:
        """Apply one partition's batch. ``redelivered_from``: the first offset of the batch the
        state already holds; every window whose current revision came from there on is emitted
        again (same revision: update-style, so the sink keeps one row), since the outputs of the
        batches that made them may be lost."""
        now = self.clock()
        writes = out.writes.setdefault(p, {})
        open_keys = self.open_windows(p)
        wm: int | None = loads(self.state.get(p, b"g"))
        totals: dict[str, WindowTotal] = {}
        changed: set[str] = set()
        ticked = False
        for m in ms:
            if m.value == TICK or not m.value:
                ticked = True
                continue
            part = loads(m.value)
            key = (m.key or b"").decode()
            tot = totals.get(key)
            if tot is None:
                found = loads(self.state.get(p, b"w" + key.encode()))
                tot = totals[key] = (WindowTotal.from_json(found) if found
                                     else WindowTotal(part["s"], part["c"], part["u"]))
            if tot.apply(part["p"], part["n"], part["r"], part["o"]):
                changed.add(key)
            if part["wm"] is not None and (wm is None or part["wm"] > wm):
                wm = part["wm"]
            self._last_seen[p] = now
        if wm is not None:
            effective = wm
            idle_for = now - self._last_seen.get(p, now)
            if ticked and idle_for >= self.idle_s:
                effective = wm + int(idle_for * 1000)
            for key in sorted(open_keys | changed):
                tot = totals.get(key)
                if tot is None:
                    tot = totals[key] = WindowTotal.from_json(loads(self.state.get(p, b"w" + key.encode())))
                if not tot.final and tot.end + self.grace_ms <= effective and tot.close():
                    changed.add(key)
            writes[b"g"] = dumps(wm)
        last = ms[-1].offset if ms else -1
        for key in changed:
            totals[key].at = last
        again: set[str] = set()
        if redelivered_from is not None:
            for k, v in self.state.scan(p, b"w"):
                key = k[1:].decode()
                if key not in changed and loads(v).get("a", -1) >= redelivered_from:
                    totals.setdefault(key, WindowTotal.from_json(loads(v)))
                    again.add(key)
        for key in sorted(again):
            out.revenue.append((key, totals[key].record(self.version)))
        for key in sorted(changed):
            tot = totals[key]
            writes[b"w" + key.encode()] = dumps(tot.to_json())
            out.revenue.append((key, tot.record(self.version)))
            if tot.final:
                open_keys.discard(key)
            else:
                open_keys.add(key)
