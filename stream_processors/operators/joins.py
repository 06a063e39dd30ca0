"""Interval join of two event-time streams on a key: ``right.time - left.time`` within ``[lower, upper]``.

Both streams are keyed by the join field with the same partition count (co-partitioned), so
partition ``p`` of each holds the same keys, and one :class:`PartitionJoin` per partition sees
both, each stream in its offset order, the two interleaved in any way.

A pair ``(l, r)`` of the same key joins when ``l.time + lower <= r.time <= l.time + upper``
(both bounds inclusive; ``lower`` may be negative: "around"). Each stream has its own watermark
(the max event time it has applied); an event is ``too_late`` when its time is more than
``grace`` behind its own stream's watermark: counted, joined with nothing, kept by the caller
with its late flag. Every other event is stored until no event of the other stream that is not
too late could join it:

- a left event expires when ``l.time + upper + grace < right watermark``;
- a right event expires when ``r.time - lower + grace < left watermark``.

So whichever of ``l`` and ``r`` comes second finds the other one stored, and the joined pairs
are exactly the pairs of events that are not too late: a function of each stream's log, not of
how the two were interleaved, batched or re-delivered. State is bounded by the interval plus
grace behind the other stream's progress (a stream that stops keeps the other's events until
it moves on, or the wall clock shows them, below).

Rows (update-style, keyed ``<left id>|<right id>``, ``<left id>|`` for an unmatched left):

- a pair: ``matched = true``, revision 1;
- ``how = "left"``: a left event that expires without a pair: ``matched = false``, revision 1.
  When its stream is idle, the wall clock may show that row earlier (:meth:`PartitionJoin.idle`);
  should a pair come after all, the row gets a tombstone (revision 2, ``retracted = true``).

Exactly-once rows under crashes: a batch's rows are kept in the state (``pending``, with the last
offset of each stream the batch held) until a later batch starts after one of them; a batch that
starts at or before it is a re-delivery and emits them again.

>>> spec = JoinSpec("conv", "views", "signups", "visitor", 0, 3_600_000, 0, "left",
...                 {"url": ("left", "url"), "plan": ("right", "plan")})
>>> j = PartitionJoin(spec)
>>> j.observe("left", 0, "v1", {"visitor": "a", "url": "/home"}, 1_000)
('on_time', True)
>>> j.observe("left", 1, "v2", {"visitor": "b", "url": "/blog"}, 2_000)
('on_time', True)
>>> j.observe("right", 0, "s1", {"visitor": "a", "plan": "pro"}, 60_000)
('on_time', True)
>>> j.observe("right", 1, "s2", {"visitor": "c", "plan": "free"}, 4_000_000)  # b's hour is over
('on_time', True)
>>> [(k, r["url"], r["plan"], r["matched"]) for k, r in j.end_batch().items()]
[('v1|s1', '/home', 'pro', True), ('v2|', '/blog', None, False)]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kappa.errors import ConfigError
from stream_processors.operators.windows import WindowSpecError, parse_duration

__all__ = ["SIDES", "JoinSpec", "JoinSpecError", "PartitionJoin", "join_spec", "parse_join"]

SIDES = ("left", "right")
_RESERVED = frozenset({"left_id", "right_id", "left_time", "right_time", "matched", "revision", "final",
                       "retracted", "pipeline_version"})
_DECLARED = frozenset({"left", "right", "on", "lower", "upper", "grace", "how", "fields"})


class JoinSpecError(ConfigError):
    """A join declaration is malformed; the message names the entry and what to write instead."""


@dataclass(frozen=True)
class JoinSpec:
    """One interval join: the two streams, the key, the interval and grace in ms, what it outputs.

    ``fields`` maps output field -> ``(side, field)``.

    >>> try:
    ...     JoinSpec("j", "a", "b", "k", 10, 5, 0, "inner", {})
    ... except JoinSpecError as exc:
    ...     print(exc)
    joins.j: lower 10ms is above upper 5ms (the interval is right.time - left.time in [lower, upper])
    """

    name: str
    left: str
    right: str
    on: str
    lower_ms: int
    upper_ms: int
    grace_ms: int
    how: str = "inner"
    fields: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"joins.{self.name}"
        if self.lower_ms > self.upper_ms:
            raise JoinSpecError(f"{where}: lower {self.lower_ms}ms is above upper {self.upper_ms}ms "
                                "(the interval is right.time - left.time in [lower, upper])")
        if self.grace_ms < 0:
            raise JoinSpecError(f"{where}: grace must not be negative")
        if self.how not in ("inner", "left"):
            raise JoinSpecError(f'{where}.how: {self.how!r} is not a join (write how = "inner" or how = "left")')
        bad = sorted(set(self.fields) & (_RESERVED | {self.on}))
        if bad:
            raise JoinSpecError(f"{where}.fields: output name(s) {', '.join(bad)} reserved "
                                f"({', '.join(sorted(_RESERVED))} and the key are the join's own)")
        for out, (side, _) in self.fields.items():
            if side not in SIDES:
                raise JoinSpecError(f"{where}.fields.{out}: side {side!r} is neither left nor right")

    def projection(self, side: str) -> tuple[tuple[str, str], ...]:
        """``(output field, event field)`` pairs taken from ``side``."""
        return tuple((out, f) for out, (s, f) in self.fields.items() if s == side)


def _signed(value: Any, where: str) -> int:
    """Milliseconds of a duration that may be negative: ``"-5m"``, ``"1h"``, ``"0s"``."""
    text = value.strip() if isinstance(value, str) else value
    sign = -1 if isinstance(text, str) and text.startswith("-") else 1
    try:
        return sign * parse_duration(text[1:] if sign < 0 else text, where)
    except WindowSpecError as exc:
        raise JoinSpecError(str(exc).replace('(write e.g.', '(write e.g. "-5m",')) from exc


def parse_join(name: str, table: Mapping[str, Any], grace_ms: int = 0) -> JoinSpec:
    """:class:`JoinSpec` of a ``[joins.<name>]`` declaration.

    ``fields`` maps output field -> ``"<stream>.<field>"`` (one of the two streams).

    >>> spec = parse_join("conversions", {"left": "page_views", "right": "signups", "on": "visitor_id",
    ...     "lower": "0s", "upper": "1h", "how": "left",
    ...     "fields": {"landing_url": "page_views.url", "plan": "signups.plan"}})
    >>> spec.lower_ms, spec.upper_ms, spec.grace_ms, spec.how, dict(spec.fields)
    (0, 3600000, 0, 'left', {'landing_url': ('left', 'url'), 'plan': ('right', 'plan')})
    >>> try:
    ...     parse_join("j", {"left": "a", "right": "b", "on": "k", "upper": "1h", "fields": {"x": "c.y"}})
    ... except JoinSpecError as exc:
    ...     print(exc)
    joins.j.fields.x: 'c.y' is not a field of a or b (write "<stream>.<field>", as in "a.y")
    """
    where = f"joins.{name}"
    unknown = sorted(set(table) - _DECLARED)
    if unknown:
        raise JoinSpecError(f"{where}: unknown setting(s) {', '.join(unknown)} "
                            f"(a join declares {', '.join(sorted(_DECLARED))})")
    for key in ("left", "right", "on"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise JoinSpecError(f'{where}.{key}: missing (a join declares left = "<stream>", '
                                'right = "<stream>", on = "<key field>")')
    left, right = table["left"], table["right"]
    if left == right:
        raise JoinSpecError(f"{where}: left and right are both {left!r} (join two different streams)")
    if "upper" not in table:
        raise JoinSpecError(f'{where}.upper: missing (how far after the left event a right one may be, '
                            'e.g. upper = "1h")')
    lower = _signed(table.get("lower", "0s"), f"{where}.lower")
    upper = _signed(table["upper"], f"{where}.upper")
    grace = parse_duration(table["grace"], f"{where}.grace") if "grace" in table else grace_ms
    raw = table.get("fields", {})
    if not isinstance(raw, Mapping):
        raise JoinSpecError(f'{where}.fields: write a table, as in fields = {{ tier = "{right}.tier" }}')
    fields: dict[str, tuple[str, str]] = {}
    for out, ref in raw.items():
        stream, _, fld = ref.partition(".") if isinstance(ref, str) else ("", "", "")
        if stream not in (left, right) or not fld:
            raise JoinSpecError(f'{where}.fields.{out}: {ref!r} is not a field of {left} or {right} '
                                f'(write "<stream>.<field>", as in "{left}.{fld or out}")')
        fields[out] = ("left" if stream == left else "right", fld)
    how = table.get("how", "inner")
    return JoinSpec(name, left, right, table["on"], lower, upper, grace, how if isinstance(how, str) else repr(how),
                    fields)


def join_spec(decl: Any, grace_ms: int) -> JoinSpec:
    """The spec of a loaded ``[joins.<name>]`` (:class:`kappa.pipeline.definition.Join`); ``grace_ms``
    when it declares no grace."""
    fields = {out: ("left" if ref.partition(".")[0] == decl.left else "right", ref.partition(".")[2])
              for out, ref in decl.fields.items()}
    return JoinSpec(decl.name, decl.left, decl.right, decl.on, decl.lower_ms, decl.upper_ms,
                    grace_ms if decl.grace_ms is None else decl.grace_ms, decl.how, fields)


Stored = list[Any]
"""A stored event: ``[time, offset, id, [projected values], key value, matched, shown]`` (the last two:
left only)."""


@dataclass
class PartitionJoin:
    """One partition's two watermarks and applied offsets, the stored events by key, unflushed rows.

    ``store[side]`` maps key -> stored events (:data:`Stored`, in arrival order); ``pending`` maps
    output key -> ``[{side: last offset of the batch}, row]``. A batch is :meth:`observe` per
    event (each stream in its offset order), then :meth:`end_batch`.
    """

    spec: JoinSpec
    watermark: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(SIDES))
    offset: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, -1))
    store: dict[str, dict[str, list[Stored]]] = field(default_factory=lambda: {s: {} for s in SIDES})
    pending: dict[str, list[Any]] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)
    seen: float | None = field(default=None, compare=False)
    """Wall-clock time of the last batch (in memory only: decides when an unmatched row is shown)."""
    _rows: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _begun: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "data": self.to_json()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(PartitionJoin.from_json(state["data"], state["spec"]).__dict__)

    def classify(self, side: str, event_time: int) -> str:
        """``on_time``, ``within_grace`` (behind its stream's watermark by at most ``grace``) or ``too_late``.

        >>> j = PartitionJoin(JoinSpec("j", "a", "b", "k", 0, 10, 5))
        >>> _ = j.observe("left", 0, "x", {"k": 1}, 100)
        >>> j.classify("left", 100), j.classify("left", 95), j.classify("left", 94), j.classify("right", 0)
        ('on_time', 'within_grace', 'too_late', 'on_time')
        """
        wm = self.watermark[side]
        if wm is None or event_time >= wm:
            return "on_time"
        return "too_late" if event_time < wm - self.spec.grace_ms else "within_grace"

    def observe(self, side: str, offset: int, ident: str, event: Mapping[str, Any], event_time: int,
                kind: str | None = None) -> tuple[str, bool]:
        """One event of ``side`` (``left``/``right``) in that stream's offset order, ``ident`` its id
        in the output keys: applied unless already (re-delivery). Returns its lateness (``kind``
        when given and already applied) and whether it is new here."""
        if side not in self._begun:
            self._begin(side, offset)
        self._begun[side] = max(self._begun[side], offset)
        if offset <= self.offset[side]:
            return kind or "on_time", False
        kind = self.classify(side, event_time)
        if kind != "too_late":
            self._apply(side, offset, ident, event, event_time)
        if kind != "on_time":
            self.late[f"{side}_{kind}"] = self.late.get(f"{side}_{kind}", 0) + 1
        wm = self.watermark[side]
        if wm is None or event_time > wm:
            self.watermark[side] = event_time
        self.offset[side] = offset
        return kind, True

    def _begin(self, side: str, first: int) -> None:
        """The batch's first event of ``side`` is at ``first``: rows of batches whose events of that
        stream ended before it were flushed (forgotten); those ending at or after it may be lost."""
        self._begun[side] = first
        for key, (at, row) in list(self.pending.items()):
            if side not in at:
                continue
            if at[side] < first:
                del self.pending[key]
            elif key not in self._rows:
                self._rows[key] = row

    def _apply(self, side: str, offset: int, ident: str, event: Mapping[str, Any], t: int) -> None:
        spec = self.spec
        key = str(event[spec.on])
        values = [event.get(f) for _, f in spec.projection(side)]
        mine: Stored = [t, offset, ident, values, event[spec.on]] + ([False, False] if side == "left" else [])
        if side == "left":
            lo, hi = t + spec.lower_ms, t + spec.upper_ms
            for r in self.store["right"].get(key, ()):
                if lo <= r[0] <= hi:
                    mine[5] = True
                    self._pair(mine, r)
        else:
            lo, hi = t - spec.upper_ms, t - spec.lower_ms
            for left in self.store["left"].get(key, ()):
                if lo <= left[0] <= hi:
                    if left[6] and not left[5]:  # shown unmatched by the wall clock: retract that row
                        self._emit(f"{left[2]}|", self._row(left, None, revision=2, retracted=True))
                    left[5] = True
                    self._pair(left, mine)
        self.store[side].setdefault(key, []).append(mine)

    def _pair(self, left: Stored, right: Stored) -> None:
        self._emit(f"{left[2]}|{right[2]}", self._row(left, right, revision=1))

    def _row(self, left: Stored, right: Stored | None, *, revision: int, retracted: bool = False) -> dict[str, Any]:
        spec = self.spec
        row: dict[str, Any] = {spec.on: left[4], "left_id": left[2], "right_id": None if right is None else right[2],
                               "left_time": left[0], "right_time": None if right is None else right[0]}
        row.update(zip((o for o, _ in spec.projection("left")), left[3], strict=True))
        names = [o for o, _ in spec.projection("right")]
        row.update(zip(names, right[3], strict=True) if right is not None else dict.fromkeys(names))
        row.update(matched=right is not None, revision=revision, final=True, retracted=retracted)
        return row

    def _emit(self, key: str, row: dict[str, Any]) -> None:
        self._rows[key] = row

    def end_batch(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Close the batch: expire stored events no event to come can join (a left one without a
        pair gives its unmatched row in a left join) and return the rows to emit by output key (in
        key order), re-emitted rows of a re-delivered batch included."""
        if now is not None:
            self.seen = now
        spec, wm = self.spec, self.watermark
        if wm["right"] is not None:
            for key in list(self.store["left"]):
                kept = []
                for left in self.store["left"][key]:
                    if left[0] + spec.upper_ms + spec.grace_ms < wm["right"]:
                        if spec.how == "left" and not left[5]:
                            self._emit(f"{left[2]}|", self._row(left, None, revision=1))
                    else:
                        kept.append(left)
                self._keep("left", key, kept)
        if wm["left"] is not None:
            for key in list(self.store["right"]):
                self._keep("right", key, [r for r in self.store["right"][key]
                                          if r[0] - spec.lower_ms + spec.grace_ms >= wm["left"]])
        rows = {k: self._rows[k] for k in sorted(self._rows)}
        at = {side: self.offset[side] for side in self._begun}
        for k, row in rows.items():
            old = self.pending.get(k)
            tags = dict(at) if old is None or old[1] is not row else {**old[0], **at}
            self.pending[k] = [tags, row]
        self._rows, self._begun = {}, {}
        return rows

    def _keep(self, side: str, key: str, kept: list[Stored]) -> None:
        if kept:
            self.store[side][key] = kept
        else:
            del self.store[side][key]

    def idle(self, now: float, idle_s: float) -> dict[str, dict[str, Any]]:
        """``how = "left"``: the unmatched rows of stored left events that would expire were the
        right stream's watermark the greater of both advanced by the time since the last batch
        (at least ``idle_s``). Each is marked shown, in the state: write it after this call."""
        if self.seen is None:
            self.seen = now
        idle_for = now - self.seen
        marks = [w for w in self.watermark.values() if w is not None]
        if self.spec.how != "left" or not marks or idle_for < idle_s:
            return {}
        effective = max(marks) + int(idle_for * 1000)
        reach = self.spec.upper_ms + self.spec.grace_ms
        out = {}
        for key in sorted(self.store["left"]):
            for left in self.store["left"][key]:
                if not left[5] and not left[6] and left[0] + reach < effective:
                    left[6] = True
                    out[f"{left[2]}|"] = self._row(left, None, revision=1)
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"wm": self.watermark, "off": self.offset, "store": self.store}
        if self.pending:
            out["pending"] = self.pending
        if self.late:
            out["late"] = self.late
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, spec: JoinSpec) -> PartitionJoin:
        if not data:
            return cls(spec)
        return cls(spec, data["wm"], data["off"], data["store"], data.get("pending", {}), data.get("late", {}))
