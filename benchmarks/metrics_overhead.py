"""Cost of the Prometheus metrics on the hot path: decode + validate orders, metrics on vs off.

The loop is what a processor does per batch: Confluent-framed Avro -> dict (schemas.serde's
Decoder, the real one, with an in-memory registry so no server is needed), validate each order
(schemas.rules), then update the metrics. Modes, interleaved round by round so machine noise
hits all of them alike:

- ``off``       no metric calls at all;
- ``batched``   what Kappa does: one ``inc(n)`` per label set per batch, one ``observe`` per batch;
- ``per-event`` one ``inc()`` per event (shown to explain why the pipeline batches).

Target: ``batched`` within 5 % of ``off``. Prints a table: wall time (best and median of
the rounds; on a shared machine the wall difference is mostly noise) and the time spent inside
the metric calls, timed directly (``direct +%`` = that time / best ``off`` time), which the
verdict uses.

    .venv/bin/python benchmarks/metrics_overhead.py --events 100000 --batch 500 --rounds 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter as Tally
from typing import Any

from confluent_kafka.schema_registry import Schema

from kappa import metrics
from schemas.rules import for_input, reason_code
from schemas.serde import Decoder, Encoder, Registry, schema_text

validate_order = for_input("orders")

NOW_MS = 1_700_000_000_000
TOPIC = "orders"


class _InMemoryClient:
    """Just enough of SchemaRegistryClient for Encoder/Decoder: one subject, one id."""

    def register_schema(self, subject: str, schema: Schema) -> int:
        return 1

    def get_schema(self, schema_id: int) -> Schema:
        return Schema(schema_text("orders"), "AVRO")


def _orders(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Realistic orders, ~3 % of them invalid in the ways the validator reports."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        order = {"order_id": f"o-{i}", "user_id": rng.randint(1, 50_000), "amount": round(rng.uniform(1, 500), 2),
                 "currency": rng.choice(("EUR", "USD", "GBP", "JPY", "CHF")),
                 "category": rng.choice(("books", "games", "garden", "tools")),
                 "payment_method": rng.choice(("card", "paypal", "sepa")), "ip_country": "DE",
                 "event_time": NOW_MS - rng.randint(0, 60_000)}
        roll = rng.random()
        if roll < 0.01:
            order["amount"] = -1.0
        elif roll < 0.02:
            order["currency"] = "XXX"
        elif roll < 0.03:
            order["order_id"] = ""
        out.append(order)
    return out


def _process(batch: list[bytes], decoder: Decoder) -> list[str | None]:
    """Reason code per message (None = valid), as the validation agent computes it."""
    out: list[str | None] = []
    for rec in decoder.decode_many(batch):
        if isinstance(rec, Exception):
            out.append("undecodable")
        else:
            reason = validate_order(rec, NOW_MS)
            out.append(None if reason is None else reason_code(reason))
    return out


def run(mode: str, batches: list[list[bytes]], decoder: Decoder) -> tuple[float, float]:
    """(total seconds, seconds inside metric calls) to process every batch in ``mode``."""
    consumed = metrics.CONSUMED.labels(TOPIC)
    timer = metrics.BATCH_SECONDS.labels("validate")
    in_metrics = 0.0
    t0 = time.perf_counter()
    for batch in batches:
        b0 = time.perf_counter()
        reasons = _process(batch, decoder)
        m0 = time.perf_counter()
        if mode == "batched":
            consumed.inc(len(batch))
            for reason, n in Tally(r for r in reasons if r is not None).items():
                metrics.REJECTED.labels("validate", TOPIC, reason).inc(n)
        elif mode == "per-event":
            for code in reasons:
                consumed.inc()
                if code is not None:
                    metrics.REJECTED.labels("validate", TOPIC, code).inc()
        if mode != "off":
            timer.observe(time.perf_counter() - b0)
            in_metrics += time.perf_counter() - m0
    return time.perf_counter() - t0, in_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    registry = Registry("in-memory", client=_InMemoryClient())  # type: ignore[arg-type]
    encoder, decoder = Encoder(registry, "orders-value", "orders"), Decoder(registry, "orders")
    frames = encoder.encode_many(_orders(args.events))
    batches = [frames[i:i + args.batch] for i in range(0, len(frames), args.batch)]
    modes = ("off", "batched", "per-event")
    for mode in modes:  # warm-up: caches, label children
        run(mode, batches, decoder)
    totals: dict[str, list[float]] = {m: [] for m in modes}
    inside: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            total, in_metrics = run(mode, batches, decoder)
            totals[mode].append(total)
            inside[mode].append(in_metrics)

    # min = the round least disturbed by other load on the machine; the metric calls are also
    # timed directly, which is immune to that noise
    base = min(totals["off"])
    print(f"decode + validate {args.events:,} orders in batches of {args.batch}, "
          f"{args.rounds} interleaved rounds per mode")
    print(f"{'metrics':<10} {'best s':>7} {'median s':>9} {'events/s':>10} {'wall +%':>8} "
          f"{'in metric calls':>16} {'direct +%':>9}  target")
    for mode in modes:
        best, med = min(totals[mode]), statistics.median(totals[mode])
        direct = statistics.median(inside[mode]) / base * 100
        wall = (best - base) / base * 100
        target = {"off": "", "batched": "<= 5 %", "per-event": "(not used)"}[mode]
        verdict = ("ok" if direct <= 5 else "MISSED") if mode == "batched" else ""
        print(f"{mode:<10} {best:>7.3f} {med:>9.3f} {args.events / best:>10,.0f} {wall:>+7.1f}% "
              f"{statistics.median(inside[mode]):>15.4f}s {direct:>+8.2f}%  {target} {verdict}")


if __name__ == "__main__":
    main()
