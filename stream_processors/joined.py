"""The joined stage: the stream stages of co-partitioned streams in one agent, then their interval joins.

A ``[joins.<name>]`` pairs two streams keyed by the join field with the same partition count, so
partition ``p`` of each holds the same keys. One agent consumes both (and their tables, and its
ticks topic); each batch runs every stream's :class:`~stream_processors.stream.StreamStage`
(rules, dedupe, enrichment, sessions) and then each join over the valid, deduplicated events
those stages emitted — re-deliveries included, which the join recognises by offset
(:class:`~stream_processors.operators.joins.PartitionJoin`). The join's state is ``J<join>`` in
partition ``p`` of the left stream's table; its rows go out under the join's name.

A ticks message for partition ``p`` (the app's timer, when the wall clock would show unmatched
rows of an idle partition) runs :meth:`PartitionJoin.idle` through this agent: the rows it shows
are marked in the state, written before the rows are emitted, like every batch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from kappa.pipeline import Pipeline
from stream_processors.base import Emitted, Message, State, dumps, loads
from stream_processors.operators.joins import SIDES, JoinSpec, PartitionJoin, join_spec
from stream_processors.stream import StreamStage

__all__ = ["JoinedStage"]


class JoinedStage:
    """Stream stages of one agent (by stream, the first is the left of every join) and their joins."""

    def __init__(self, version: str, pipeline: Pipeline, stages: dict[str, StreamStage], state: State,
                 grace_ms: int, *, idle_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.version = version
        self.stages = stages
        self.state = state
        """The first stream's state: it holds the joins' state."""
        self.idle_s = idle_s
        self.clock = clock
        self.joins: list[JoinSpec] = [join_spec(j, grace_ms) for j in pipeline.joins.values()
                                      if j.left in stages and j.right in stages]
        self.streams = {j.name: (j.left, j.right) for j in self.joins}
        self.times = {s: pipeline.input(s).time or "" for s in stages}
        self.ticks_topic: str | None = None
        self._seen: dict[tuple[str, int], float] = {}
        self._cache: dict[tuple[str, int], PartitionJoin] = {}

    def process(self, msgs: Sequence[Message]) -> list[tuple[str, Emitted]]:
        """One batch of the agent's topics: every stream stage's output (by stream), the joins'
        rows and state in the first stream's."""
        outs = [(name, stage.process(msgs)) for name, stage in self.stages.items()]
        by_name = dict(outs)
        first = outs[0][1]
        ticked = {m.partition for m in msgs if m.topic == self.ticks_topic}
        now = self.clock()
        for spec in self.joins:
            sides = dict(zip(SIDES, self.streams[spec.name], strict=True))
            events: dict[int, dict[str, list[tuple[str, dict[str, Any]]]]] = defaultdict(
                lambda: {s: [] for s in SIDES})
            for side, stream in sides.items():
                for key, rec in by_name[stream].enriched:
                    events[rec["source_partition"]][side].append((key, rec))
            for p in sorted(set(events) | ticked):
                join = self._load(spec, p)
                rows: dict[str, dict[str, Any]] = {}
                if p in events:
                    for side, items in events[p].items():
                        t = self.times[sides[side]]
                        for key, rec in items:
                            join.observe(side, rec["source_offset"], key, rec, rec[t])
                    rows.update(join.end_batch(now))
                if p in ticked:
                    rows.update(join.idle(now, self.idle_s))
                self._seen[spec.name, p] = join.seen if join.seen is not None else now
                self._cache[spec.name, p] = join
                first.writes.setdefault(p, {})[b"J" + spec.name.encode()] = dumps(join.to_json())
                if rows:
                    first.rows.setdefault(spec.name, []).extend(
                        (k, {**r, "pipeline_version": self.version}) for k, r in sorted(rows.items()))
        return outs

    def _load(self, spec: JoinSpec, p: int) -> PartitionJoin:
        join = PartitionJoin.from_json(loads(self.state.get(p, b"J" + spec.name.encode())), spec)
        join.seen = self._seen.get((spec.name, p))
        return join

    def due(self, now: float) -> list[int]:
        """Partitions an idle tick would show something on: the first stage's sessions, or a left
        join's unmatched rows the wall clock lets through."""
        out = set(next(iter(self.stages.values())).due(now))
        for (name, p), join in self._cache.items():
            seen, spec = self._seen.get((name, p)), join.spec
            marks = [w for w in join.watermark.values() if w is not None]
            if spec.how != "left" or seen is None or not marks or now - seen < self.idle_s:
                continue
            effective = max(marks) + int((now - seen) * 1000)
            reach = spec.upper_ms + spec.grace_ms
            if any(not left[5] and not left[6] and left[0] + reach < effective
                   for stored in join.store["left"].values() for left in stored):
                out.add(p)
        return sorted(out)

