"""Generate the Grafana dashboards of deploy/grafana/dashboards/*.json from one description.

Why generated: panel ids, grid positions and the datasource reference stay consistent, and a
reviewer reads the PromQL here instead of in 2,000 lines of JSON. The JSON is committed (Grafana
provisioning loads it as is); ``--check`` fails when it is stale, and tests/unit/test_dashboards.py
runs that check.

    python deploy/grafana/generate_dashboards.py          # rewrite the JSON
    python deploy/grafana/generate_dashboards.py --check  # exit 1 when the JSON is stale

Generic over pipeline definitions: every dashboard has a ``$pipeline`` variable (the label
every Kappa series carries) and every query filters on it; panels per entity group by the
entity's label (``stream``, ``topic``, ``table``, ``model``), with a variable of that name
where the dashboard is about those entities. No panel names one pipeline's inputs or tables.
Template variables used in expressions: ``$__rate_interval`` and ``$__range`` (Grafana
built-ins), ``$pipeline`` (every dashboard), ``$topic`` and ``$stream`` (Data quality),
``$table`` (Sinks) and ``$model`` (Model quality).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["DATASOURCE", "PIPELINE", "SCHEMA_VERSION", "dashboards", "main", "sel", "variable"]

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "kappa-prometheus"}
"""Fixed uid, provisioned by provisioning/datasources/prometheus.yml."""
SCHEMA_VERSION = 39
"""Grafana 10.4 / 11 dashboard schema."""
RATE = "$__rate_interval"
PIPELINE = 'pipeline=~"$pipeline"'
"""Every Kappa series carries ``pipeline`` (kappa.metrics.PipelineLabel); every query filters on it."""

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


def sel(metric: str, *matchers: str) -> str:
    """``metric{pipeline=~"$pipeline", ...}``: every query is scoped to the selected pipelines.

    >>> sel("kappa_sink_rows_total", 'table=~"$table"')
    'kappa_sink_rows_total{pipeline=~"$pipeline", table=~"$table"}'
    """
    return f"{metric}{{{', '.join((PIPELINE, *matchers))}}}"


def variable(name: str, label: str, metric: str) -> dict[str, Any]:
    """A multi-value template variable over the values of label ``name`` of ``metric``.

    ``pipeline`` lists every pipeline that exports metrics; the others (stream, topic, table,
    model) list the entities of the selected pipelines, so the dashboards follow whatever the
    pipeline definitions declare.
    """
    selector = metric if name == "pipeline" else (
        f"{metric[:-1]}, {PIPELINE}}}" if metric.endswith("}") else f"{metric}{{{PIPELINE}}}")
    definition = f"label_values({selector}, {name})"
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": definition, "refId": f"{name}s"}, "definition": definition,
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*", "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def _pipeline_variable() -> dict[str, Any]:
    return variable("pipeline", "Pipeline", "kappa_component_up")


def _quantiles(metric: str, by: str, qs: tuple[float, ...] = (0.5, 0.99), *matchers: str) -> list[Target]:
    buckets = sel(f"{metric}_bucket", *matchers)
    return [(f"histogram_quantile({q}, sum by (le, pipeline, {by}) (rate({buckets}[{RATE}])))",
             f"p{round(q * 100)} {{{{pipeline}}}} {{{{{by}}}}}") for q in qs]


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
    """Throughput, lag, freshness, errors: is each pipeline keeping up, and is it healthy?"""
    up = sel("up", 'job="kappa"')
    alerts = sel("ALERTS", 'alertstate="firing"', 'alertname=~"Kappa.*"')
    return _dashboard("kappa-overview", "Kappa / Pipeline overview",
                      "Throughput, consumer lag, freshness and errors of the selected pipelines.", [
        row("Throughput"),
        stat("Consumed /s", [(f"sum(rate({sel('kappa_processor_events_total')}[{RATE}]))", "")], "ops",
             "Events the processors consume per second, all input topics of the selected pipelines."),
        stat("Landed rows /s", [(f"sum(rate({sel('kappa_sink_rows_total')}[{RATE}]))", "")], "ops",
             "Rows written to ClickHouse per second, all tables of the selected pipelines."),
        stat("Freshness p99", [("max(histogram_quantile(0.99, sum by (le, pipeline, table) "
                                f"(rate({sel('kappa_sink_event_lag_seconds_bucket')}[{RATE}]))))", "")], "s",
             "now - event_time when rows land (worst table); target 2 s.", threshold=2),
        stat("Consumer lag", [(f"sum({sel('kappa_consumer_lag_messages')})", "")], "short",
             "Messages not yet processed, all groups and partitions of the selected pipelines."),
        ts("Produced /s by topic and outcome",
           [(f"sum by (pipeline, topic, outcome) (rate({sel('kappa_producer_events_total')}[{RATE}]))",
             "{{pipeline}} {{topic}} {{outcome}}")],
           "ops", "Producer publishes: delivered, failed (broker refused) or rejected (not serializable)."),
        ts("Consumed /s by topic",
           [(f"sum by (pipeline, topic) (rate({sel('kappa_processor_events_total')}[{RATE}]))",
             "{{pipeline}} {{topic}}")],
           "ops", "Events the processors consume per second, per input topic the definition declares."),
        ts("Landed rows /s by table",
           [(f"sum by (pipeline, table) (rate({sel('kappa_sink_rows_total')}[{RATE}]))", "{{pipeline}} {{table}}")],
           "ops", "Rows landed in ClickHouse per second, per table the definition derives."),
        ts("Processor batch time", _quantiles("kappa_processor_batch_seconds", "agent"), "s",
           "Time to process one batch per agent (one per stream and window of the definition; p50, p99)."),
        row("Lag and freshness"),
        ts("Consumer lag by group and topic",
           [(f"sum by (pipeline, group, topic) ({sel('kappa_consumer_lag_messages')})",
             "{{pipeline}} {{group}} {{topic}}")], "short",
           "End offset minus committed offset; growing lag means the processors cannot keep up."),
        ts("Freshness (event time to landing)", _quantiles("kappa_sink_event_lag_seconds", "table"), "s",
           "now - event_time when a row lands in ClickHouse (p50, p99); the red line is the 2 s target.",
           threshold=2),
        row("Errors and health"),
        ts("Rejected /s by stage",
           [(f"sum by (pipeline, stage) (rate({sel('kappa_rejected_events_total')}[{RATE}]))",
             "{{pipeline}} {{stage}}")],
           "ops", "Events sent to the DLQ (the pipeline's rejected_events view) per second."),
        ts("Sink insert failures /s",
           [(f"sum by (pipeline, table) (rate({sel('kappa_sink_insert_failures_total')}[{RATE}]))",
             "{{pipeline}} {{table}}")], "ops",
           "Failed ClickHouse inserts (each is retried)."),
        ts("Components up", [(f"min by (pipeline, component) ({sel('kappa_component_up')})",
                              "{{pipeline}} {{component}}"),
                             (f"min by (pipeline, service) ({up})",
                              "scrape {{pipeline}} {{service}}")], "short",
           "1 = running and healthy (self-reported), scrape = Prometheus reaches the endpoint.", min=0, max=1),
        stat("Alerts firing",
             [(f"count({alerts}) or vector(0)", "")],
             "short", "Kappa alerts of the selected pipelines firing now (deploy/prometheus/rules).", threshold=1),
    ], variables=[_pipeline_variable()])


STREAM_METRICS = '{__name__=~"kappa_processor_duplicates_total|kappa_processor_late_events_total"}'
"""The series labelled by ``stream``: inputs with a declared id (dedupe) and windowed streams."""


def data_quality() -> dict[str, Any]:
    """Where bad, duplicate and late input goes: nothing is silently lost."""
    rng = "$__range"
    topic, stream = 'topic=~"$topic"', 'stream=~"$stream"'
    too_late = sel("kappa_processor_late_events_total", 'kind="too_late"', stream)
    delivered = sel("kappa_producer_events_total", 'outcome="delivered"', topic)
    return _dashboard("kappa-data-quality", "Kappa / Data quality",
                      "Rejected events by reason, duplicates, late events and reconciliation counts, "
                      "per input topic and stream of the selected pipelines.", [
        stat("Rejected (range)", [(f"sum(increase({sel('kappa_rejected_events_total', topic)}[{rng}]))", "")],
             "short", "Events rejected in the selected time range; each row is in the pipeline's "
             "rejected_events view."),
        stat("Duplicates dropped (range)",
             [(f"sum(increase({sel('kappa_processor_duplicates_total', stream)}[{rng}]))", "")],
             "short", "Events dropped because their declared id was seen before (first one wins)."),
        stat("Too late (range)",
             [(f"sum(increase({too_late}[{rng}]))",
               "")], "short",
             "Events after their window's grace period: counted and kept (late), added to no window."),
        stat("Delivered (range)",
             [(f"sum(increase({delivered}[{rng}]))",
               "")], "short",
             "Events published; reconciliation: delivered = landed + rejected + duplicates."),
        ts("Rejected /s by reason",
           [(f"sum by (pipeline, reason) (rate({sel('kappa_rejected_events_total', topic)}[{RATE}]))",
             "{{pipeline}} {{reason}}")],
           "ops", "Reason codes of the pipeline's rules (the `code` of each rule in pipeline.toml)."),
        ts("Reject ratio by topic",
           [(f"sum by (pipeline, topic) (rate({sel('kappa_rejected_events_total', topic)}[{RATE}])) "
             f"/ sum by (pipeline, topic) (rate({sel('kappa_processor_events_total', topic)}[{RATE}]))",
             "{{pipeline}} {{topic}}")],
           "percentunit", "Rejected / consumed; alert KappaRejectsSpike fires above 5 %.", threshold=0.05),
        ts("Rejected by stage and topic (range)",
           [(f"sum by (pipeline, stage, topic) (increase({sel('kappa_rejected_events_total', topic)}[{rng}]))",
             "{{pipeline}} {{stage}} {{topic}}")],
           "short", "Where in the pipeline events are rejected (producer, processor)."),
        ts("Duplicates dropped /s by stream",
           [(f"sum by (pipeline, stream) (rate({sel('kappa_processor_duplicates_total', stream)}[{RATE}]))",
             "{{pipeline}} {{stream}}")],
           "ops", "Events dropped as duplicates of an earlier one with the same declared id (inputs with `id`)."),
        ts("Late events /s by kind",
           [(f"sum by (pipeline, kind, stream) (rate({sel('kappa_processor_late_events_total', stream)}[{RATE}]))",
             "{{pipeline}} {{stream}} {{kind}}")],
           "ops",
           "Per windowed stream; within_grace: the window is updated; too_late: counted and reported only."),
    ], variables=[_pipeline_variable(), variable("topic", "Topic", "kappa_processor_events_total"),
                  variable("stream", "Stream", STREAM_METRICS)])


def sinks() -> dict[str, Any]:
    """ClickHouse writes: volume, batch shape, latency, failures, per table of the definition."""
    table = 'table=~"$table"'
    return _dashboard("kappa-sinks", "Kappa / Sinks",
                      "ClickHouse batch writers: rows, batches, latency, failures, per table of the selected "
                      "pipelines.", [
        ts("Rows landed /s by table",
           [(f"sum by (pipeline, table) (rate({sel('kappa_sink_rows_total', table)}[{RATE}]))",
             "{{pipeline}} {{table}}")],
           "ops", "Rows landed in ClickHouse per second."),
        ts("Insert latency", _quantiles("kappa_sink_batch_seconds", "table", (0.5, 0.99), table), "s",
           "Time of one ClickHouse insert (p50, p99)."),
        ts("Batch size", _quantiles("kappa_sink_batch_rows", "table", (0.5, 0.99), table), "short",
           "Rows per insert batch (p50, p99): large batches are what makes inserts cheap."),
        ts("Mean batch size",
           [(f"sum by (pipeline, table) (rate({sel('kappa_sink_batch_rows_sum', table)}[{RATE}])) "
             f"/ sum by (pipeline, table) (rate({sel('kappa_sink_batch_rows_count', table)}[{RATE}]))",
             "{{pipeline}} {{table}}")], "short",
           "Average rows per insert."),
        ts("Inserts /s",
           [(f"sum by (pipeline, table) (rate({sel('kappa_sink_batch_seconds_count', table)}[{RATE}]))",
             "{{pipeline}} {{table}}")],
           "ops", "ClickHouse insert statements per second."),
        ts("Insert failures /s (retried)",
           [(f"sum by (pipeline, table) (rate({sel('kappa_sink_insert_failures_total', table)}[{RATE}]))",
             "{{pipeline}} {{table}}")], "ops",
           "Failed inserts; the sink retries them, alerts KappaSinkInsertsFailing / KappaSinkStalled."),
        ts("Freshness p99 by table", _quantiles("kappa_sink_event_lag_seconds", "table", (0.99,), table), "s",
           "now - event_time at landing; target 2 s.", threshold=2),
    ], variables=[_pipeline_variable(), variable("table", "Table", "kappa_sink_rows_total")])


def models() -> dict[str, Any]:
    """Online models: progressive quality over time, with drift detections as markers."""
    model = 'model=~"$model"'
    drift = {
        "name": "Drift detected", "datasource": DATASOURCE, "enable": True, "iconColor": "red",
        "expr": f"changes({sel('kappa_model_drift_detections_total', model)}[1m]) > 0",
        "step": "1m", "titleFormat": "Drift: {{pipeline}} {{model}}", "tagKeys": "pipeline,model",
        "useValueForTime": False,
    }
    return _dashboard("kappa-models", "Kappa / Model quality",
                      "Progressive (predict, then learn) metrics of the models the selected pipelines declare; "
                      "red markers are drift.", [
        ts("ROC AUC", [(sel("kappa_model_quality_ratio", 'metric="roc_auc"', model), "{{pipeline}} {{model}}")],
           "percentunit",
           "Cumulative progressive ROC AUC; alert KappaModelAucDropping on a drop of 0.05 from the last hour's best.",
           w=24, min=0, max=1),
        ts("Accuracy", [(sel("kappa_model_quality_ratio", 'metric="accuracy"', model), "{{pipeline}} {{model}}")],
           "percentunit", "Cumulative progressive accuracy.", min=0, max=1),
        ts("Log loss", [(sel("kappa_model_quality_ratio", 'metric="log_loss"', model), "{{pipeline}} {{model}}")],
           "short", "Cumulative progressive log loss (lower is better)."),
        ts("Labelled samples /s",
           [(f"sum by (pipeline, model) (rate({sel('kappa_model_labelled_total', model)}[{RATE}]))",
             "{{pipeline}} {{model}}")], "ops", "Samples learned per second (labels arrive late)."),
        ts("Drift detections (range)",
           [(f"sum by (pipeline, model) (increase({sel('kappa_model_drift_detections_total', model)}[$__range]))",
             "{{pipeline}} {{model}}")],
           "short", "Drift detector firings in the selected range."),
    ], variables=[_pipeline_variable(), variable("model", "Model", "kappa_model_quality_ratio")],
       annotations=[drift])


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
