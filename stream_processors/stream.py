"""The stream stage: validate -> DLQ, dedupe, enrich as of time, window partials — per batch.

One stage runs per stream input of a pipeline (:mod:`kappa.pipeline`), over that stream and
the table its enrichment joins (``[enrich.<stream>]``): both are keyed by the join field with
the same partition count, so partition ``p`` of each holds the same keys; the stage keeps per
partition ``p`` (in state partition ``p``):

- ``u<key>``: recent versions of the table row (:class:`~stream_processors.operators.asof.AsOf`:
  an event joins the version valid at its event time among those in the log before it);
- ``j``: the greatest record timestamp of an applied stream event (with ``p``'s watermark, how
  far table versions are still needed);
- ``d<id>``: first occurrence ``[partition, offset, lateness, event_time]``
  (:class:`~stream_processors.operators.dedupe.Dedupe`);
- ``S<session>``: the partition's sessions of the stream's ``[sessions.<name>]``
  (:class:`~stream_processors.operators.sessions.PartitionSessions`), before ``p``;
- ``p``: the partition's watermark, last applied offset and open window partials
  (:class:`~stream_processors.operators.windows.PartitionWindows`), written last in each batch.

An event's lateness (its ``late`` flag: too late) is the worst verdict of the stream's window and
session, decided at its first occurrence and kept with it. Sessions' rows go out under the
session's name (:attr:`~stream_processors.base.Emitted.rows`); on a ticks message for partition
``p`` (the app's timer, when the wall clock would close sessions of an idle partition) the
stage emits those sessions ``final`` without changing what they hold.

Re-delivery after a crash is recognised, not mistaken for a duplicate: the same
(partition, offset) as the stored first occurrence is the same event, so it is emitted again
with its original lateness, and its window contribution is skipped when ``p`` already has it.
Hence at-least-once delivery gives exact final per-key results.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from kappa.errors import RegistryUnavailable
from kappa.metrics import CONSUMED, DUPLICATES, LATE_EVENTS, REJECTED
from kappa.pipeline import Pipeline, PipelineError
from schemas.rules import Validator, for_input, reason_code
from schemas.serde import DecodeError, Decoder, schema_text
from stream_processors.base import Emitted, Message, State, dumps, loads, record_ms
from stream_processors.dimensions import fill_gaps
from stream_processors.operators.asof import AsOf
from stream_processors.operators.dedupe import Dedupe
from stream_processors.operators.sessions import PartitionSessions, SessionSpec, session_spec
from stream_processors.operators.windows import Aggregation, PartitionWindows, WindowSpec

__all__ = ["LINEAGE_FIELDS", "MAX_PAYLOAD", "StreamStage", "rejection"]

LINEAGE_FIELDS = ("late", "source_topic", "source_partition", "source_offset", "pipeline_version")
"""Fields the stage adds to every output record of a stream."""
MAX_PAYLOAD = 900_000
"""Raw payloads above this are cut in the DLQ envelope so it still fits a 1 MB Kafka message."""


def rejection(msg: Message, reason: str, now_ms: int) -> dict[str, Any]:
    """RejectedEvent envelope of ``msg`` (stage ``processor``, source ``topic/partition/offset``).

    ``rejected_at`` is the record's own Kafka timestamp when it has one (``now_ms`` otherwise),
    so a replay rejects it with the same row.

    >>> r = rejection(Message("orders", 1, 7, None, b"x", 2.5), "bad_amount: -1", 5)
    >>> r["source"], r["reason"], r["payload"], r["stage"], r["rejected_at"]
    ('orders/1/7', 'bad_amount: -1', b'x', 'processor', 2500)
    >>> rejection(Message("orders", 1, 7, None, b"x"), "bad_amount: -1", 5)["rejected_at"]
    5
    """
    payload = msg.value or b""
    if len(payload) > MAX_PAYLOAD:
        reason = f"{reason} (payload of {len(payload)} bytes cut to {MAX_PAYLOAD})"
        payload = payload[:MAX_PAYLOAD]
    return {"source": f"{msg.topic}/{msg.partition}/{msg.offset}", "topic": msg.topic,
            "reason": reason, "payload": payload, "rejected_at": _or(record_ms(msg), now_ms),
            "stage": "processor"}


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


_SEVERITY = {"on_time": 0, "within_grace": 1, "too_late": 2}
_MISSING = object()
_NO_WINDOW = WindowSpec("none", 60_000, 60_000, 0, (), ())
"""The spec of ``p`` for a stream without a window: its watermark and last offset only."""


class _View:
    """One state partition as a batch sees it: its pending writes over the store, values parsed once.

    Each key is read (multi-get) and parsed at most once per batch, and a write keeps its parsed
    value, so later reads in the same batch cost a dict lookup.
    """

    __slots__ = ("p", "parsed", "state", "writes")

    def __init__(self, p: int, writes: dict[bytes, bytes | None], state: State) -> None:
        self.p = p
        self.writes = writes
        self.parsed: dict[bytes, Any] = {}
        self.state = state

    def prefetch(self, keys: list[bytes]) -> None:
        """Read every key not seen yet in one round trip (``get_many`` when the state has it)."""
        parsed, writes = self.parsed, self.writes
        want = [k for k in dict.fromkeys(keys) if k not in parsed and k not in writes]
        if not want:
            return
        get_many = getattr(self.state, "get_many", None)
        values = (get_many(self.p, want) if get_many is not None
                  else [self.state.get(self.p, k) for k in want])
        for key, raw in zip(want, values, strict=True):
            parsed[key] = None if raw is None else loads(raw)

    def get(self, key: bytes) -> Any:
        value = self.parsed.get(key, _MISSING)
        if value is _MISSING:
            raw = self.writes[key] if key in self.writes else self.state.get(self.p, key)
            value = self.parsed[key] = loads(raw)
        return value

    def put(self, key: bytes, value: Any, raw: bytes | None = None) -> None:
        self.parsed[key] = value
        self.writes[key] = dumps(value) if raw is None else raw


class StreamStage:
    """Validate, dedupe, enrich and pre-aggregate one batch of a stream (and its table's) messages."""

    def __init__(self, version: str, pipeline: Pipeline, stream: str, decoders: dict[str, Decoder],
                 state: State, grace_ms: int, *, prefix: str = "", clock: Callable[[], float] = time.time,
                 registry_retry_s: float = 2.0, value_maps: dict[str, dict[str, str]] | None = None,
                 validators: dict[str, Validator] | None = None) -> None:
        """``decoders``: by input name (the stream's and its table's); ``value_maps``: field ->
        {value: replacement} applied to valid events (a per-version transformation knob)."""
        self.version = version
        self.pipeline = pipeline
        self.input = pipeline.input(stream)
        self.stream_topic = prefix + stream
        self.state = state
        self.grace_ms = grace_ms
        self.clock = clock
        self.registry_retry_s = registry_retry_s
        self.value_maps = {f: m for f, m in (value_maps or {}).items() if m and self.input.schema.field(f)}
        validators = validators or {}
        self.decoder = decoders[stream]
        self.validate = validators.get(stream) or for_input(stream, pipeline)
        self.dedupe = Dedupe(self.input.dedupe_retention_ms) if self.input.id else None
        enrich = pipeline.enrich.get(stream)
        self.table_topic: str | None = None
        self.asof: AsOf | None = None
        if enrich is not None:
            table = pipeline.input(enrich.table)
            self.table_topic = prefix + table.name
            self.table_key = enrich.on
            self.table_decoder = decoders[table.name]
            self.validate_table = validators.get(table.name) or for_input(table.name, pipeline)
            self.asof = AsOf(table.time or "", enrich.fields, self.input.dedupe_retention_ms)
        self.time = self.input.time
        windows = [w for w in pipeline.windows.values() if w.stream == stream]
        self.window = self._window_spec(windows)
        self.session = self._session_spec()
        self.session_key = b"S" + self.session.name.encode() if self.session else b""
        self.ticks_topic: str | None = None
        """Topic of this agent's idle ticks (partition p: show what the wall clock closes on p)."""
        self.idle_s = 1.0
        self.partitions = 0
        """Partition count of the stream: a worker that starts with nothing to read ticks each once,
        so the sessions it restores are shown final when the wall clock closes them."""
        self._primed: set[int] = set()
        self._idle: dict[int, tuple[float | None, set[str], PartitionSessions | None]] = {}
        self.defaults = self._defaults(enrich.schema if enrich else None)
        self.table_source: Callable[..., list[Message]] | None = None
        """Reads the table's partition p from an offset to its end (stream_processors.dimensions)."""
        self.stream_source: Callable[..., list[Message]] | None = None
        """Reads the stream's partition p from an offset up to another: the offsets Faust skipped."""
        self._table_next: dict[int, int] = {}
        self._views: dict[int, _View] = {}

    def _window_spec(self, windows: list[Any]) -> WindowSpec | None:
        """The generic window operator's spec of the stream's window (one per stream for now)."""
        if not windows:
            return None
        w = windows[0]
        if len(windows) > 1:
            raise PipelineError(f"{self.pipeline.path}: [windows.{w.name}] this Kappa version runs one "
                                "window per stream")
        where = f"{self.pipeline.path}: windows.{w.name}.aggregations"
        aggs = tuple(Aggregation.parse(n, t, f"{where}.{n}") for n, t in w.aggregations.items())
        return WindowSpec(w.name, w.size_ms, w.hop_ms, self.grace_ms if w.grace_ms is None else w.grace_ms,
                          tuple(w.keys), aggs, w.stream)

    def _session_spec(self) -> SessionSpec | None:
        """The session operator's spec of the stream's ``[sessions.<name>]`` (one per stream)."""
        found = [se for se in self.pipeline.sessions.values() if se.stream == self.input.name]
        if len(found) > 1:
            raise PipelineError(f"{self.pipeline.path}: [sessions.{found[1].name}] this Kappa version runs one "
                                "session per stream")
        return session_spec(found[0], self.grace_ms) if found else None

    def _sessions(self, p: int, view: _View) -> PartitionSessions:
        """Partition ``p``'s sessions from the state, with what only memory holds (wall clock of
        the last batch, rows shown final by an idle tick)."""
        assert self.session is not None
        sess = PartitionSessions.from_json(view.get(self.session_key), self.session)
        seen, shown, _ = self._idle.get(p, (None, set(), None))
        sess.seen, sess._shown = seen, shown
        return sess

    def due(self, now: float) -> list[int]:
        """Partitions whose sessions an idle tick would show final now (the app's timer ticks them)."""
        out = [p for p in range(self.partitions) if p not in self._idle and p not in self._primed]
        self._primed.update(out)
        for p, (seen, shown, sess) in self._idle.items():
            if sess is None or seen is None or sess.watermark is None or now - seen < self.idle_s:
                continue
            spec, effective = sess.spec, sess.watermark + int((now - seen) * 1000)
            closing = spec.gap_ms + spec.grace_ms
            if any(s[1] + closing <= effective and f"{key}|{s[0]}" not in shown
                   for key, (_, sessions) in sess.open.items() for s in sessions):
                out.append(p)
        return out

    def _windows(self) -> WindowSpec:
        """The window spec (a stream without a window keeps only its watermark and offset in ``p``)."""
        return self.window or _NO_WINDOW

    def _defaults(self, schema_name: str | None) -> dict[str, Any]:
        """Fields of the declared output schema that neither the stream, the enrichment nor the
        stage fills: their Avro defaults (e.g. a model's score, filled by the model later)."""
        if schema_name is None:
            return {}
        own = {*self.input.schema.names, *(self.asof.outputs if self.asof else ()), *LINEAGE_FIELDS}
        return {f["name"]: f.get("default") for f in json.loads(schema_text(schema_name))["fields"]
                if f["name"] not in own}

    def process(self, msgs: Sequence[Message]) -> Emitted:
        """One batch in, everything it emits out (table records of a batch are applied before its events)."""
        now_ms = int(self.clock() * 1000)
        out = Emitted()
        self._views = {}
        table: dict[int, list[Message]] = defaultdict(list)
        events: dict[int, list[Message]] = defaultdict(list)
        ticked: set[int] = set()
        for m in msgs:
            if m.topic == self.stream_topic:
                events[m.partition].append(m)
            elif m.topic == self.table_topic:
                table[m.partition].append(m)
            elif m.topic == self.ticks_topic:
                ticked.add(m.partition)
        for p, ms in table.items():
            CONSUMED.labels(self.table_topic).inc(len(ms))
            self._table(p, ms, now_ms, out)
        for p, ms in events.items():
            if self.table_source is not None:  # every table record published so far, before the join
                missing = self.table_source(p, self._table_next.get(p, 0))
                if missing:
                    self._table(p, missing, now_ms, out, reject=False)
            ms.sort(key=lambda m: m.offset)
            if self.stream_source is not None:
                applied = PartitionWindows.from_json(self._view(p, out).get(b"p"), self._windows()).offset
                ms = fill_gaps(ms, applied, self.stream_source, self.stream_topic)
            CONSUMED.labels(self.stream_topic).inc(len(ms))
            self._events(p, ms, now_ms, out)
        if self.session is not None:
            for p in sorted(ticked - set(events)):
                self._tick(p, out)
        self._views = {}
        return out

    def _tick(self, p: int, out: Emitted) -> None:
        """An idle tick of partition ``p``: the sessions the wall clock closes, shown final."""
        assert self.session is not None
        sess = self._sessions(p, self._view(p, out))
        rows = sess.idle(self.clock(), self.idle_s)
        self._idle[p] = (sess.seen, sess._shown, sess)
        if rows:
            out.rows.setdefault(self.session.name, []).extend(
                (k, {**r, "pipeline_version": self.version}) for k, r in rows.items())

    # -- helpers ------------------------------------------------------------------------------
    def _decode(self, decoder: Decoder, ms: list[Message], now_ms: int,
                out: Emitted) -> list[tuple[Message, dict[str, Any]]]:
        """Decode a partition's batch in bulk; undecodable messages go to the DLQ."""
        while True:
            try:
                decoded = decoder.decode_many([m.value or b"" for m in ms])
                break
            except RegistryUnavailable:
                # Not bad input: the registry is down. Wait for it rather than reject good data.
                time.sleep(self.registry_retry_s)
        good = []
        for m, rec in zip(ms, decoded, strict=True):
            if isinstance(rec, DecodeError):
                self._reject(m, f"undecodable: {rec.reason}", now_ms, out)
            else:
                good.append((m, rec))
        return good

    def _reject(self, msg: Message, reason: str, now_ms: int, out: Emitted) -> None:
        out.rejected.append(rejection(msg, reason, now_ms))
        REJECTED.labels("processor", msg.topic, reason_code(reason)).inc()

    def _view(self, p: int, out: Emitted) -> _View:
        view = self._views.get(p)
        if view is None:
            view = self._views[p] = _View(p, out.writes.setdefault(p, {}), self.state)
        return view

    def _table(self, p: int, ms: list[Message], now_ms: int, out: Emitted, reject: bool = True) -> None:
        """Upsert table versions; ``reject=False`` (catch-up reads) skips bad records silently,
        since the stream delivers the same records later and rejects them once, there."""
        assert self.asof is not None
        if ms:
            self._table_next[p] = max(self._table_next.get(p, 0), max(m.offset for m in ms) + 1)
        view = self._view(p, out)
        good = []
        if reject:
            decoded = self._decode(self.table_decoder, ms, now_ms, out)
        else:
            decoded = [(m, rec) for m, rec in zip(ms, self.table_decoder.decode_many([m.value or b"" for m in ms]),
                                                   strict=True) if isinstance(rec, dict)]
        validate = self.validate_table
        for m, rec in decoded:
            reason = validate(rec, record_ms(m))
            if reason:
                if reject:
                    self._reject(m, reason, now_ms, out)
            else:
                good.append((m, rec))
        on = self.table_key
        keys = [b"u" + str(rec[on]).encode() for _, rec in good]
        view.prefetch(keys)
        horizon = self._join_horizon(view)
        upsert = self.asof.upsert
        for key, (m, rec) in zip(keys, good, strict=True):
            view.put(key, upsert(view.get(key) or [], rec, record_ms(m), horizon))

    @staticmethod
    def _join_horizon(view: _View) -> tuple[int, int] | None:
        """(event time, record time) the stream of this partition has reached: ``b"p"``'s
        watermark and ``b"j"``, the greatest record timestamp of an applied event (AsOf.upsert)."""
        prog, logged = view.get(b"p"), view.get(b"j")
        if not prog or prog.get("wm") is None or logged is None:
            return None
        return int(prog["wm"]), int(logged)

    def _events(self, p: int, ms: list[Message], now_ms: int, out: Emitted) -> None:
        view = self._view(p, out)
        writes, get = view.writes, view.get
        prog = PartitionWindows.from_json(get(b"p"), self._windows())
        valid = []
        reject, value_maps, validate = self._reject, self.value_maps, self.validate
        dedupe, ident = self.dedupe, self.input.id
        for m, rec in self._decode(self.decoder, ms, now_ms, out):
            reason = validate(rec, record_ms(m))
            if reason:
                reject(m, reason, now_ms, out)
                continue
            for f, mapping in value_maps.items():  # the input's declared value maps
                rec[f] = mapping.get(rec[f], rec[f])
            valid.append((m, rec, dedupe.key(rec[ident]) if dedupe and ident else None))
        # one multi-get per partition and batch for every dedupe id and table key it needs
        if dedupe is not None:
            view.prefetch([d for _, _, d in valid])  # type: ignore[misc]
        asof, on = self.asof, self.table_key if self.asof else ""
        if asof is not None:
            view.prefetch([b"u" + str(rec[on]).encode() for _, rec, _ in valid])
        enriched = out.enriched.append
        topic, version, etime, defaults = self.stream_topic, self.version, self.time or "", self.defaults
        window, session = self.window, self.session
        sess = self._sessions(p, view) if session is not None else None
        logged_before = get(b"j")
        max_logged = -1 if logged_before is None else logged_before
        for m, rec, dkey in valid:
            offset = m.offset
            kind: str | None = None
            first = None
            if dkey is not None:
                first = get(dkey)
                verdict = Dedupe.verdict(first, p, offset)
                if verdict is None:
                    DUPLICATES.labels(self.input.name).inc()
                    continue
                if verdict != "new":
                    kind = verdict  # the same event again (re-delivery): keep its verdict
            et = rec[etime] if etime else record_ms(m) or 0
            logged = record_ms(m)
            if logged is not None and logged > max_logged:
                max_logged = logged
            if asof is not None:  # before the window: it may be keyed by an enriched field
                # bitemporal: valid at the event time and in the log before this event
                rec.update(asof.as_of(get(b"u" + str(rec[on]).encode()) or [], et, logged) or asof.null)
            verdict_w = verdict_s = "on_time"
            if window is not None:
                verdict_w, fresh = prog.observe(offset, rec, et, kind if sess is None else None)
                if fresh and verdict_w != "on_time":
                    LATE_EVENTS.labels(verdict_w, self.input.name).inc()
            else:
                prog.offset = max(prog.offset, offset)
                if prog.watermark is None or et > prog.watermark:
                    prog.watermark = et
            if sess is not None:
                verdict_s, fresh = sess.observe(offset, rec, et, kind)
                if fresh and verdict_s != "on_time":
                    LATE_EVENTS.labels(verdict_s, self.input.name).inc()
            kind = kind or max(verdict_w, verdict_s, key=_SEVERITY.__getitem__)
            if dkey is not None and first is None:
                value, raw = Dedupe.first(p, offset, kind, et)
                view.put(dkey, value, raw)
            if defaults:
                rec.update(defaults)
            rec["late"] = kind == "too_late"
            rec["source_topic"] = topic
            rec["source_partition"] = p
            rec["source_offset"] = offset
            rec["pipeline_version"] = version
            enriched((str(rec[ident]) if ident else f"{p}/{offset}", rec))
        out.partials.extend(prog.end_batch(p, ms[-1].offset if ms else None))
        if sess is not None and session is not None:
            rows = sess.end_batch(ms[-1].offset if ms else None, self.clock())
            self._idle[p] = (sess.seen, sess._shown, sess)
            if rows:
                out.rows.setdefault(session.name, []).extend(
                    (k, {**r, "pipeline_version": version}) for k, r in rows.items())
            view.put(self.session_key, sess.to_json())
        if dedupe is not None:
            dedupe.sweep(self.state, p, prog.watermark, writes, get)
        if max_logged >= 0 and max_logged != logged_before:
            view.put(b"j", max_logged)
        writes.pop(b"p", None)
        writes[b"p"] = dumps(prog.to_json())  # last: the changelog holds it after its dedupe keys
