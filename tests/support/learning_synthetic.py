"""A small deterministic fraud scenario with concept drift, for tests and benchmarks.

Enriched orders one second apart and their labels 30-300 s later. Before ``drift_at`` fraud
comes from an IP country that differs from the user's country with a large amount; from
``drift_at`` on fraud is a small home-country PayPal order and foreign or large orders are clean — the old
model's signal is inverted, so its error rate jumps and a drift detector must fire.

>>> orders, labels = scenario(10, drift_at=5, seed=1)
>>> len(orders), len(labels), orders[0]["order_id"], labels[0]["label_time"] > orders[0]["event_time"]
(10, 10, 'o-000000', True)
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["scenario"]

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_COUNTRIES = ("DE", "FR", "GB", "US", "JP", "CH")
_PAYMENTS = ("card", "paypal", "bank_transfer")
_CATEGORIES = ("books", "electronics", "fashion", "home", "toys")
_CURRENCIES = ("EUR", "USD", "GBP", "JPY", "CHF")


def scenario(n: int, drift_at: int | None = None, seed: int = 7,
             fraud_rate: float = 0.15) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` EnrichedOrder-like dicts and their OrderLabel dicts (labels sorted by label_time)."""
    rng = random.Random(seed)
    orders, labels = [], []
    for i in range(n):
        t = T0 + i * 1000
        country = rng.choice(_COUNTRIES)
        fraud = rng.random() < fraud_rate
        drifted = drift_at is not None and i >= drift_at
        if not drifted:
            foreign = rng.random() < (0.85 if fraud else 0.1)
            payment = rng.choice(_PAYMENTS)
            amount = rng.lognormvariate(6.0 if fraud else 4.0, 0.6)
        else:
            foreign = rng.random() < (0.02 if fraud else 0.4)
            payment = "paypal" if rng.random() < (0.9 if fraud else 0.2) else rng.choice(("card", "bank_transfer"))
            amount = rng.lognormvariate(3.0 if fraud else 5.0, 0.6)
        ip = rng.choice([c for c in _COUNTRIES if c != country]) if foreign else country
        oid = f"o-{i:06d}"
        orders.append({
            "order_id": oid, "user_id": 1 + rng.randrange(500), "amount": round(amount, 2),
            "currency": rng.choice(_CURRENCIES), "category": rng.choice(_CATEGORIES),
            "payment_method": payment, "ip_country": ip, "event_time": t,
            "user_country": country, "user_segment": rng.choice(("new", "regular", "vip")),
            "user_signup_time": t - rng.randrange(1, 400) * 86_400_000, "fraud_score": None,
            "late": False, "source_topic": "synthetic", "source_partition": 0, "source_offset": i,
            "pipeline_version": "synthetic",
        })
        labels.append({"order_id": oid, "is_fraud": fraud, "label_time": t + rng.randrange(30, 300) * 1000})
    labels.sort(key=lambda r: (r["label_time"], r["order_id"]))
    return orders, labels
