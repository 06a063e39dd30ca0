"""Event-time tumbling and hopping windows with grace, by declared keys, with mergeable aggregations.

A window is ``[start, start + size)``; starts are multiples of ``hop`` (``hop == size``:
tumbling), so an event belongs to ``size / hop`` windows. Two stages, both update-style and
both remembering offsets, so at-least-once delivery and re-delivery after a crash give exact
results:

- Stage 1 (:class:`PartitionWindows`, one per input partition) applies the events of its
  partition in offset order, keeps its watermark (the max event time seen), its last applied
  offset and a mergeable *partial* per open window key, and emits the partials a batch touched.
- Stage 2 (:class:`WindowMerge`, after a repartition by window key) keeps the latest partial
  of every source partition per window (:class:`WindowTotal`), merges them, emits the value
  with a growing ``revision`` and closes it (``final``) once the watermark passes
  ``end + grace`` — or, when the stream is idle, that watermark advanced by the wall-clock time
  since the last partial, so windows flush even if no event follows.

Lateness of an event against its partition's watermark ``wm`` before it (:meth:`WindowSpec.classify`):
a window is *closed* on the partition once ``end + grace <= wm`` and a closed window is never
changed. The event is ``too_late`` when every window holding it is closed (counted, added
nowhere, kept by the caller), ``within_grace`` when the earliest window holding it has ended
(``end <= wm``; it is added to those of its windows that are not closed), ``on_time`` otherwise.

Sliding windows: results *per slide* are hopping windows (``hop`` = the slide; it must divide
``size``), at the cost of ``size / hop`` window updates per event. Results *per event* (a window
``[t - size, t]`` ending at each event) are not offered: such a window is defined by one event but
holds events of every partition, so partials cannot be pre-aggregated per partition and merged
(stage 2 would need the raw events, i.e. a repartition of the stream by key plus a buffer of the
last ``size`` of events per key); a small ``hop`` is the cheap approximation.

Aggregations: ``count``, ``count(f)`` (non-null values), ``sum(f)``, ``min(f)``, ``max(f)``,
``avg(f)`` (merged sum / merged count of non-null values); nulls are skipped; ``min``/``max``/
``avg`` of a window without a value are None. Float sums are deterministic: within a partition
they are added in offset order (the only order stage 1 applies events in, re-deliveries being
skipped by offset), across partitions in partition order — the same bits for any delivery order.

>>> spec = parse_window("per_minute", {"size": "1m", "keys": ["shop"],
...                                    "aggregations": {"n": "count", "total": "sum(amount)"}})
>>> spec.size_ms, spec.hop_ms, spec.grace_ms, [a.fn for a in spec.aggregations]
(60000, 60000, 0, ['count', 'sum'])
>>> pw = PartitionWindows(spec)
>>> pw.add(0, {"shop": "a", "amount": 10.0}, event_time=61_000)
'on_time'
>>> pw.add(1, {"shop": "a", "amount": 5.0}, event_time=125_000)
'on_time'
>>> pw.add(2, {"shop": "a", "amount": 1.0}, event_time=62_000)  # window [60 s, 120 s) closed
'too_late'
>>> pw.windows["60000|a"], pw.watermark, pw.offset, pw.late
([60000, 'a', 1, 10.0], 125000, 2, {'too_late': 1})
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kappa.errors import ConfigError
from stream_processors.base import Message, State, dumps, loads
from stream_processors.dimensions import fill_gaps

__all__ = [
    "FUNCTIONS",
    "TICK",
    "Aggregation",
    "PartitionWindows",
    "WindowMerge",
    "WindowSpec",
    "WindowSpecError",
    "WindowTotal",
    "parse_duration",
    "parse_window",
]

FUNCTIONS = ("count", "sum", "min", "max", "avg")
"""Aggregation functions a window can declare; each merges across partitions exactly."""

TICK = b'{"tick":1}'
"""Value of the timer's idle-tick messages on a partials topic."""

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\(\s*([A-Za-z_][\w.]*)?\s*\))?\s*$")
_RESERVED = frozenset({"window_start", "revision", "final", "pipeline_version"})
_DECLARED = frozenset({"stream", "size", "hop", "grace", "keys", "aggregations"})


class WindowSpecError(ConfigError):
    """A window declaration is malformed; the message names the entry and what to write instead."""


def parse_duration(text: Any, where: str = "duration") -> int:
    """Milliseconds of a duration written ``<integer><unit>``, unit one of ms, s, m, h, d.

    >>> parse_duration("1m"), parse_duration("5m"), parse_duration("30s"), parse_duration("1h")
    (60000, 300000, 30000, 3600000)
    >>> try:
    ...     parse_duration("1 minute", "windows.w.size")
    ... except WindowSpecError as exc:
    ...     print(exc)
    windows.w.size: '1 minute' is not a duration (write e.g. "30s", "1m", "5m", "1h")
    """
    found = _DURATION.match(text) if isinstance(text, str) else None
    if found is None:
        raise WindowSpecError(f'{where}: {text!r} is not a duration (write e.g. "30s", "1m", "5m", "1h")')
    return int(found.group(1)) * _UNITS[found.group(2)]


@dataclass(frozen=True, slots=True)
class Aggregation:
    """One declared output value of a window: ``name = fn(field)``."""

    name: str
    fn: str
    field: str | None = None

    @classmethod
    def parse(cls, name: str, text: Any, where: str = "aggregations") -> Aggregation:
        """``Aggregation`` of a declaration such as ``"count"`` or ``"sum(amount)"``.

        >>> Aggregation.parse("revenue", "sum(amount)"), Aggregation.parse("orders", "count")
        (Aggregation(name='revenue', fn='sum', field='amount'), Aggregation(name='orders', fn='count', field=None))
        >>> try:
        ...     Aggregation.parse("p50", "median(amount)", "windows.w.p50")
        ... except WindowSpecError as exc:
        ...     print(exc)
        windows.w.p50: unknown function 'median' in 'median(amount)' (use count, sum(f), min(f), max(f) or avg(f))
        """
        found = _CALL.match(text) if isinstance(text, str) else None
        if found is None:
            raise WindowSpecError(f'{where}: {text!r} is not an aggregation (write e.g. "count" or "sum(price)")')
        fn, fld = found.group(1).lower(), found.group(2)
        if fn not in FUNCTIONS:
            raise WindowSpecError(f"{where}: unknown function {found.group(1)!r} in {text!r} "
                                  "(use count, sum(f), min(f), max(f) or avg(f))")
        if fn != "count" and not fld:
            raise WindowSpecError(f"{where}: {fn} needs a field, as in {fn}(price)")
        return cls(name, fn, fld or None)


@dataclass(frozen=True)
class WindowSpec:
    """What one window operator computes: sizes in ms, the key fields and the aggregations.

    ``slots`` is derived: the mergeable accumulators behind the aggregations, ``(op, field)``
    with op ``count``/``sum``/``min``/``max``; slot 0 always counts events (a window with a
    partial has at least one event).

    >>> WindowSpec("w", 300_000, 60_000, 0, ("site",), (Aggregation("mean", "avg", "value"),)).slots
    (('count', None), ('sum', 'value'), ('count', 'value'))
    >>> try:
    ...     WindowSpec("w", 300_000, 120_000, 0, (), ())
    ... except WindowSpecError as exc:
    ...     print(exc)
    windows.w: hop 2m does not divide size 5m (a window must hold a whole number of hops)
    """

    name: str
    size_ms: int
    hop_ms: int
    grace_ms: int
    keys: tuple[str, ...]
    aggregations: tuple[Aggregation, ...]
    stream: str | None = None
    slots: tuple[tuple[str, str | None], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"windows.{self.name}"
        if self.size_ms <= 0 or self.hop_ms <= 0:
            raise WindowSpecError(f"{where}: size and hop must be positive durations")
        if self.size_ms % self.hop_ms:
            raise WindowSpecError(f"{where}: hop {_fmt(self.hop_ms)} does not divide size "
                                  f"{_fmt(self.size_ms)} (a window must hold a whole number of hops)")
        if self.grace_ms < 0:
            raise WindowSpecError(f"{where}: grace must not be negative")
        names = [*self.keys, *(a.name for a in self.aggregations)]
        clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & _RESERVED))
        if clash:
            raise WindowSpecError(f"{where}: output name(s) {', '.join(clash)} used twice or reserved "
                                  f"({', '.join(sorted(_RESERVED))} are the window's own)")
        slots: list[tuple[str, str | None]] = [("count", None)]
        for agg in self.aggregations:
            wanted = {"avg": [("sum", agg.field), ("count", agg.field)]}.get(agg.fn, [(agg.fn, agg.field)])
            slots += [s for s in wanted if s not in slots]
        object.__setattr__(self, "slots", tuple(slots))

    def starts(self, event_time: int) -> range:
        """Starts (ascending) of the windows holding ``event_time``.

        >>> hop = WindowSpec("w", 300_000, 60_000, 0, (), ())
        >>> list(hop.starts(130_000)), list(hop.starts(-1))[-1]
        ([-120000, -60000, 0, 60000, 120000], -60000)
        """
        last = event_time - event_time % self.hop_ms
        return range(last - self.size_ms + self.hop_ms, last + 1, self.hop_ms)

    def key(self, start: int, values: Sequence[Any]) -> str:
        """Output key of a window: ``start|key1|key2...``."""
        return "|".join([str(start), *map(str, values)])

    def classify(self, event_time: int, watermark: int | None) -> str:
        """``on_time``, ``within_grace`` or ``too_late`` (module docstring) against the partition's
        watermark before the event.

        >>> tumbling = WindowSpec("w", 60_000, 60_000, 30_000, (), ())
        >>> [tumbling.classify(61_000, wm) for wm in (None, 119_999, 120_000, 149_999, 150_000)]
        ['on_time', 'on_time', 'within_grace', 'within_grace', 'too_late']
        >>> hopping = WindowSpec("w", 180_000, 60_000, 0, (), ())  # 61 s is in [0,180), [60,240)
        >>> [hopping.classify(61_000, wm) for wm in (119_999, 120_000, 239_999, 240_000)]
        ['on_time', 'within_grace', 'within_grace', 'too_late']
        """
        if watermark is None:
            return "on_time"
        last = event_time - event_time % self.hop_ms
        if last + self.size_ms + self.grace_ms <= watermark:
            return "too_late"
        if last + self.hop_ms <= watermark:
            return "within_grace"
        return "on_time"

    def values(self, slots: Sequence[Any]) -> dict[str, Any]:
        """The declared aggregations of a window's merged slots."""
        index = {s: i for i, s in enumerate(self.slots)}
        out: dict[str, Any] = {}
        for agg in self.aggregations:
            if agg.fn == "avg":
                n = slots[index["count", agg.field]]
                out[agg.name] = slots[index["sum", agg.field]] / n if n else None
            else:
                out[agg.name] = slots[index[agg.fn, agg.field]]
        return out


def _fmt(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    return f"{ms}ms"


def parse_window(name: str, table: Mapping[str, Any], grace_ms: int = 0) -> WindowSpec:
    """:class:`WindowSpec` of a ``[windows.<name>]`` declaration.

    ``hop`` defaults to ``size`` (tumbling); ``grace`` (a duration) to ``grace_ms``.

    >>> spec = parse_window("iot", {"stream": "readings", "size": "5m", "hop": "1m", "keys": ["site", "metric"],
    ...     "aggregations": {"n": "count", "mean": "avg(value)", "low": "min(value)", "high": "max(value)"}})
    >>> spec.size_ms, spec.hop_ms, spec.keys, spec.stream
    (300000, 60000, ('site', 'metric'), 'readings')
    >>> try:
    ...     parse_window("w", {"size": "1m", "aggregations": {"n": "count"}, "keys": "site"})
    ... except WindowSpecError as exc:
    ...     print(exc)
    windows.w.keys: write a list of field names, as in keys = ["region"]
    """
    where = f"windows.{name}"
    unknown = sorted(set(table) - _DECLARED)
    if unknown:
        raise WindowSpecError(f"{where}: unknown setting(s) {', '.join(unknown)} "
                              f"(a window declares {', '.join(sorted(_DECLARED))})")
    if "size" not in table:
        raise WindowSpecError(f'{where}: size is missing (write e.g. size = "1m")')
    size = parse_duration(table["size"], f"{where}.size")
    hop = parse_duration(table["hop"], f"{where}.hop") if "hop" in table else size
    grace = parse_duration(table["grace"], f"{where}.grace") if "grace" in table else grace_ms
    keys = table.get("keys", [])
    if not isinstance(keys, list | tuple) or not all(isinstance(k, str) and k for k in keys):
        raise WindowSpecError(f'{where}.keys: write a list of field names, as in keys = ["region"]')
    aggs = table.get("aggregations")
    if not isinstance(aggs, Mapping) or not aggs:
        raise WindowSpecError(f'{where}.aggregations: declare at least one, as in '
                              f'aggregations = {{ n = "count", total = "sum(price)" }}')
    stream = table.get("stream")
    return WindowSpec(name, size, hop, grace, tuple(keys),
                      tuple(Aggregation.parse(n, t, f"{where}.aggregations.{n}") for n, t in aggs.items()),
                      stream if isinstance(stream, str) else None)


def accumulate(acc: list[Any], base: int, slots: Sequence[tuple[str, str | None]],
               event: Mapping[str, Any], mark: tuple[int, int] | None = None) -> None:
    """Add one event to the slots of ``acc`` that start at index ``base``: the fold of windows
    and sessions alike. Nulls are skipped, except by ``first``/``last``, which keep
    ``[time, offset, value]`` of the earliest/latest event by ``mark`` = (event time, offset)."""
    for i, (op, fld) in enumerate(slots, base):
        if fld is None:
            acc[i] += 1
            continue
        v = event.get(fld)
        if op == "count":
            if v is not None:
                acc[i] += 1
        elif op == "sum":
            if v is not None:
                acc[i] += v
        elif op == "min":
            if v is not None and (acc[i] is None or v < acc[i]):
                acc[i] = v
        elif op == "max":
            if v is not None and (acc[i] is None or v > acc[i]):
                acc[i] = v
        else:  # first / last (sessions)
            assert mark is not None, op
            cur = acc[i]
            if cur is None or ((mark[0], mark[1]) < (cur[0], cur[1]) if op == "first"
                               else (mark[0], mark[1]) > (cur[0], cur[1])):
                acc[i] = [mark[0], mark[1], v]


def empty_slots(slots: Sequence[tuple[str, str | None]]) -> list[Any]:
    """The slots of an aggregate over no event: counts 0, sums 0.0, the rest None."""
    return [0 if op == "count" else 0.0 if op == "sum" else None for op, _ in slots]


@dataclass
class PartitionWindows:
    """Stage 1: one input partition's watermark, last applied offset and open window partials.

    ``windows`` maps window key -> ``[start, *key values, *slots]``; ``late`` counts the events
    that came within grace or too late. Events of a partition arrive in offset order, so
    ``offset`` (the last applied) is enough to skip a re-delivered event (:meth:`applied`).

    A batch is :meth:`observe` per event, then :meth:`end_batch`, which returns the partials of
    the windows the batch touched (re-delivered events included: their outputs may be lost).
    """

    spec: WindowSpec
    watermark: int | None = None
    offset: int = -1
    windows: dict[str, list[Any]] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)
    _touched: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    _begun: int = field(default=-1, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._begun = self.offset

    def applied(self, offset: int) -> bool:
        """True when the event at ``offset`` is already reflected in this state."""
        return offset <= self.offset

    def add(self, offset: int, event: Mapping[str, Any], event_time: int, kind: str | None = None) -> str:
        """Apply one first-seen event to every window holding it that is not closed here; return
        its lateness. ``kind`` forces the lateness decided the first time this event was seen
        (the caller's first-occurrence record), so a re-application keeps its original verdict."""
        values = [event[k] for k in self.spec.keys]
        return self._add(offset, event, event_time, kind, values, self._keys(event_time, values))

    def _keys(self, event_time: int, values: list[Any]) -> list[tuple[int, str]]:
        """(start, key) of every window holding ``event_time`` (:meth:`WindowSpec.key`, once)."""
        suffix = "|" + "|".join(map(str, values)) if values else ""
        return [(start, f"{start}{suffix}") for start in self.spec.starts(event_time)]

    def _add(self, offset: int, event: Mapping[str, Any], event_time: int, kind: str | None,
             values: list[Any], keys: list[tuple[int, str]]) -> str:
        spec = self.spec
        kind = kind or spec.classify(event_time, self.watermark)
        if kind != "too_late":
            wm, closing = self.watermark, spec.size_ms + spec.grace_ms
            for start, key in keys:
                if wm is not None and start + closing <= wm:
                    continue  # closed on this partition: never changed
                win = self.windows.get(key)
                if win is None:
                    win = self.windows[key] = [start, *values, *empty_slots(spec.slots)]
                accumulate(win, len(values) + 1, spec.slots, event)
        if kind != "on_time":
            self.late[kind] = self.late.get(kind, 0) + 1
        if self.watermark is None or event_time > self.watermark:
            self.watermark = event_time
        self.offset = max(self.offset, offset)
        return kind

    def holding(self, event: Mapping[str, Any], event_time: int) -> list[str]:
        """Keys of the windows in this state that hold the event."""
        values = [event[k] for k in self.spec.keys]
        keys = (self.spec.key(s, values) for s in self.spec.starts(event_time))
        return [k for k in keys if k in self.windows]

    def observe(self, offset: int, event: Mapping[str, Any], event_time: int,
                kind: str | None = None) -> tuple[str, bool]:
        """One event of the current batch, in offset order: applied unless already (re-delivery).
        Returns its lateness (``kind`` when given and already applied) and whether it is new here."""
        fresh = not self.applied(offset)
        values = [event[k] for k in self.spec.keys]
        keys = self._keys(event_time, values)
        if fresh:
            kind = self._add(offset, event, event_time, kind, values, keys)
        windows = self.windows
        self._touched.update(key for _, key in keys if key in windows)
        return kind or "on_time", fresh

    def end_batch(self, partition: int, last_offset: int | None) -> list[tuple[str, bytes]]:
        """Close the batch that ended at ``last_offset`` (None: it had no event): the partials of
        the windows it touched (sorted by key), then closed windows forgotten.

        Not pruned while only re-delivered events come back: windows they touched in the lost
        batch may come later in the replay and must still be there to be emitted again.
        """
        if last_offset is not None:
            self.offset = max(self.offset, last_offset)
        touched, nk = sorted(self._touched), len(self.spec.keys) + 1
        partials = [(key, dumps({"s": win[0], "k": win[1:nk], "p": partition, "a": win[nk:],
                                 "o": self.offset, "wm": self.watermark}))
                    for key in touched for win in (self.windows[key],)]
        if last_offset is not None and last_offset > self._begun:
            self.prune(keep=self._touched)
        self._touched = set()
        self._begun = self.offset
        return partials

    def prune(self, keep: Iterable[str] = ()) -> list[str]:
        """Forget partials of windows closed on this partition (except ``keep``); return their keys.

        Callers keep the windows their current batch touched: that batch's partials are not
        durable yet, and a re-delivery must still find the window to emit it again.
        """
        if self.watermark is None:
            return []
        keep = set(keep)
        closing = self.spec.size_ms + self.spec.grace_ms
        closed = [k for k, w in self.windows.items() if w[0] + closing <= self.watermark and k not in keep]
        for k in closed:
            del self.windows[k]
        return closed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"wm": self.watermark, "off": self.offset, "win": self.windows}
        if self.late:
            out["late"] = self.late
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, spec: WindowSpec) -> PartitionWindows:
        if not data:
            return cls(spec)
        return cls(spec, data["wm"], data["off"], data["win"], data.get("late", {}))


@dataclass
class WindowTotal:
    """Stage 2: the full value of one window, merged from the latest partial of every source partition.

    ``parts`` maps source partition -> ``[*slots, offset]``; a partial whose offset is not above
    the stored one is a re-delivery and changes nothing. ``revision`` grows with every emitted
    change, so the highest revision is the current value.

    >>> spec = WindowSpec("w", 60_000, 60_000, 0, ("shop",), (Aggregation("n", "count"),
    ...                   Aggregation("top", "max", "amount"), Aggregation("mean", "avg", "amount")))
    >>> w = WindowTotal(spec, 60_000, ["a"])
    >>> a, b = [2, 9.0, 30.0, 2], [1, 5.0, 5.0, 1]  # count, max, sum, count of amount
    >>> w.apply(0, a, offset=7), w.apply(1, b, offset=3), w.apply(0, a, offset=7)
    (True, True, False)
    >>> w.values(), w.revision
    ({'n': 3, 'top': 9.0, 'mean': 11.666666666666666}, 2)
    """

    spec: WindowSpec
    start: int
    keys: list[Any]
    parts: dict[str, list[Any]] = field(default_factory=dict)
    revision: int = 0
    final: bool = False
    at: int = -1
    """Offset (in the partials partition) of the batch that made the current revision: a batch
    re-delivered from offset ``o`` re-emits every window with ``at >= o``, whose output may
    have died with the worker that wrote this state (:class:`WindowMerge`)."""

    @property
    def end(self) -> int:
        return self.start + self.spec.size_ms

    @property
    def key(self) -> str:
        return self.spec.key(self.start, self.keys)

    def merged(self) -> list[Any]:
        """Every slot merged over the partitions, in partition order (deterministic float sums)."""
        parts = [self.parts[k] for k in sorted(self.parts, key=int)]
        out: list[Any] = []
        for i, (op, _) in enumerate(self.spec.slots):
            if op in ("count", "sum"):
                out.append(sum(p[i] for p in parts))
            else:
                present = [p[i] for p in parts if p[i] is not None]
                out.append((min if op == "min" else max)(present) if present else None)
        return out

    def values(self) -> dict[str, Any]:
        """The declared aggregations of the current value."""
        return self.spec.values(self.merged())

    def apply(self, partition: int, slots: list[Any], offset: int) -> bool:
        """Take a partial from ``partition``; True (and a new revision) when it changed the value."""
        key = str(partition)
        old = self.parts.get(key)
        if old is not None and offset <= old[-1]:
            return False
        self.parts[key] = [*slots, offset]
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
        """The output record: window start, key fields, aggregations, revision, final, version."""
        return {"window_start": self.start, **dict(zip(self.spec.keys, self.keys, strict=True)),
                **self.values(), "revision": self.revision, "final": self.final, "pipeline_version": version}

    def to_json(self) -> dict[str, Any]:
        return {"s": self.start, "k": self.keys, "p": self.parts, "r": self.revision, "f": self.final,
                "a": self.at}

    @classmethod
    def from_json(cls, d: dict[str, Any], spec: WindowSpec) -> WindowTotal:
        return cls(spec, d["s"], d["k"], d["p"], d["r"], d["f"], d.get("a", -1))


Upgrade = Callable[[dict[str, Any]], dict[str, Any]]
"""Rewrites a stored total or a partial of an earlier format into this module's (identity if current)."""


class WindowMerge:
    """Stage 2 over a partials topic: merges partials into totals, closes windows, re-emits on re-delivery.

    State per partials partition: ``w<key>`` a :class:`WindowTotal`, ``g`` the max partition
    watermark seen, ``q`` the last applied offset; in-memory only: the open window keys and when
    the partition last saw a partial (idle close).
    """

    def __init__(self, spec: WindowSpec, version: str, state: State, idle_s: float = 1.0,
                 clock: Callable[[], float] = time.time, upgrade: Upgrade | None = None) -> None:
        self.spec = spec
        self.version = version
        self.state = state
        self.idle_s = idle_s
        self.clock = clock
        self.upgrade = upgrade
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

    def merge(self, msgs: Sequence[Message],
              writes: dict[int, dict[bytes, bytes | None]]) -> list[tuple[str, dict[str, Any]]]:
        """Apply a batch of partials/ticks (state writes into ``writes``); return the record of every
        changed window, and of every window a re-delivered part of the batch made."""
        records: list[tuple[str, dict[str, Any]]] = []
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
            part_writes = writes.setdefault(p, {})
            self._partition(p, ms, part_writes, records, min(again) if again else None)
            part_writes[b"q"] = dumps(max(ms[-1].offset, -1 if done is None else done))
        return records

    def _load(self, raw: bytes | None) -> WindowTotal:
        d = loads(raw)
        return WindowTotal.from_json(self.upgrade(d) if self.upgrade else d, self.spec)

    def _partition(self, p: int, ms: list[Message], writes: dict[bytes, bytes | None],
                   records: list[tuple[str, dict[str, Any]]], redelivered_from: int | None = None) -> None:
        """Apply one partition's batch. ``redelivered_from``: the first offset of the batch the
        state already holds; every window whose current revision came from there on is emitted
        again (same revision: update-style, so the sink keeps one row), since the outputs of the
        batches that made them may be lost."""
        now = self.clock()
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
            if self.upgrade:
                part = self.upgrade(part)
            key = (m.key or b"").decode()
            tot = totals.get(key)
            if tot is None:
                found = self.state.get(p, b"w" + key.encode())
                tot = totals[key] = self._load(found) if found else WindowTotal(self.spec, part["s"], part["k"])
            if tot.apply(part["p"], part["a"], part["o"]):
                changed.add(key)
            if part["wm"] is not None and (wm is None or part["wm"] > wm):
                wm = part["wm"]
            self._last_seen[p] = now
        if wm is not None:
            effective = wm
            idle_for = now - self._last_seen.get(p, now)
            if ticked and idle_for >= self.idle_s:
                effective = wm + int(idle_for * 1000)
            grace = self.spec.grace_ms
            for key in sorted(open_keys | changed):
                tot = totals.get(key)
                if tot is None:
                    tot = totals[key] = self._load(self.state.get(p, b"w" + key.encode()))
                if not tot.final and tot.end + grace <= effective and tot.close():
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
                    if key not in totals:
                        totals[key] = self._load(v)
                    again.add(key)
        for key in sorted(again):
            records.append((key, totals[key].record(self.version)))
        for key in sorted(changed):
            tot = totals[key]
            writes[b"w" + key.encode()] = dumps(tot.to_json())
            records.append((key, tot.record(self.version)))
            if tot.final:
                open_keys.discard(key)
            else:
                open_keys.add(key)
