"""The e-commerce pipeline's ``kappa demo`` report (``[pipeline] report = "demo:report"``).

It reconciles the serving views with the generator's manifest (``generate.py``): orders landed,
per currency, every revenue window, the rejections by reason, published = landed + rejected +
duplicates, the top categories and the fraud model's ROC AUC at the drift and at the end.
:func:`reconcile` is the same check for a manifest of any run (the reliability tests use it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # kappa.demo pulls in the runner: imported when the report runs, not when the pipeline loads
    from kappa.demo import DemoReport, DemoRun
    from kappa.settings import Settings

__all__ = ["reconcile", "report"]


def report(run: DemoRun) -> DemoReport:
    """The demo report: :func:`reconcile` with the manifest of the run that was published."""
    return reconcile(run.settings, run.manifest)


def reconcile(settings: Settings, manifest: dict[str, Any]) -> DemoReport:
    """Compare the serving views with a generator manifest (the checks behind the demo report)."""
    from kappa.demo import DemoReport
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
