"""Event-time session windows per key: a declared inactivity gap and grace, merging, update-style rows.

Two events of a key are in the same session when their times differ by less than ``gap``
(a gap of ``gap`` or more starts a new session), transitively: the sessions of a key are the
connected components of its accepted events, whatever order they arrived in. A session is
``[session_start, session_end]``: its first and last event times.

One :class:`PartitionSessions` per input partition applies that partition's events in offset
order (the session keys must include the field the input is keyed by, so every event of a key
is in one partition). It keeps the partition's watermark ``wm`` (max event time seen), its last
applied offset (a re-delivered event is skipped, not counted twice) and the open sessions.

Lateness of an event at ``t`` against ``wm`` before it (:meth:`PartitionSessions.classify`):

- a session *closes* once ``session_end + gap + grace <= wm``; a closed session never changes;
- ``too_late``: ``t + gap + grace <= wm`` (a session of this event alone would be closed), or the
  event would join a closed session of its key (closed sessions are remembered until
  ``session_end + 2 * gap + grace <= wm``, after which the first rule covers them). Counted,
  added nowhere, kept by the caller with its late flag;
- ``within_grace``: ``t < wm`` and not too late: it updates, extends or merges open sessions
  (a late event less than ``gap`` from two sessions bridges them into one);
- ``on_time`` otherwise.

Hence the final sessions are exactly the gap-sessionisation of the events that were not too
late, and the too-late verdicts are a function of the partition's log.

Outputs are update-style rows keyed ``<key values>|<session_start>`` with ``revision = 2 * n +
final`` (``n``: events in the session): a revision names one content, whatever the batching,
crashes or wall clock, and grows with every change. A merge or a late event before the start
moves a session's start earlier, so the row of the old start must go: it gets a *tombstone*, its
last value with ``retracted = true``, ``final = true`` and the new session's ``2 * n`` (above
every revision the old row had). The key cannot be made to survive merges (two emitted sessions
becoming one leave one key too many), and rows keyed by start make the serving view simple:
``ReplacingMergeTree(revision)`` by key and start, ``WHERE NOT retracted``. A start, once moved,
never comes back (its event stays in an earlier-starting session), so a tombstone is final.

Exactly-once outputs under crashes: a batch's rows are kept in the state (``pending``, with the
batch's last offset) until a later batch starts after that offset (its outputs were flushed, or
the offset committed); a batch that starts at or before it is a re-delivery and emits them again.

Idle close (:meth:`PartitionSessions.idle`): when the partition sees no event for a while, the
sessions the watermark advanced by the idle time would close are emitted ``final`` (the wall
clock decides when, never what: the state is unchanged, and should an event extend such a
session later it is emitted again as a new revision, open).

Aggregations: the window operator's (``count``, ``count(f)``, ``sum(f)``, ``min(f)``, ``max(f)``,
``avg(f)``) and ``first(f)`` / ``last(f)``: the value of ``f`` at the session's first / last event
(by time, then offset; null when that event has none).

>>> spec = parse_session("visits", {"gap": "30m", "keys": ["visitor"],
...                                 "aggregations": {"views": "count", "landing": "first(url)"}})
>>> s = PartitionSessions(spec)
>>> [s.observe(o, {"visitor": "v", "url": u}, t)[0] for o, (t, u) in enumerate(
...     [(0, "/a"), (600_000, "/b"), (3_000_000, "/c")])]
['on_time', 'on_time', 'on_time']
>>> [(r["session_start"], r["views"], r["landing"], r["revision"], r["final"]) for r in s.end_batch(2).values()]
[(0, 2, '/a', 5, True), (3000000, 1, '/c', 2, False)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kappa.errors import ConfigError
from stream_processors.operators.windows import (
    FUNCTIONS,
    Aggregation,
    WindowSpecError,
    accumulate,
    empty_slots,
    parse_duration,
)

__all__ = [
    "SESSION_FUNCTIONS",
    "PartitionSessions",
    "SessionSpec",
    "SessionSpecError",
    "parse_session",
    "session_spec",
]

SESSION_FUNCTIONS = (*FUNCTIONS, "first", "last")
"""Aggregation functions a session can declare; each merges exactly when sessions merge."""

_RESERVED = frozenset({"session_start", "session_end", "revision", "final", "retracted", "pipeline_version"})
_DECLARED = frozenset({"stream", "gap", "grace", "keys", "aggregations"})


class SessionSpecError(ConfigError):
    """A session declaration is malformed; the message names the entry and what to write instead."""


def _parse_aggregation(name: str, text: Any, where: str) -> Aggregation:
    """An :class:`Aggregation` of the window operator's, or ``first(f)`` / ``last(f)``.

    >>> _parse_aggregation("landing", "first(url)", "w"), _parse_aggregation("n", "count", "w").fn
    (Aggregation(name='landing', fn='first', field='url'), 'count')
    """
    if isinstance(text, str):
        head = text.strip().split("(", 1)
        if head[0].strip().lower() in ("first", "last"):
            fld = head[1].rstrip(") ").strip() if len(head) == 2 and text.strip().endswith(")") else ""
            if not fld.isidentifier():
                raise SessionSpecError(f"{where}: {head[0].strip()} needs a field, as in {head[0].strip()}(path)")
            return Aggregation(name, head[0].strip().lower(), fld)
    try:
        return Aggregation.parse(name, text, where)
    except WindowSpecError as exc:
        raise SessionSpecError(str(exc).replace(" or avg(f))", ", avg(f), first(f) or last(f))")) from exc


@dataclass(frozen=True)
class SessionSpec:
    """What one session operator computes: gap and grace in ms, key fields, aggregations.

    ``slots`` is derived: the mergeable accumulators, ``(op, field)`` with op ``count``/``sum``/
    ``min``/``max``/``first``/``last``; slot 0 counts events.

    >>> SessionSpec("s", 1_800_000, 0, ("visitor",), (Aggregation("landing", "first", "url"),)).slots
    (('count', None), ('first', 'url'))
    >>> try:
    ...     SessionSpec("s", 0, 0, ("visitor",), ())
    ... except SessionSpecError as exc:
    ...     print(exc)
    sessions.s: gap must be a positive duration
    """

    name: str
    gap_ms: int
    grace_ms: int
    keys: tuple[str, ...]
    aggregations: tuple[Aggregation, ...]
    stream: str | None = None
    slots: tuple[tuple[str, str | None], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"sessions.{self.name}"
        if self.gap_ms <= 0:
            raise SessionSpecError(f"{where}: gap must be a positive duration")
        if self.grace_ms < 0:
            raise SessionSpecError(f"{where}: grace must not be negative")
        if not self.keys:
            raise SessionSpecError(f'{where}.keys: sessions are per key: declare at least one, '
                                   'as in keys = ["client_id"]')
        names = [*self.keys, *(a.name for a in self.aggregations)]
        clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & _RESERVED))
        if clash:
            raise SessionSpecError(f"{where}: output name(s) {', '.join(clash)} used twice or reserved "
                                   f"({', '.join(sorted(_RESERVED))} are the session's own)")
        slots: list[tuple[str, str | None]] = [("count", None)]
        for agg in self.aggregations:
            wanted = {"avg": [("sum", agg.field), ("count", agg.field)]}.get(agg.fn, [(agg.fn, agg.field)])
            slots += [s for s in wanted if s not in slots]
        object.__setattr__(self, "slots", tuple(slots))

    def empty(self) -> list[Any]:
        """The slots of a session without events."""
        return empty_slots(self.slots)

    def add(self, slots: list[Any], event: Mapping[str, Any], event_time: int, offset: int) -> None:
        """Add one event to ``slots`` (nulls are skipped, except by first/last)."""
        accumulate(slots, 0, self.slots, event, (event_time, offset))

    def merge(self, into: list[Any], other: Sequence[Any]) -> None:
        """Merge the slots of ``other`` into ``into`` (sessions bridged by an event)."""
        for i, (op, _) in enumerate(self.slots):
            a, b = into[i], other[i]
            if op in ("count", "sum"):
                into[i] = a + b
            elif b is None:
                continue
            elif a is None:
                into[i] = b
            elif op == "min":
                into[i] = min(a, b)
            elif op == "max":
                into[i] = max(a, b)
            elif op == "first":
                into[i] = a if a[:2] <= b[:2] else b
            else:
                into[i] = a if a[:2] >= b[:2] else b

    def values(self, slots: Sequence[Any]) -> dict[str, Any]:
        """The declared aggregations of a session's slots."""
        index = {s: i for i, s in enumerate(self.slots)}
        out: dict[str, Any] = {}
        for agg in self.aggregations:
            if agg.fn == "avg":
                n = slots[index["count", agg.field]]
                out[agg.name] = slots[index["sum", agg.field]] / n if n else None
            elif agg.fn in ("first", "last"):
                mark = slots[index[agg.fn, agg.field]]
                out[agg.name] = None if mark is None else mark[2]
            else:
                out[agg.name] = slots[index[agg.fn, agg.field]]
        return out


def parse_session(name: str, table: Mapping[str, Any], grace_ms: int = 0) -> SessionSpec:
    """:class:`SessionSpec` of a ``[sessions.<name>]`` declaration (``grace`` defaults to ``grace_ms``).

    >>> spec = parse_session("visits", {"stream": "page_views", "gap": "30m", "grace": "5m", "keys": ["visitor_id"],
    ...     "aggregations": {"page_views": "count", "landing_url": "first(url)", "exit_url": "last(url)"}})
    >>> spec.gap_ms, spec.grace_ms, spec.keys, [a.fn for a in spec.aggregations]
    (1800000, 300000, ('visitor_id',), ['count', 'first', 'last'])
    >>> try:
    ...     parse_session("s", {"gap": "30m", "keys": ["v"], "aggregations": {"p": "median(x)"}})
    ... except SessionSpecError as exc:
    ...     print(*str(exc).split(" (", 1), sep="\\n(")
    sessions.s.aggregations.p: unknown function 'median' in 'median(x)'
    (use count, sum(f), min(f), max(f), avg(f), first(f) or last(f))
    """
    where = f"sessions.{name}"
    unknown = sorted(set(table) - _DECLARED)
    if unknown:
        raise SessionSpecError(f"{where}: unknown setting(s) {', '.join(unknown)} "
                               f"(a session declares {', '.join(sorted(_DECLARED))})")
    if "gap" not in table:
        raise SessionSpecError(f'{where}: gap is missing (the inactivity that ends a session, e.g. gap = "30m")')
    try:
        gap = parse_duration(table["gap"], f"{where}.gap")
        grace = parse_duration(table["grace"], f"{where}.grace") if "grace" in table else grace_ms
    except WindowSpecError as exc:
        raise SessionSpecError(str(exc)) from exc
    keys = table.get("keys", [])
    if not isinstance(keys, list | tuple) or not all(isinstance(k, str) and k for k in keys):
        raise SessionSpecError(f'{where}.keys: write a list of field names, as in keys = ["client_id"]')
    aggs = table.get("aggregations", {"events": "count"})
    if not isinstance(aggs, Mapping) or not aggs:
        raise SessionSpecError(f'{where}.aggregations: declare at least one, as in '
                               f'aggregations = {{ events = "count", entry = "first(path)" }}')
    stream = table.get("stream")
    return SessionSpec(name, gap, grace, tuple(keys),
                       tuple(_parse_aggregation(n, t, f"{where}.aggregations.{n}") for n, t in aggs.items()),
                       stream if isinstance(stream, str) else None)


def session_spec(decl: Any, grace_ms: int) -> SessionSpec:
    """The spec of a loaded ``[sessions.<name>]`` (:class:`kappa.pipeline.definition.Session`);
    ``grace_ms`` when it declares no grace."""
    grace = grace_ms if decl.grace_ms is None else decl.grace_ms
    where = f"sessions.{decl.name}.aggregations"
    return SessionSpec(decl.name, decl.gap_ms, grace, tuple(decl.keys),
                       tuple(_parse_aggregation(n, t, f"{where}.{n}") for n, t in decl.aggregations.items()),
                       decl.stream)


Session = list[Any]
"""``[start, end, *slots]``: first and last event time, then the slots (slot 0: event count)."""


@dataclass
class PartitionSessions:
    """One input partition's watermark, last applied offset, open sessions and unflushed rows.

    ``open`` maps key -> ``[key values, [session, ...]]`` (sessions sorted by start, disjoint);
    ``closed`` maps key -> ``[[start, end], ...]`` of closed sessions still able to make an event
    too late; ``pending`` maps output key -> ``[batch last offset, row]``: rows not known to be
    flushed. A batch is :meth:`observe` per event in offset order, then :meth:`end_batch`.
    """

    spec: SessionSpec
    watermark: int | None = None
    offset: int = -1
    open: dict[str, list[Any]] = field(default_factory=dict)
    closed: dict[str, list[list[int]]] = field(default_factory=dict)
    pending: dict[str, list[Any]] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)
    seen: float | None = field(default=None, compare=False)
    """Wall-clock time of the last batch (in memory only: decides when an idle session is shown final)."""
    _rows: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _first: int | None = field(default=None, init=False, repr=False, compare=False)
    _shown: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "data": self.to_json()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        other = PartitionSessions.from_json(state["data"], state["spec"])
        self.__dict__.update(other.__dict__)

    # -- lateness ----------------------------------------------------------------------------
    def classify(self, key: str, event_time: int) -> str:
        """``on_time``, ``within_grace`` or ``too_late`` (module docstring) against the watermark.

        >>> s = PartitionSessions(SessionSpec("s", 600_000, 60_000, ("v",), ()))
        >>> _ = s.observe(0, {"v": "a"}, 0), s.observe(1, {"v": "b"}, 660_000)  # a's [0, 0] closes
        >>> [s.classify(k, t) for k, t in (("b", 700_000), ("b", 600_000), ("a", 599_999), ("a", 600_000),
        ...                                ("b", 0), ("c", 1))]
        ['on_time', 'within_grace', 'too_late', 'within_grace', 'too_late', 'within_grace']
        """
        wm = self.watermark
        if wm is None:
            return "on_time"
        spec = self.spec
        if event_time + spec.gap_ms + spec.grace_ms <= wm:
            return "too_late"
        gap, closing = spec.gap_ms, spec.gap_ms + spec.grace_ms
        for start, end in self.closed.get(key, ()):
            if start - gap < event_time < end + gap:
                return "too_late"
        entry = self.open.get(key)
        if entry is not None:  # closed by the watermark already, moved out at the end of the batch
            for start, end, *_ in entry[1]:
                if end + closing <= wm and start - gap < event_time < end + gap:
                    return "too_late"
        return "within_grace" if event_time < wm else "on_time"

    def key_of(self, event: Mapping[str, Any]) -> str:
        """The session key of an event: its key values joined by ``|``."""
        return "|".join(str(event[k]) for k in self.spec.keys)

    # -- one batch ---------------------------------------------------------------------------
    def observe(self, offset: int, event: Mapping[str, Any], event_time: int,
                kind: str | None = None) -> tuple[str, bool]:
        """One event of the current batch, in offset order: applied unless already (re-delivery).

        Returns its lateness (``kind`` when given and already applied: the verdict the first
        delivery got, from the caller's first-occurrence record) and whether it is new here.
        """
        if self._first is None:
            self._begin(offset)
        if offset <= self.offset:
            return kind or "on_time", False
        key = self.key_of(event)
        kind = self.classify(key, event_time)
        if kind != "too_late":
            self._apply(key, event, event_time, offset)
        if kind != "on_time":
            self.late[kind] = self.late.get(kind, 0) + 1
        if self.watermark is None or event_time > self.watermark:
            self.watermark = event_time
        self.offset = offset
        return kind, True

    def _begin(self, first: int) -> None:
        """Start a batch at offset ``first``: rows of batches that ended before it are flushed
        (forgotten), those of later ones may be lost (emitted again)."""
        self._first = first
        for out_key, (at, row) in list(self.pending.items()):
            if at < first:
                del self.pending[out_key]
            else:
                self._rows[out_key] = row

    def _apply(self, key: str, event: Mapping[str, Any], t: int, offset: int) -> None:
        spec, gap = self.spec, self.spec.gap_ms
        entry = self.open.get(key)
        if entry is None:
            entry = self.open[key] = [[event[k] for k in spec.keys], []]
        values, sessions = entry
        touching = [s for s in sessions if s[0] - gap < t < s[1] + gap]
        slots = spec.empty()
        spec.add(slots, event, t, offset)
        merged: Session = [t, t, *slots]
        n = 1
        for s in touching:  # sorted by start: a deterministic order of float additions
            n += s[2]
        for s in touching:
            merged[0], merged[1] = min(merged[0], s[0]), max(merged[1], s[1])
        if touching:
            total = spec.empty()
            for s in touching:
                spec.merge(total, s[2:])
            spec.merge(total, slots)
            merged[2:] = total
        for s in touching:
            if s[0] != merged[0]:  # its row's start is gone: a tombstone above its revisions
                self._emit(self._row(key, values, s, revision=2 * n, final=True, retracted=True))
        rest = [s for s in sessions if not any(s is x for x in touching)]
        rest.append(merged)
        rest.sort(key=lambda s: s[0])
        entry[1] = rest
        self._emit(self._row(key, values, merged, revision=2 * n, final=False))

    def _row(self, key: str, values: list[Any], s: Session, *, revision: int, final: bool,
             retracted: bool = False) -> dict[str, Any]:
        return {**dict(zip(self.spec.keys, values, strict=True)), "session_start": s[0], "session_end": s[1],
                **self.spec.values(s[2:]), "revision": revision, "final": final, "retracted": retracted,
                "_key": f"{key}|{s[0]}"}

    def _emit(self, row: dict[str, Any]) -> None:
        key = row["_key"]
        self._rows[key] = row
        self._shown.discard(key)

    def end_batch(self, last_offset: int | None = None, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Close the batch (``last_offset``: its last event's offset; None if it had none): close
        sessions the watermark passed, forget closed ones no event can reach, and return the
        rows to emit by output key ``<key values>|<session_start>`` (in key order), re-emitted
        rows of a re-delivered batch included."""
        if last_offset is not None:
            self.offset = max(self.offset, last_offset)
        if now is not None:
            self.seen = now
        wm, spec = self.watermark, self.spec
        if wm is not None:
            closing = spec.gap_ms + spec.grace_ms
            for key in list(self.open):
                values, sessions = self.open[key]
                done = [s for s in sessions if s[1] + closing <= wm]
                if not done:
                    continue
                for s in done:
                    self._emit(self._row(key, values, s, revision=2 * s[2] + 1, final=True))
                    self.closed.setdefault(key, []).append([s[0], s[1]])
                left = [s for s in sessions if s[1] + closing > wm]
                if left:
                    self.open[key][1] = left
                else:
                    del self.open[key]
            forget = closing + spec.gap_ms
            for key in list(self.closed):
                kept = [c for c in self.closed[key] if c[1] + forget > wm]
                if kept:
                    self.closed[key] = kept
                else:
                    del self.closed[key]
        rows = {k: self._rows[k] for k in sorted(self._rows)}
        at = self.offset
        for k, row in rows.items():
            old = self.pending.get(k)
            if old is None or old[1] is not row:
                self.pending[k] = [at, row]
        self._rows = {}
        self._first = None
        return {k: _public(r) for k, r in rows.items()}

    # -- wall clock --------------------------------------------------------------------------
    def idle(self, now: float, idle_s: float) -> dict[str, dict[str, Any]]:
        """Rows ``final`` of the open sessions that would close were the watermark advanced by the
        time since the last batch (at least ``idle_s``); each is shown once until it changes.
        The state is not changed: what a session holds stays a function of the log."""
        if self.seen is None:
            self.seen = now
        idle_for = now - self.seen
        if self.watermark is None or idle_for < idle_s:
            return {}
        effective = self.watermark + int(idle_for * 1000)
        closing = self.spec.gap_ms + self.spec.grace_ms
        out: dict[str, dict[str, Any]] = {}
        for key in sorted(self.open):
            values, sessions = self.open[key]
            for s in sessions:
                out_key = f"{key}|{s[0]}"
                if s[1] + closing <= effective and out_key not in self._shown:
                    self._shown.add(out_key)
                    out[out_key] = _public(self._row(key, values, s, revision=2 * s[2] + 1, final=True))
        return out

    def sessions(self) -> Iterable[dict[str, Any]]:
        """The current row of every open session (key order, then start)."""
        for key in sorted(self.open):
            values, sessions = self.open[key]
            for s in sessions:
                yield _public(self._row(key, values, s, revision=2 * s[2], final=False))

    # -- state -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"wm": self.watermark, "off": self.offset, "open": self.open}
        if self.closed:
            out["closed"] = self.closed
        if self.pending:
            out["pending"] = self.pending
        if self.late:
            out["late"] = self.late
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, spec: SessionSpec) -> PartitionSessions:
        if not data:
            return cls(spec)
        return cls(spec, data["wm"], data["off"], data["open"], data.get("closed", {}),
                   data.get("pending", {}), data.get("late", {}))


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "_key"}
