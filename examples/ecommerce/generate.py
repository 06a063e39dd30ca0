"""The e-commerce pipeline's generator: deterministic events with a manifest to reconcile against.

Declared as ``[pipeline] generator = "generate:events"``: ``kappa produce --generator ecommerce``
and ``kappa demo`` call :func:`events`; tests and benchmarks call :func:`generate` with a
:class:`GeneratorConfig` (``load(DEFAULT).module("generate")``).

It produces what a shop's log really contains: users first, then orders on a diurnal rhythm
with slightly out-of-order event times, a few user profile updates, exact duplicates re-sent
later, invalid orders (one per reason code of :mod:`schemas.rules`), orders far too late
for their window, and delayed fraud labels whose signal changes at ``drift_at`` (concept
drift). Everything comes from one ``random.Random(seed)``, so a seed and a start time give
identical records (and identical bytes).

The :class:`Manifest` says what the pipeline must report: counts by kind, the valid totals
per currency, the revenue per (minute, category, currency) and the too-late order ids.

Definitions the stream processors implement (and the manifest follows):

* duplicate: an order whose order_id was already published; the first in publish order wins.
* too late: ``window_end + grace <= max event_time already seen on its partition``. Each
  too-late order is >= 15 minutes behind the generator clock and is keyed by a user whose
  previous valid order (same key, hence same partition for any partition count) is at most
  20 s behind the clock, so the condition holds on every partition layout.
* within grace: every other order is at most 20 s behind the clock; its window closes at
  least 40 s after the newest event time published so far.

>>> events, manifest = generate(GeneratorConfig(events=200, seed=3, start_ms=1_700_000_000_000))
>>> manifest.orders_published, manifest.users
(200, 50)
>>> events == generate(GeneratorConfig(events=200, seed=3, start_ms=1_700_000_000_000))[0]
True
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections import Counter as Tally
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kappa.errors import ConfigError
from kappa.pipeline import load
from producers.generators import (
    Event,  # kinds here: user | user_update | order | duplicate | invalid | too_late | label
    Generated,
    publish_events,
)
from schemas.rules import for_input, reason_code

__all__ = ["Event", "GeneratorConfig", "Manifest", "events", "generate", "manifest_of", "publish_events"]

ORDER_REASONS = ("empty_order_id", "bad_user_id", "bad_amount", "bad_currency", "future_event_time")
"""The order rules of examples/ecommerce/pipeline.toml, in their order: the generator breaks
each in turn (:meth:`Generator.invalid`; a unit test checks they are the declared ones)."""


def pipeline() -> Any:
    """The e-commerce pipeline definition this generator writes for."""
    return load(Path(__file__).resolve().parent)


MINUTE_MS = 60_000
DAY_MS = 86_400_000
FUTURE_OFFSET_MS = 10 * 365 * DAY_MS
"""Invalid future orders are 10 years ahead: in the future for any processing time."""

COUNTRIES = {"DE": 22, "FR": 16, "GB": 14, "US": 18, "ES": 8, "IT": 8, "NL": 5, "PL": 4,
             "SE": 2, "CH": 2, "JP": 1}
CURRENCY_OF = {"DE": "EUR", "FR": "EUR", "ES": "EUR", "IT": "EUR", "NL": "EUR", "GB": "GBP",
               "US": "USD", "PL": "PLN", "SE": "SEK", "CH": "CHF", "JP": "JPY"}
EUR_PER_UNIT = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "PLN": 0.23, "SEK": 0.088, "CHF": 1.05,
                "JPY": 0.0062}
CATEGORIES = {"electronics": (5.0, 0.9, 12), "fashion": (3.8, 0.6, 25), "home": (4.0, 0.8, 18),
              "books": (2.8, 0.4, 15), "grocery": (3.4, 0.5, 20), "toys": (3.3, 0.6, 6),
              "beauty": (3.2, 0.5, 4)}
"""category -> (lognormal mu, sigma of the amount in EUR, weight)."""
PAYMENT_METHODS = {"card": 55, "paypal": 25, "bank_transfer": 8, "apple_pay": 7, "gift_card": 5}
SEGMENTS = {"new": 20, "regular": 65, "vip": 15}
# hourly order-rate multiplier (UTC hour 0..23): quiet nights, lunch bump, evening peak
DIURNAL = (0.35, 0.25, 0.2, 0.18, 0.2, 0.3, 0.5, 0.75, 0.95, 1.0, 1.05, 1.1, 1.25, 1.15, 1.05,
           1.0, 1.05, 1.15, 1.35, 1.55, 1.6, 1.4, 0.95, 0.6)


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of :func:`generate`; ``start_ms`` None = end a little before ``now_ms``."""

    events: int
    """Orders to publish (duplicates and invalid ones included)."""
    seed: int = 42
    users: int | None = None
    """Users (default: events // 4, between 50 and 100,000)."""
    start_ms: int | None = None
    drift_at: int | None = None
    """Order index where the fraud signal changes (default: half-way)."""
    dup_rate: float = 0.01
    invalid_rate: float = 0.01
    late_rate: float = 0.005
    """Share of too-late orders (only after the first 1000 orders)."""
    update_rate: float = 0.01
    """Chance per order that some user's profile is updated."""
    orders_per_second: float = 2.0
    """Mean order rate in event time at a diurnal multiplier of 1."""
    grace_ms: int = 60_000



@dataclass
class Manifest:
    """What a generator run published and what the pipeline must therefore report."""

    seed: int
    start_ms: int
    end_ms: int
    drift_at: int
    events: int = 0
    users: int = 0
    user_updates: int = 0
    orders_published: int = 0
    valid_unique_orders: int = 0
    """Valid, first-occurrence orders, too-late ones included (they land in kappa.orders)."""
    duplicates: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    too_late: int = 0
    labels: int = 0
    fraud_labels: int = 0
    valid_totals: dict[str, dict[str, float]] = field(default_factory=dict)
    """currency -> {"count", "amount"} over valid unique orders (too-late included)."""
    revenue: list[dict[str, Any]] = field(default_factory=list)
    """[{window_start, category, currency, orders, revenue}] over valid unique on-time orders."""
    too_late_order_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())

    def summary_lines(self) -> list[str]:
        """A human-readable digest (the full manifest goes to JSON)."""
        totals = ", ".join(f"{c} {v['count']:.0f}/{v['amount']:,.2f}"
                           for c, v in sorted(self.valid_totals.items()))
        return [
            f"events published: {self.events} (users {self.users}, user updates "
            f"{self.user_updates}, orders {self.orders_published}, labels {self.labels})",
            f"orders: valid unique {self.valid_unique_orders}, duplicates {self.duplicates}, "
            f"invalid {self.invalid_total} {dict(sorted(self.invalid.items()))}, "
            f"too late {self.too_late}",
            f"valid totals (count/amount): {totals}",
            f"revenue windows: {len(self.revenue)}, fraud labels {self.fraud_labels}/{self.labels}",
        ]


@functools.cache
def _cumulative(table: str, index: int | None) -> tuple[list[str], list[float]]:
    weights: dict[str, Any] = globals()[table]
    w = [v if index is None else v[index] for v in weights.values()]
    return list(weights), list(itertools.accumulate(w))


def _pick(rng: random.Random, table: str, index: int | None = None) -> str:
    keys, cum = _cumulative(table, index)
    return rng.choices(keys, cum_weights=cum)[0]


def _fraud_probability(order: dict[str, Any], user: dict[str, Any], drifted: bool) -> float:
    """The learnable signal; after the drift a different feature set carries it."""
    amount_eur = order["amount"] * EUR_PER_UNIT[order["currency"]]
    hour = (order["event_time"] // 3_600_000) % 24
    if not drifted:
        score = (-4.2 + 2.2 * (amount_eur > 400) + 2.0 * (order["ip_country"] != user["country"])
                 + 1.6 * (order["event_time"] - user["signup_time"] < 7 * DAY_MS)
                 + 1.2 * (hour < 5))
    else:
        score = (-4.2 + 2.4 * (order["payment_method"] == "gift_card")
                 + 1.8 * (order["category"] == "electronics" and amount_eur < 60)
                 + 1.6 * (user["segment"] == "vip") + 1.0 * (hour >= 18))
    return 1.0 / (1.0 + math.exp(-score))


class _Run:
    """State of one generation; :func:`generate` drives it."""

    def __init__(self, cfg: GeneratorConfig, start_ms: int) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.start = start_ms
        self.clock = start_ms
        self.events: list[Event] = []
        self.users: dict[int, dict[str, Any]] = {}
        self.user_ids: list[int] = []
        self.user_weights: list[float] = []
        self.user_cum: list[float] = []
        self.labels: list[tuple[int, int, dict[str, Any]]] = []  # (label_time, seq, label)
        self.dups: list[tuple[int, int, dict[str, Any]]] = []  # (release index, seq, order)
        self.seq = 0
        self.last_on_time_user: int | None = None
        n_users = cfg.users or min(max(cfg.events // 4, 50), 100_000)
        self.n_users = n_users

    def emit(self, topic: str, key: str, value: dict[str, Any], kind: str) -> None:
        self.events.append(Event(topic, key, value, kind))

    def make_users(self) -> None:
        rng = self.rng
        for uid in range(1, self.n_users + 1):
            country = _pick(rng, "COUNTRIES")
            segment = _pick(rng, "SEGMENTS")
            age = rng.uniform(0, 7 * DAY_MS) if segment == "new" else rng.uniform(30, 1500) * DAY_MS
            user = {"user_id": uid, "country": country, "segment": segment,
                    "signup_time": int(self.start - age), "updated_at": self.start - 1000}
            self.users[uid] = user
            self.user_ids.append(uid)
            self.user_weights.append(1.0 / (uid ** 0.7))  # a few heavy buyers, a long tail
            self.emit("users", str(uid), dict(user), "user")

    def pick_user(self) -> int:
        if len(self.user_cum) != len(self.user_weights):
            self.user_cum = list(itertools.accumulate(self.user_weights))
        return self.rng.choices(self.user_ids, cum_weights=self.user_cum)[0]

    def update_user(self) -> None:
        uid = self.pick_user()
        user = dict(self.users[uid])
        if user["segment"] == "new":
            user["segment"] = "regular"
        elif self.rng.random() < 0.5:
            user["segment"] = "vip" if user["segment"] == "regular" else "regular"
        else:
            user["country"] = _pick(self.rng, "COUNTRIES")
        user["updated_at"] = self.clock
        self.users[uid] = user
        self.emit("users", str(uid), dict(user), "user_update")

    def tick(self) -> None:
        hour = (self.clock // 3_600_000) % 24
        rate = self.cfg.orders_per_second * DIURNAL[hour]
        self.clock += max(1, int(self.rng.expovariate(rate) * 1000))

    def order(self, index: int, uid: int, event_time: int) -> dict[str, Any]:
        rng = self.rng
        user = self.users[uid]
        category = _pick(rng, "CATEGORIES", 2)
        mu, sigma, _ = CATEGORIES[category]
        currency = CURRENCY_OF[user["country"]] if rng.random() < 0.9 else "USD"
        amount_eur = min(rng.lognormvariate(mu, sigma), 50_000.0)
        amount = amount_eur / EUR_PER_UNIT[currency]
        amount = float(max(round(amount), 1)) if currency == "JPY" else max(round(amount, 2), 0.5)
        ip_country = user["country"] if rng.random() < 0.93 else _pick(rng, "COUNTRIES")
        return {"order_id": f"o{self.cfg.seed}-{index:09d}", "user_id": uid, "amount": amount,
                "currency": currency, "category": category,
                "payment_method": _pick(rng, "PAYMENT_METHODS"), "ip_country": ip_country,
                "event_time": event_time}

    def invalid(self, order: dict[str, Any], k: int) -> dict[str, Any]:
        reason = ORDER_REASONS[k % len(ORDER_REASONS)]
        bad = dict(order)
        if reason == "empty_order_id":
            bad["order_id"] = ""
        elif reason == "bad_user_id":
            bad["user_id"] = -self.rng.randint(0, 1000)
        elif reason == "bad_amount":
            bad["amount"] = self.rng.choice([0.0, -12.5, 2_500_000.0])
        elif reason == "bad_currency":
            bad["currency"] = self.rng.choice(["XXX", "BTC", "eur"])
        else:
            bad["event_time"] = self.clock + FUTURE_OFFSET_MS
        return bad

    def label(self, order: dict[str, Any], drifted: bool) -> None:
        p = _fraud_probability(order, self.users[order["user_id"]], drifted)
        label = {"order_id": order["order_id"], "is_fraud": self.rng.random() < p,
                 "label_time": order["event_time"] + self.rng.randint(2 * MINUTE_MS, 10 * MINUTE_MS)}
        self.seq += 1
        heapq.heappush(self.labels, (label["label_time"], self.seq, label))

    def release(self, published: int) -> int:
        """Emit labels now known and duplicates now due; return the duplicates emitted."""
        while self.labels and self.labels[0][0] <= self.clock:
            label = heapq.heappop(self.labels)[2]
            self.emit("order_labels", label["order_id"], label, "label")
        n = 0
        while self.dups and self.dups[0][0] <= published + n and published + n < self.cfg.events:
            order = heapq.heappop(self.dups)[2]
            self.emit("orders", str(order["user_id"]), dict(order), "duplicate")
            n += 1
        return n


def _run(cfg: GeneratorConfig, start_ms: int) -> list[Event]:
    r = _Run(cfg, start_ms)
    rng = r.rng
    drift_at = cfg.drift_at if cfg.drift_at is not None else cfg.events // 2
    r.make_users()
    published = index = invalid_k = 0
    last_on_time: tuple[int, int] | None = None  # (user_id, event_time) of the last on-time order
    while published < cfg.events:
        r.tick()
        published += r.release(published)
        if rng.random() < cfg.update_rate:
            r.update_user()
        if published >= cfg.events:
            break
        roll = rng.random()
        behind_late = rng.randint(15 * MINUTE_MS, 30 * MINUTE_MS)
        late_time = r.clock - behind_late
        late_ok = (last_on_time is not None and published >= 1000
                   and late_time // MINUTE_MS * MINUTE_MS + MINUTE_MS + cfg.grace_ms
                   <= last_on_time[1])
        if roll < cfg.invalid_rate:
            uid = r.pick_user()
            base = r.order(index, uid, r.clock)
            bad = r.invalid(base, invalid_k)
            r.emit("orders", str(bad["user_id"]), bad, "invalid")
            invalid_k += 1
        elif roll < cfg.invalid_rate + cfg.late_rate and late_ok and last_on_time is not None:
            order = r.order(index, last_on_time[0], late_time)
            r.emit("orders", str(order["user_id"]), order, "too_late")
            r.label(order, index >= drift_at)
        else:
            uid = r.pick_user()
            behind = 0 if rng.random() < 0.8 else rng.randint(1000, 20_000)
            order = r.order(index, uid, r.clock - behind)
            r.emit("orders", str(uid), order, "order")
            last_on_time = (uid, order["event_time"])
            r.label(order, index >= drift_at)
            if rng.random() < cfg.dup_rate:
                r.seq += 1
                heapq.heappush(r.dups, (published + rng.randint(1, 50), r.seq, order))
        index += 1
        published += 1
    # duplicates still pending would exceed --events: they are never sent
    for _, _, label in sorted(r.labels, key=lambda t: (t[0], t[1])):
        r.emit("order_labels", label["order_id"], label, "label")
    return r.events


def _validate(cfg: GeneratorConfig) -> None:
    if cfg.events < 0:
        raise ConfigError(f"--events must be >= 0, got {cfg.events}")
    for name in ("dup_rate", "invalid_rate", "late_rate", "update_rate"):
        value = getattr(cfg, name)
        if not 0 <= value < 0.5:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 0.5), got {value}")
    if cfg.dup_rate + cfg.invalid_rate + cfg.late_rate >= 0.5:
        raise ConfigError("duplicate + invalid + late rates must stay below 0.5 together")


def _shift(events: list[Event], delta: int) -> list[Event]:
    fields = ("signup_time", "updated_at", "event_time", "label_time")
    return [Event(e.topic, e.key, {k: v + delta if k in fields else v for k, v in e.value.items()},
                  e.kind) for e in events]


def _last_time(events: list[Event], default: int) -> int:
    """Newest timestamp of the run, ignoring invalid orders (some are years ahead on purpose)."""
    return max((max(e.value.get(k, 0) for k in ("event_time", "label_time", "updated_at"))
                for e in events if e.kind != "invalid"), default=default)


def manifest_of(events: list[Event], cfg: GeneratorConfig, start_ms: int) -> Manifest:
    """Recount ``events`` by the pipeline's definitions (used by :func:`generate` and tests)."""
    m = Manifest(seed=cfg.seed, start_ms=start_ms, end_ms=start_ms,
                 drift_at=cfg.drift_at if cfg.drift_at is not None else cfg.events // 2)
    kinds = Tally(e.kind for e in events)
    m.events = len(events)
    m.users, m.user_updates, m.labels = kinds["user"], kinds["user_update"], kinds["label"]
    seen: set[str] = set()
    invalid: Tally[str] = Tally()
    totals: dict[str, dict[str, float]] = {}
    windows: dict[tuple[int, str, str], list[float]] = {}
    far_future = start_ms + FUTURE_OFFSET_MS // 2
    validate_order = for_input("orders", pipeline())
    for e in events:
        v = e.value
        if e.kind == "label":
            m.fraud_labels += v["is_fraud"]
        if e.topic != "orders":
            continue
        m.orders_published += 1
        reason = validate_order(v, far_future)
        if reason is not None:
            invalid[reason_code(reason)] += 1
            continue
        if v["order_id"] in seen:
            m.duplicates += 1
            continue
        seen.add(v["order_id"])
        m.valid_unique_orders += 1
        t = totals.setdefault(v["currency"], {"count": 0, "amount": 0.0})
        t["count"] += 1
        t["amount"] += v["amount"]
        if e.kind == "too_late":
            m.too_late += 1
            m.too_late_order_ids.append(v["order_id"])
            continue
        w = windows.setdefault((v["event_time"] // MINUTE_MS * MINUTE_MS, v["category"],
                                v["currency"]), [0, 0.0])
        w[0] += 1
        w[1] += v["amount"]
    m.end_ms = _last_time(events, start_ms)
    m.invalid = dict(sorted(invalid.items()))
    m.valid_totals = {c: {"count": t["count"], "amount": round(t["amount"], 2)}
                      for c, t in sorted(totals.items())}
    m.revenue = [{"window_start": ws, "category": cat, "currency": cur, "orders": int(n),
                  "revenue": round(total, 2)}
                 for (ws, cat, cur), (n, total) in sorted(windows.items())]
    return m


def generate(cfg: GeneratorConfig, now_ms: int | None = None) -> tuple[list[Event], Manifest]:
    """Records in publish order and their manifest; deterministic for (seed, start_ms).

    Without ``start_ms`` the run starts at a midnight (UTC) and ends at least one minute before
    ``now_ms`` (default: the wall clock), within a day of it: nothing valid is in the future when
    processed, and the same seed gives the same records up to a whole number of days.
    """
    _validate(cfg)
    if cfg.start_ms is not None:
        start = cfg.start_ms
        events = _run(cfg, start)
    else:
        import time

        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        span_guess = int(cfg.events / cfg.orders_per_second * 1000)
        # whole days only: a seed gives the same times of day (windows, diurnal features) whenever it runs
        start = (now - span_guess) // DAY_MS * DAY_MS
        events = _run(cfg, start)
        delta = ((now - MINUTE_MS) - _last_time(events, start)) // DAY_MS * DAY_MS
        events = _shift(events, delta)
        start += delta
    return events, manifest_of(events, cfg, start)


def events(count: int, seed: int = 42, now_ms: int | None = None, *, users: int | None = None,
           start_ms: int | None = None, drift_at: int | None = None, dup_rate: float = 0.01,
           invalid_rate: float = 0.01, late_rate: float = 0.005, grace_ms: int | None = None) -> Generated:
    """The declared generator: ``count`` orders (with their users and labels) and their manifest.

    ``grace_ms`` defaults to the revenue window's grace (``KAPPA_WINDOW_GRACE_SECONDS`` unless
    declared). The manifest adds ``drift_time_ms``: the event time of the first on-time order
    after the drift (the demo report reads the model quality there).

    >>> run = events(200, seed=3, start_ms=1_700_000_000_000)
    >>> run.note, run.manifest["orders_published"], run.manifest["drift_time_ms"] > 1_700_000_000_000
    ('drift at order 100', 200, True)
    """
    if grace_ms is None:
        from kappa.settings import get_settings

        declared = next(iter(pipeline().windows.values())).grace_ms
        grace_ms = declared if declared is not None else int(get_settings().window_grace_seconds * 1000)
    cfg = GeneratorConfig(events=count, seed=seed, users=users, start_ms=start_ms, drift_at=drift_at,
                          dup_rate=dup_rate, invalid_rate=invalid_rate, late_rate=late_rate, grace_ms=grace_ms)
    records, manifest = generate(cfg, now_ms)
    # the generator's order index counts new orders (on-time, invalid, too late), not re-sent ones
    new_orders = [e for e in records if e.topic == "orders" and e.kind != "duplicate"]
    on_time_after = [e for e in new_orders[manifest.drift_at:] if e.kind == "order"]
    data = manifest.to_dict()
    data["drift_time_ms"] = on_time_after[0].value["event_time"] if on_time_after else 0
    return Generated(records, data, f"drift at order {manifest.drift_at:,}", manifest.summary_lines())
