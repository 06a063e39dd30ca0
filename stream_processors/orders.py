"""Stage 1 over ``users`` + ``orders``: validate -> DLQ, dedupe, enrich, window partials — per batch.

Both topics are keyed by user_id with the same partition count, so partition ``p`` of each
holds the same users; one stage instance sees both and keeps per partition ``p`` (in state
partition ``p``):

- ``u<user_id>``: recent profile versions with their record timestamps (:mod:`stream_processors.users`:
  an order joins the version valid at its event time among those in the log before it);
- ``j``: the greatest record timestamp of an applied order (with ``p``'s watermark, how far
  user versions are still needed);
- ``d<order_id>``: first occurrence ``[partition, offset, lateness, event_time]`` (dedupe);
- ``p``: the partition's watermark, last applied offset and open window partials
  (:class:`~stream_processors.operators.windows.PartitionWindows` of the revenue windows,
  :mod:`stream_processors.windows`), written last in each batch.

Re-delivery after a crash is recognised, not mistaken for a duplicate: the same
(partition, offset) as the stored first occurrence is the same event, so it is emitted again
with its original lateness, and its window contribution is skipped when ``p`` already has it.
Hence at-least-once delivery gives exact final per-key results.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from kappa.errors import RegistryUnavailable
from kappa.metrics import CONSUMED, DUPLICATES, LATE_EVENTS, REJECTED
from schemas.rules import reason_code, validate_order, validate_user
from schemas.serde import DecodeError, Decoder
from stream_processors.base import Emitted, Message, State, dumps, loads, record_ms
from stream_processors.dimensions import fill_gaps
from stream_processors.operators.windows import PartitionWindows
from stream_processors.users import NULL_USER, as_of, upsert
from stream_processors.windows import revenue_spec

__all__ = ["DEDUPE_RETENTION_MS", "MAX_PAYLOAD", "OrderStage", "rejection"]

DEDUPE_RETENTION_MS = 24 * 3600 * 1000
"""Order ids are remembered for at least this much event time (the contract says >= 24 h)."""
_SWEEP_EVERY_MS = 3600 * 1000
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


_MISSING = object()


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


class OrderStage:
    """Validate, dedupe, enrich and pre-aggregate one batch of users/orders messages."""

    def __init__(self, version: str, users_topic: str, orders_topic: str, user_decoder: Decoder,
                 order_decoder: Decoder, state: State, grace_ms: int,
                 clock: Callable[[], float] = time.time, registry_retry_s: float = 2.0,
                 category_map: dict[str, str] | None = None) -> None:
        self.version = version
        self.users_topic = users_topic
        self.orders_topic = orders_topic
        self.user_decoder = user_decoder
        self.order_decoder = order_decoder
        self.state = state
        self.grace_ms = grace_ms
        self.windows = revenue_spec(grace_ms)
        self.clock = clock
        self.registry_retry_s = registry_retry_s
        self.category_map = category_map or {}
        self.users_source: Callable[..., list[Message]] | None = None
        """Reads ``users`` partition p from an offset to its end (stream_processors.dimensions)."""
        self.orders_source: Callable[..., list[Message]] | None = None
        """Reads ``orders`` partition p from an offset up to another: the offsets Faust skipped."""
        self._users_next: dict[int, int] = {}
        self._views: dict[int, _View] = {}

    def process(self, msgs: Sequence[Message]) -> Emitted:
        """One batch in, everything it emits out (users of a batch are applied before its orders)."""
        now_ms = int(self.clock() * 1000)
        out = Emitted()
        self._views = {}
        users: dict[int, list[Message]] = defaultdict(list)
        orders: dict[int, list[Message]] = defaultdict(list)
        for m in msgs:
            if m.topic == self.orders_topic:
                orders[m.partition].append(m)
            elif m.topic == self.users_topic:
                users[m.partition].append(m)
        for p, ms in users.items():
            CONSUMED.labels(self.users_topic).inc(len(ms))
            self._users(p, ms, now_ms, out)
        for p, ms in orders.items():
            if self.users_source is not None:  # every user published so far, before the join
                missing = self.users_source(p, self._users_next.get(p, 0))
                if missing:
                    self._users(p, missing, now_ms, out, reject=False)
            ms.sort(key=lambda m: m.offset)
            if self.orders_source is not None:
                applied = PartitionWindows.from_json(self._view(p, out).get(b"p"), self.windows).offset
                ms = fill_gaps(ms, applied, self.orders_source, self.orders_topic)
            CONSUMED.labels(self.orders_topic).inc(len(ms))
            self._orders(p, ms, now_ms, out)
        self._views = {}
        return out

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

    def _users(self, p: int, ms: list[Message], now_ms: int, out: Emitted, reject: bool = True) -> None:
        """Upsert user versions; ``reject=False`` (catch-up reads) skips bad records silently,
        since the stream delivers the same records later and rejects them once, there."""
        if ms:
            self._users_next[p] = max(self._users_next.get(p, 0), max(m.offset for m in ms) + 1)
        view = self._view(p, out)
        good = []
        if reject:
            decoded = self._decode(self.user_decoder, ms, now_ms, out)
        else:
            decoded = [(m, rec) for m, rec in zip(ms, self.user_decoder.decode_many([m.value or b"" for m in ms]),
                                                   strict=True) if isinstance(rec, dict)]
        for m, rec in decoded:
            reason = validate_user(rec, record_ms(m))
            if reason:
                if reject:
                    self._reject(m, reason, now_ms, out)
            else:
                good.append((m, rec))
        keys = [b"u%d" % rec["user_id"] for _, rec in good]
        view.prefetch(keys)
        horizon = self._join_horizon(view)
        for key, (m, rec) in zip(keys, good, strict=True):
            view.put(key, upsert(view.get(key) or [], rec, record_ms(m), horizon))

    @staticmethod
    def _join_horizon(view: _View) -> tuple[int, int] | None:
        """(event time, record time) the orders of this partition have reached: ``b"p"``'s
        watermark and ``b"j"``, the greatest record timestamp of an applied order (users.upsert)."""
        prog, logged = view.get(b"p"), view.get(b"j")
        if not prog or prog.get("wm") is None or logged is None:
            return None
        return int(prog["wm"]), int(logged)

    def _orders(self, p: int, ms: list[Message], now_ms: int, out: Emitted) -> None:
        view = self._view(p, out)
        writes, get = view.writes, view.get
        prog = PartitionWindows.from_json(get(b"p"), self.windows)
        valid = []
        reject, category_map = self._reject, self.category_map
        for m, rec in self._decode(self.order_decoder, ms, now_ms, out):
            reason = validate_order(rec, record_ms(m))
            if reason:
                reject(m, reason, now_ms, out)
                continue
            if category_map:  # KAPPA_CATEGORY_MAP: a per-version transformation knob
                rec["category"] = category_map.get(rec["category"], rec["category"])
            valid.append((m, rec, b"d" + rec["order_id"].encode()))
        # one multi-get per partition and batch for every dedupe id and user it needs
        view.prefetch([d for _, _, d in valid])
        view.prefetch([b"u%d" % rec["user_id"] for _, rec, _ in valid])
        enriched = out.enriched.append
        topic, version = self.orders_topic, self.version
        logged_before = get(b"j")
        max_logged = -1 if logged_before is None else logged_before
        for m, rec, dkey in valid:
            offset = m.offset
            first = get(dkey)
            kind: str | None = None
            if first is not None:
                if first[0] != p or first[1] != offset:
                    DUPLICATES.inc()
                    continue
                kind = first[2]  # the same event again (re-delivery): keep its verdict
            et = rec["event_time"]
            kind, fresh = prog.observe(offset, rec, et, kind)
            if fresh and kind != "on_time":
                LATE_EVENTS.labels(kind).inc()
            if first is None:
                # the JSON of [p, offset, kind, event_time], written without json.dumps
                view.put(dkey, [p, offset, kind, et], b'[%d,%d,"%s",%d]' % (p, offset, kind.encode(), et))
            logged = record_ms(m)
            if logged is not None and logged > max_logged:
                max_logged = logged
            # bitemporal: valid at the event time and in the log before this order
            user = as_of(get(b"u%d" % rec["user_id"]) or [], et, logged) or NULL_USER
            rec.update(user)
            rec["fraud_score"] = None
            rec["late"] = kind == "too_late"
            rec["source_topic"] = topic
            rec["source_partition"] = p
            rec["source_offset"] = offset
            rec["pipeline_version"] = version
            enriched((rec["order_id"], rec))
        out.partials.extend(prog.end_batch(p, ms[-1].offset if ms else None))
        self._sweep(p, prog, writes, get)
        if max_logged >= 0 and max_logged != logged_before:
            view.put(b"j", max_logged)
        writes.pop(b"p", None)
        writes[b"p"] = dumps(prog.to_json())  # last: the changelog holds it after its dedupe keys

    def _sweep(self, p: int, prog: PartitionWindows, writes: dict[bytes, bytes | None],
               get: Callable[[bytes], Any]) -> None:
        """Forget order ids older than the retention, at most once per hour of event time."""
        if prog.watermark is None:
            return
        last = get(b"x")
        if last is not None and prog.watermark - last < _SWEEP_EVERY_MS:
            return
        cutoff = prog.watermark - DEDUPE_RETENTION_MS
        for key, value in self.state.scan(p, b"d"):
            if key not in writes and loads(value)[3] < cutoff:
                writes[key] = None
        writes[b"x"] = dumps(prog.watermark)
