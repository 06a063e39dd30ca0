"""The Kappa full job written with Quix Streams, for ``kappa bench`` (Kappa vs Quix per worker).

Same input as :func:`benchmarks.processors.produce` (Confluent-framed Avro ``users`` and
``orders``, keyed by user_id, co-partitioned), same job: validate (invalid -> DLQ topic),
dedupe by order_id (first wins, RocksDB state), left-join the user's latest profile
(``join_asof`` on ``users``), write enriched orders, and sum revenue per (category, currency)
in 1-minute event-time tumbling windows with a 60 s grace.

Standalone on purpose: quixstreams 3.28.1 pins confluent-kafka<2.13 while Kappa pins 2.16.1,
so it usually runs from a separate interpreter (``KAPPA_BENCH_QUIX_PYTHON``) that has only
quixstreams and fastavro, not Kappa::

    python benchmarks/quix_job.py --bootstrap 127.0.0.1:9092 --prefix bench1234. --out quix1234 \\
        --state-dir /tmp/quix-state

Differences to Kappa, stated so the figure is read honestly: dedupe state is per message key
(user_id) rather than per partition; enriched orders are written as JSON, not Avro; no
fraud score, no metrics endpoint.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import fastavro
from quixstreams import Application
from quixstreams.models.serializers import Deserializer

AVRO = Path(__file__).resolve().parents[1] / "examples" / "ecommerce" / "schemas"
CURRENCIES = {"EUR", "USD", "GBP", "JPY", "CHF"}


def _plain(schema: Any) -> Any:
    """The schema without logical types: timestamps stay epoch-ms ints, as Kappa's decoder returns them."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


class ConfluentAvro(Deserializer):
    """Confluent wire format (magic byte + schema id) -> dict, with the writer schema from the repo."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.schema = fastavro.parse_schema(_plain(json.loads((AVRO / f"{name}.avsc").read_text())))

    def __call__(self, value: bytes, ctx: Any) -> Any:
        return fastavro.schemaless_reader(io.BytesIO(value[5:]), self.schema)


def invalid(o: dict[str, Any]) -> str | None:
    """The reason an order is rejected (the contract's rules), or None."""
    if not o.get("order_id"):
        return "empty_order_id"
    if o["user_id"] <= 0:
        return "bad_user_id"
    if not 0 < o["amount"] <= 1_000_000:
        return "bad_amount"
    if o["currency"] not in CURRENCIES:
        return "bad_currency"
    if o["event_time"] > time.time() * 1000 + 300_000:
        return "future_event_time"
    return None


def first_seen(o: dict[str, Any], state: Any) -> bool:
    """Dedupe: True for the first occurrence of an order_id (stored in the key's state)."""
    key = "d" + o["order_id"]
    if state.get(key) is not None:
        return False
    state.set(key, o["event_time"])
    return True


def enrich(order: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    user = user or {}
    return {**order, "user_country": user.get("country"), "user_segment": user.get("segment"),
            "user_signup_time": user.get("signup_time")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--prefix", required=True, help="input topic prefix (users, orders)")
    ap.add_argument("--out", required=True, help="output topic prefix / consumer group")
    ap.add_argument("--state-dir", required=True)
    args = ap.parse_args()

    app = Application(broker_address=args.bootstrap, consumer_group=f"quix-{args.out}",
                      auto_offset_reset="earliest", state_dir=args.state_dir, loglevel="WARNING",
                      commit_interval=1.0)
    orders_t = app.topic(f"{args.prefix}orders", value_deserializer=ConfluentAvro("orders"),
                         key_deserializer="str", timestamp_extractor=lambda v, *_: v["event_time"])
    users_t = app.topic(f"{args.prefix}users", value_deserializer=ConfluentAvro("users"),
                        key_deserializer="str", timestamp_extractor=lambda v, *_: v["updated_at"])
    enriched_t = app.topic(f"{args.out}.orders.enriched", value_serializer="json")
    dlq_t = app.topic(f"{args.out}.dlq", value_serializer="json")
    revenue_t = app.topic(f"{args.out}.revenue", value_serializer="json")

    users = app.dataframe(users_t)
    orders = app.dataframe(orders_t)
    orders["reason"] = orders.apply(invalid)
    orders[orders["reason"].notnull()].to_topic(dlq_t)
    valid = orders[orders["reason"].isnull()]
    valid = valid.filter(first_seen, stateful=True)
    enriched = valid.join_asof(users, how="left", on_merge=enrich)
    enriched.to_topic(enriched_t)
    windows = (enriched.group_by(lambda v: f"{v['category']}|{v['currency']}", name="catcur")
               .tumbling_window(60_000, grace_ms=60_000)
               .reduce(lambda acc, v: [acc[0] + 1, acc[1] + v["amount"]], lambda v: [1, v["amount"]])
               .final())
    windows.to_topic(revenue_t)
    app.run()


if __name__ == "__main__":
    main()
