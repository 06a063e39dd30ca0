"""Generate the Grafana dashboards of deploy/grafana/dashboards/*.json from one description.

Why generated: panel ids, grid positions and the datasource reference stay consistent, and a
reviewer reads the PromQL here instead of in 2,000 lines of JSON. The JSON is committed (Grafana
provisioning loads it as is); ``--check`` fails when it is stale, and tests/unit/test_dashboards.py
runs that check.

    python deploy/grafana/generate_dashboards.py          # rewrite the JSON
    python deploy/grafana/generate_dashboards.py --check  # exit 1 when the JSON is stale

Template variables used in expressions: ``$__rate_interval`` and ``$__range`` (Grafana
built-ins) and ``$model`` (Model quality dashboard).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["DATASOURCE", "SCHEMA_VERSION", "dashboards", "main"]

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "kappa-prometheus"}
"""Fixed uid, provisioned by provisioning/datasources/prometheus.yml."""
SCHEMA_VERSION = 39
"""Grafana 10.4 / 11 dashboard schema."""
RATE = "$__rate_interval"

Target = tuple[str, str]  # (expr, legendFormat)


def _panel(kind: str, title: str, targets: list[Target], unit: str, description: str,
           w: int, h: int, **extra: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if "threshold" in extra:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": extra.pop("threshold")}]}
        if kind == "timeseries":
            defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if "min" in extra:
        defaults["min"] = extra.pop("min")
    if "max" in extra:
        defaults["max"] = extra.pop("max")
    options: dict[str, Any]
    if kind == "timeseries":
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
             "legendFormat": legend, "range": kind == "timeseries", "instant": kind != "timeseries"}
            for i, (expr, legend) in enumerate(targets)
        ],
        **extra,
    }


def ts(title: str, targets: list[Target], unit: str, description: str, w: int = 12, **kw: Any) -> dict[str, Any]:
    """A time series panel."""
    return _panel("timeseries", title, targets, unit, description, w, 8, **kw)


def stat(title: str, targets: list[Target], unit: str, description: str, w: int = 6, **kw: Any) -> dict[str, Any]:
    """A single-value panel."""
    return _panel("stat", title, targets, unit, description, w, 4, **kw)


def row(title: str) -> dict[str, Any]:
    """A (non-collapsed) row header."""
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def _quantiles(metric: str, by: str, qs: tuple[float, ...] = (0.5, 0.99)) -> list[Target]:
    return [(f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{RATE}])))",
             f"p{round(q * 100)} {{{{{by}}}}}") for q in qs]


def _layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assign unique ids and flow panels left to right, top to bottom on the 24-column grid."""
    x = y = line_h = 0
    for pid, panel in enumerate(panels, start=1):
        panel["id"] = pid
        grid = panel["gridPos"]
        if x + grid["w"] > 24 or panel["type"] == "row":
            x, y = 0, y + line_h
            line_h = 0
        grid.update(x=x, y=y)
        x += grid["w"]
        line_h = max(line_h, grid["h"])
        if panel["type"] == "row":
            x, y, line_h = 0, y + grid["h"], 0
    return panels


def _dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]],
               variables: list[dict[str, Any]] | None = None,
               annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
               "type": "dashboard"}
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["kappa"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "timezone": "browser",
        "links": [{"type": "dashboards", "tags": ["kappa"], "asDropdown": True, "title": "Kappa"}],
        "annotations": {"list": [builtin, *(annotations or [])]},
        "templating": {"list": variables or []},
        "panels": _layout(panels),
    }


def overview() -> dict[str, Any]:
    """Throughput, lag, freshness, errors: is the pipeline keeping up, and is it healthy?"""
    return _dashboard("kappa-overview", "Kappa / Pipeline overview",
                      "Throughput, consumer lag, freshness and errors of the whole pipeline.", [
        row("Throughput"),
        stat("Consumed /s", [(f"sum(rate(kappa_processor_events_total[{RATE}]))", "")], "ops",
             "Events the processors consume per second, all topics."),
        stat("Landed rows /s", [(f"sum(rate(kappa_sink_rows_total[{RATE}]))", "")], "ops",
             "Rows written to ClickHouse per second, all tables."),
        stat("Freshness p99", [("max(histogram_quantile(0.99, sum by (le, table) "
                                f"(rate(kappa_sink_event_lag_seconds_bucket[{RATE}]))))", "")], "s",
             "now - event_time when rows land (worst table); target 2 s.", threshold=2),
        stat("Consumer lag", [("sum(kappa_consumer_lag_messages)", "")], "short",
             "Messages not yet processed, all groups and partitions."),
        ts("Produced /s by topic and outcome",
           [(f"sum by (topic, outcome) (rate(kappa_producer_events_total[{RATE}]))", "{{topic}} {{outcome}}")],
           "ops", "Producer publishes: delivered, failed (broker refused) or rejected (not serializable)."),
        ts("Consumed /s by topic", [(f"sum by (topic) (rate(kappa_processor_events_total[{RATE}]))", "{{topic}}")],
           "ops", "Events the processors consume per second."),
        ts("Landed rows /s by table", [(f"sum by (table) (rate(kappa_sink_rows_total[{RATE}]))", "{{table}}")],
           "ops", "Rows landed in ClickHouse per second."),
        ts("Processor batch time", _quantiles("kappa_processor_batch_seconds", "agent"), "s",
           "Time to process one batch per agent (p50, p99)."),
        row("Lag and freshness"),
        ts("Consumer lag by group and topic",
           [("sum by (group, topic) (kappa_consumer_lag_messages)", "{{group}} {{topic}}")], "short",
           "End offset minus committed offset; growing lag means the processors cannot keep up."),
        ts("Freshness (event time to landing)", _quantiles("kappa_sink_event_lag_seconds", "table"), "s",
           "now - event_time when a row lands in ClickHouse (p50, p99); the red line is the 2 s target.",
           threshold=2),
        row("Errors and health"),
        ts("Rejected /s by stage", [(f"sum by (stage) (rate(kappa_rejected_events_total[{RATE}]))", "{{stage}}")],
           "ops", "Events sent to the DLQ (kappa.rejected_events) per second."),
        ts("Sink insert failures /s",
           [(f"sum by (table) (rate(kappa_sink_insert_failures_total[{RATE}]))", "{{table}}")], "ops",
           "Failed ClickHouse inserts (each is retried)."),
        ts("Components up", [("min by (component) (kappa_component_up)", "{{component}}"),
                             ('min by (service) (up{job="kappa"})', "scrape {{service}}")], "short",
           "1 = running and healthy (self-reported), scrape = Prometheus reaches the endpoint.", min=0, max=1),
        stat("Alerts firing", [('count(ALERTS{alertstate="firing", alertname=~"Kappa.*"}) or vector(0)', "")],
             "short", "Kappa alerts firing now (deploy/prometheus/rules).", threshold=1),
    ])


def data_quality() -> dict[str, Any]:
    """Where bad, duplicate and late input goes: nothing is silently lost."""
    rng = "$__range"
    return _dashboard("kappa-data-quality", "Kappa / Data quality",
                      "Rejected events by reason, duplicates, late events and reconciliation counts.", [
        stat("Rejected (range)", [(f"sum(increase(kappa_rejected_events_total[{rng}]))", "")], "short",
             "Events rejected in the selected time range; each row is in kappa.rejected_events."),
        stat("Duplicates dropped (range)", [(f"sum(increase(kappa_processor_duplicates_total[{rng}]))", "")],
             "short", "Events dropped because their declared id was seen before (first one wins)."),
        stat("Too late (range)",
             [(f'sum(increase(kappa_processor_late_events_total{{kind="too_late"}}[{rng}]))', "")], "short",
             "Events after their window's grace period: counted and kept (late), added to no window."),
        stat("Delivered (range)",
             [(f'sum(increase(kappa_producer_events_total{{outcome="delivered"}}[{rng}]))', "")], "short",
             "Events published; reconciliation: delivered = landed + rejected + duplicates."),
        ts("Rejected /s by reason", [(f"sum by (reason) (rate(kappa_rejected_events_total[{RATE}]))", "{{reason}}")],
           "ops", "Reason codes of the pipeline's rules (pipeline.toml, e.g. bad_amount)."),
        ts("Reject ratio by topic",
           [(f"sum by (topic) (rate(kappa_rejected_events_total[{RATE}])) "
             f"/ sum by (topic) (rate(kappa_processor_events_total[{RATE}]))", "{{topic}}")],
           "percentunit", "Rejected / consumed; alert KappaRejectsSpike fires above 5 %.", threshold=0.05),
        ts("Rejected by stage and topic (range)",
           [(f"sum by (stage, topic) (increase(kappa_rejected_events_total[{rng}]))", "{{stage}} {{topic}}")],
           "short", "Where in the pipeline events are rejected (producer, validation, ...)."),
        ts("Duplicates dropped /s by stream",
           [(f"sum by (stream) (rate(kappa_processor_duplicates_total[{RATE}]))", "{{stream}}")],
           "ops", "Events dropped as duplicates of an earlier one with the same declared id."),
        ts("Late events /s by kind",
           [(f"sum by (kind, stream) (rate(kappa_processor_late_events_total[{RATE}]))", "{{stream}} {{kind}}")],
           "ops",
           "within_grace: the window is updated; too_late: counted and reported only."),
    ])


def sinks() -> dict[str, Any]:
    """ClickHouse writes: volume, batch shape, latency, failures."""
    return _dashboard("kappa-sinks", "Kappa / Sinks", "ClickHouse batch writers: rows, batches, latency, failures.", [
        ts("Rows landed /s by table", [(f"sum by (table) (rate(kappa_sink_rows_total[{RATE}]))", "{{table}}")],
           "ops", "Rows landed in ClickHouse per second."),
        ts("Insert latency", _quantiles("kappa_sink_batch_seconds", "table"), "s",
           "Time of one ClickHouse insert (p50, p99)."),
        ts("Batch size", _quantiles("kappa_sink_batch_rows", "table"), "short",
           "Rows per insert batch (p50, p99): large batches are what makes inserts cheap."),
        ts("Mean batch size",
           [(f"sum by (table) (rate(kappa_sink_batch_rows_sum[{RATE}])) "
             f"/ sum by (table) (rate(kappa_sink_batch_rows_count[{RATE}]))", "{{table}}")], "short",
           "Average rows per insert."),
        ts("Inserts /s", [(f"sum by (table) (rate(kappa_sink_batch_seconds_count[{RATE}]))", "{{table}}")],
           "ops", "ClickHouse insert statements per second."),
        ts("Insert failures /s (retried)",
           [(f"sum by (table) (rate(kappa_sink_insert_failures_total[{RATE}]))", "{{table}}")], "ops",
           "Failed inserts; the sink retries them, alerts KappaSinkInsertsFailing / KappaSinkStalled."),
        ts("Freshness p99 by table", _quantiles("kappa_sink_event_lag_seconds", "table", (0.99,)), "s",
           "now - event_time at landing; target 2 s.", threshold=2),
    ])


def models() -> dict[str, Any]:
    """Online models: progressive quality over time, with drift detections as markers."""
    sel = 'model=~"$model"'
    variable = {
        "name": "model", "label": "Model", "type": "query", "datasource": DATASOURCE,
        "query": {"query": "label_values(kappa_model_quality_ratio, model)", "refId": "models"},
        "definition": "label_values(kappa_model_quality_ratio, model)",
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*", "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }
    drift = {
        "name": "Drift detected", "datasource": DATASOURCE, "enable": True, "iconColor": "red",
        "expr": f"changes(kappa_model_drift_detections_total{{{sel}}}[1m]) > 0",
        "step": "1m", "titleFormat": "Drift: {{model}}", "tagKeys": "model", "useValueForTime": False,
    }
    return _dashboard("kappa-models", "Kappa / Model quality",
                      "Progressive (predict, then learn) metrics of the online models; red markers are drift.", [
        ts("ROC AUC", [(f'kappa_model_quality_ratio{{metric="roc_auc", {sel}}}', "{{model}}")], "percentunit",
           "Cumulative progressive ROC AUC; alert KappaModelAucDropping on a drop of 0.05 from the last hour's best.",
           w=24, min=0, max=1),
        ts("Accuracy", [(f'kappa_model_quality_ratio{{metric="accuracy", {sel}}}', "{{model}}")], "percentunit",
           "Cumulative progressive accuracy.", min=0, max=1),
        ts("Log loss", [(f'kappa_model_quality_ratio{{metric="log_loss", {sel}}}', "{{model}}")], "short",
           "Cumulative progressive log loss (lower is better)."),
        ts("Labelled samples /s", [(f"sum by (model) (rate(kappa_model_labelled_total{{{sel}}}[{RATE}]))",
                                    "{{model}}")], "ops", "Samples learned per second (labels arrive late)."),
        ts("Drift detections (range)",
           [(f"sum by (model) (increase(kappa_model_drift_detections_total{{{sel}}}[$__range]))", "{{model}}")],
           "short", "Drift detector firings in the selected range."),
    ], variables=[variable], annotations=[drift])


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON model."""
    return {"overview.json": overview(), "data-quality.json": data_quality(),
            "sinks.json": sinks(), "model-quality.json": models()}


def main(argv: list[str]) -> int:
    """Write the dashboards, or with ``--check`` report stale files and return 1."""
    stale = []
    for name, model in dashboards().items():
        text = json.dumps(model, indent=2) + "\n"
        path = OUT / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards {stale}: run python deploy/grafana/generate_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
