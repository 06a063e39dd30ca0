"""Every Prometheus metric Kappa exports, defined once: ``kappa_<component>_<what>_<unit>``.

Each long-running process calls :func:`serve` once to expose ``/metrics`` on 127.0.0.1.
Histogram buckets are in the unit named by the metric (seconds).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kappa.stack.process import free_port

__all__ = [
    "BATCH_SECONDS",
    "COMPONENT_UP",
    "CONSUMED",
    "CONSUMER_LAG",
    "DRIFT_DETECTIONS",
    "DUPLICATES",
    "EVENT_LAG_SECONDS",
    "LATE_EVENTS",
    "MODEL_LABELLED",
    "MODEL_METRIC",
    "PRODUCED",
    "REJECTED",
    "SINK_BATCH_ROWS",
    "SINK_BATCH_SECONDS",
    "SINK_INSERT_FAILURES",
    "SINK_ROWS",
    "serve",
]

# Batch processing time: 1 ms .. 30 s.
_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# End-to-end lag, event produced -> landed: 50 ms .. 10 min.
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

PRODUCED = Counter("kappa_producer_events_total", "Events published, by topic and outcome.",
                   ["topic", "outcome"])  # outcome: delivered | failed | rejected
CONSUMED = Counter("kappa_processor_events_total", "Events consumed by the processors, by topic.",
                   ["topic"])
REJECTED = Counter("kappa_rejected_events_total", "Events rejected to a DLQ, by stage, topic and reason.",
                   ["stage", "topic", "reason"])
DUPLICATES = Counter("kappa_processor_duplicates_total", "Orders dropped as duplicates of an earlier order_id.")
LATE_EVENTS = Counter("kappa_processor_late_events_total",
                      "Orders after their window's end: within grace (updated) or too late (counted only).",
                      ["kind"])  # kind: within_grace | too_late
BATCH_SECONDS = Histogram("kappa_processor_batch_seconds", "Time to process one batch, in seconds.",
                          ["agent"], buckets=_BATCH_BUCKETS)
CONSUMER_LAG = Gauge("kappa_consumer_lag_messages", "End offset minus committed/position, per group and partition.",
                     ["group", "topic", "partition"])
EVENT_LAG_SECONDS = Histogram("kappa_sink_event_lag_seconds",
                              "now - event_time when a row lands in ClickHouse, in seconds.",
                              ["table"], buckets=_LAG_BUCKETS)
SINK_BATCH_ROWS = Histogram("kappa_sink_batch_rows", "Rows per ClickHouse insert batch.", ["table"],
                            buckets=(1, 10, 100, 1000, 5000, 10000, 50000, 100000))
SINK_BATCH_SECONDS = Histogram("kappa_sink_batch_seconds", "Time of one ClickHouse insert, in seconds.",
                               ["table"], buckets=_BATCH_BUCKETS)
SINK_ROWS = Counter("kappa_sink_rows_total", "Rows landed in ClickHouse, by table.", ["table"])
SINK_INSERT_FAILURES = Counter("kappa_sink_insert_failures_total",
                               "Failed ClickHouse inserts (each is retried), by table.", ["table"])
MODEL_METRIC = Gauge("kappa_model_quality_ratio", "Latest progressive metric of a model (accuracy, roc_auc, log_loss).",
                     ["model", "metric"])
MODEL_LABELLED = Counter("kappa_model_labelled_total", "Labelled samples learned, by model.", ["model"])
DRIFT_DETECTIONS = Counter("kappa_model_drift_detections_total", "Drift detections, by model.", ["model"])
COMPONENT_UP = Gauge("kappa_component_up", "1 while the component runs and is healthy.", ["component"])


def serve(component: str, port: int = 0) -> int:
    """Expose ``/metrics`` on 127.0.0.1 (``port`` 0 picks a free one); return the port."""
    port = port or free_port()
    start_http_server(port, addr="127.0.0.1")
    COMPONENT_UP.labels(component).set(1)
    return port
