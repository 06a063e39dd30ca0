"""``kappa demo``: from nothing to a printed report, on the embedded defaults.

Up (Kafka + registry) -> topics -> generator (fixed seed, concept drift half-way) -> run the
pipeline until drained -> report from the ClickHouse views, reconciled with the generator's
manifest. A second ``kappa demo`` on the same ``KAPPA_HOME`` does not publish again: the log is
already there, so it just (re)processes and reports — the Kappa way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kappa import stack, topics
from kappa.kafka import ensure_topics
from kappa.runner import Pipeline
from kappa.settings import Settings

__all__ = ["DemoReport", "reconcile", "run_demo"]


@dataclass
class DemoReport:
    """What the demo measured, and whether it reconciles with the manifest."""

    lines: list[str]
    reconciled: bool


def _publish(settings: Settings, events: int, seed: int, echo: Callable[[str], None]) -> dict[str, Any]:
    from producers.base import Publisher
    from producers.ecommerce import GeneratorConfig, generate, publish_events

    cfg = GeneratorConfig(events=events, seed=seed, drift_at=events // 2,
                          grace_ms=int(settings.window_grace_seconds * 1000))
    records, manifest = generate(cfg)
    # the generator's order index counts new orders (on-time, invalid, too late), not re-sent ones
    new_orders = [e for e in records if e.topic == "orders" and e.kind != "duplicate"]
    on_time_after = [e for e in new_orders[manifest.drift_at:] if e.kind == "order"]
    drift_time = on_time_after[0].value["event_time"] if on_time_after else 0
    ep = stack.endpoints(settings)
    echo(f"publishing {len(records):,} events (seed {seed}, drift at order {manifest.drift_at:,})")
    with Publisher(settings, ep.kafka_bootstrap, total=len(records)) as pub:
        publish_events(pub, records)
        summary = pub.flush()
    echo(f"  {summary}")
    data = manifest.to_dict()
    data["drift_time_ms"] = drift_time
    path = settings.home / "manifests" / "demo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return data


def reconcile(settings: Settings, manifest: dict[str, Any]) -> DemoReport:
    """Compare the serving views with a generator manifest (the checks behind the demo report)."""
    from sinks.query import query_rows

    def q(sql: str) -> list[dict[str, Any]]:
        return query_rows(settings, sql)

    lines: list[str] = []
    ok = True
    landed = int(q("SELECT count() AS n FROM kappa.orders")[0]["n"])
    expected = manifest["valid_unique_orders"]
    ok &= landed == expected
    lines.append(f"orders landed in kappa.orders: {landed:,} (manifest: {expected:,}) "
                 + ("OK" if landed == expected else "MISMATCH"))
    per_cur = {r["currency"]: r for r in q(
        "SELECT currency, count() AS n, round(sum(amount), 2) AS amount FROM kappa.orders GROUP BY currency")}
    for cur, tot in sorted(manifest["valid_totals"].items()):
        got = per_cur.get(cur, {"n": 0, "amount": 0.0})
        good = int(got["n"]) == int(tot["count"]) and abs(float(got["amount"]) - tot["amount"]) < 0.01
        ok &= good
        lines.append(f"  {cur}: {int(got['n']):,} orders, {float(got['amount']):,.2f} "
                     f"(manifest {int(tot['count']):,} / {tot['amount']:,.2f}) {'OK' if good else 'MISMATCH'}")
    windows = {(r["ws"], r["category"], r["currency"]): (int(r["orders"]), float(r["revenue"])) for r in q(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, category, currency, orders, revenue "
        "FROM kappa.revenue_per_minute")}
    want = {(w["window_start"], w["category"], w["currency"]): (w["orders"], w["revenue"])
            for w in manifest["revenue"]}
    same = sum(1 for k, v in want.items() if k in windows and windows[k][0] == v[0]
               and abs(windows[k][1] - v[1]) < 0.01)
    ok &= same == len(want) == len(windows)
    lines.append(f"revenue windows matching the manifest: {same:,}/{len(want):,} "
                 f"(view has {len(windows):,})")
    rejected = q("SELECT splitByChar(':', reason)[1] AS code, count() AS n FROM kappa.rejected_events "
                 "GROUP BY code ORDER BY n DESC")
    n_rejected = sum(int(r["n"]) for r in rejected)
    lines.append(f"rejected: {n_rejected:,} " + ", ".join(f"{r['code']}={r['n']}" for r in rejected))
    published = manifest["orders_published"]
    dups = manifest["duplicates"]
    balance = landed + n_rejected + dups
    ok &= balance == published
    lines.append(f"reconciliation: published {published:,} = landed {landed:,} + rejected {n_rejected:,} "
                 f"+ duplicates {dups:,} -> {'holds' if balance == published else 'BROKEN'}")
    top = q("SELECT category, round(sum(revenue), 2) AS revenue, sum(orders) AS orders "
            "FROM kappa.revenue_per_minute GROUP BY category ORDER BY revenue DESC LIMIT 5")
    lines.append("top categories by revenue: " + ", ".join(f"{r['category']} {float(r['revenue']):,.0f}"
                                                          for r in top))
    drift_ms = int(manifest.get("drift_time_ms", 0))
    fraud = q("SELECT toUnixTimestamp64Milli(bucket) AS bucket_ms, labelled, roc_auc FROM kappa.model_quality "
              "WHERE model = 'fraud' ORDER BY bucket")
    if fraud:
        before = [r for r in fraud if int(r["bucket_ms"]) < drift_ms] or fraud[:1]
        lines.append(f"fraud model ROC AUC (cumulative): at the drift {float(before[-1]['roc_auc']):.3f} "
                     f"after {int(before[-1]['labelled']):,} labels; at the end {float(fraud[-1]['roc_auc']):.3f} "
                     f"after {int(fraud[-1]['labelled']):,} labels")
    else:
        lines.append("fraud model: no quality rows yet")
    lines.append('next: .venv/bin/kappa query "SELECT * FROM kappa.orders LIMIT 10"  '
                 "(views: kappa.orders, kappa.revenue_per_minute, kappa.model_quality, kappa.rejected_events)")
    return DemoReport(lines, ok)


def run_demo(settings: Settings, events: int = 20_000, seed: int = 42,
             echo: Callable[[str], None] = print, max_seconds: float = 900) -> DemoReport:
    """Run the whole demo; return the report (also echoed)."""
    t0 = time.monotonic()
    echo("1/4 starting the local stack (Kafka + schema registry) ...")
    for row in stack.up(settings):
        echo(f"  {row.name:<9} {row.address}  {row.detail}")
    from kappa.versions import choose_run_version

    version = choose_run_version(settings, echo=echo)  # after a swap: the version the views serve
    pipeline = Pipeline(settings, version, echo=echo)
    echo("2/4 creating topics ...")
    pipeline.prepare()
    ensure_topics(settings, pipeline.ep.kafka_bootstrap, topics.output_topics(version).specs(settings.partitions))
    manifest_path = settings.home / "manifests" / "demo.json"
    if manifest_path.exists() and pipeline.published() > 0:
        manifest = json.loads(manifest_path.read_text())
        echo(f"3/4 the log already holds the demo's {manifest['events']:,} events: not publishing again")
    else:
        echo("3/4 generating e-commerce events ...")
        manifest = _publish(settings, events, seed, echo)
    echo(f"4/4 running pipeline {version} until drained ...")
    pipeline.run(until_drained=True, max_seconds=max_seconds)
    report = reconcile(settings, manifest)
    echo("")
    echo(f"=== Kappa demo report ({time.monotonic() - t0:.0f}s) ===")
    for line in report.lines:
        echo(line)
    return report
