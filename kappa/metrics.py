"""Every Prometheus metric Kappa exports, defined once: ``kappa_<component>_<what>_<unit>``.

Each long-running process calls :func:`serve` once to expose ``/metrics`` on 127.0.0.1.
Histogram buckets are in the unit named by the metric (seconds).

How they are used (deploy/prometheus/rules, deploy/grafana/dashboards):

- update per batch, never per event: ``CONSUMED.labels(topic).inc(len(batch))`` (the overhead
  is measured by benchmarks/metrics_overhead.py);
- create the label children you know at start (``DRIFT_DETECTIONS.labels(model)``,
  ``SINK_INSERT_FAILURES.labels(table)``): a counter that first appears at 1 has no
  ``increase()`` in Prometheus, so the first event would not show on the dashboards;
- keep label values stable and few (topic, table, model, reason code), never ids.

Every ``kappa_*`` series also carries ``pipeline`` (the selected pipeline's ``[pipeline] name``):
:func:`serve` exposes the metrics through :class:`PipelineLabel`, which adds it when Prometheus
scrapes, so the hot path keeps its label tuples and one Prometheus can watch several pipelines.
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from kappa.errors import ConfigError
from kappa.pipeline import current
from kappa.settings import get_settings
from kappa.stack.process import free_port, port_free

__all__ = [
    "BATCH_SECONDS",
    "COMPONENT_UP",
    "CONSUMED",
    "CONSUMER_LAG",
    "DRIFT_DETECTIONS",
    "DUPLICATES",
    "EVENT_LAG_SECONDS",
    "LATE_EVENTS",
    "MODEL_EVENTS",
    "MODEL_LABELLED",
    "MODEL_METRIC",
    "PIPELINE_LABEL",
    "PRODUCED",
    "REJECTED",
    "SINK_BATCH_ROWS",
    "SINK_BATCH_SECONDS",
    "SINK_INSERT_FAILURES",
    "SINK_ROWS",
    "SKIPPED_REFETCHED",
    "STALLS_REREAD",
    "TARGETS_DIR",
    "PipelineLabel",
    "list_targets",
    "serve",
    "targets_dir",
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
DUPLICATES = Counter("kappa_processor_duplicates_total",
                     "Events dropped as duplicates of an earlier one with the same declared id, by stream.",
                     ["stream"])
LATE_EVENTS = Counter("kappa_processor_late_events_total",
                      "Events after their window's end, by stream: within grace (updated) or too late "
                      "(counted only).", ["kind", "stream"])  # kind: within_grace | too_late
SKIPPED_REFETCHED = Counter("kappa_processor_skipped_refetched_total",
                            "Input records Faust skipped (around a rebalance) that the stage read itself.",
                            ["topic"])
STALLS_REREAD = Counter("kappa_processor_stalls_reread_total",
                        "Source partitions Faust stopped delivering, sought back to their committed offset.",
                        ["topic"])
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
MODEL_EVENTS = Counter("kappa_model_events_total",
                       "Online-learning events by outcome: scored, learned, orphan_label, orphan_matched, "
                       "orphan_expired, features_expired, duplicate, late, redelivered.",
                       ["model", "outcome"])
DRIFT_DETECTIONS = Counter("kappa_model_drift_detections_total", "Drift detections, by model.", ["model"])
COMPONENT_UP = Gauge("kappa_component_up", "1 while the component runs and is healthy.", ["component"])


PIPELINE_LABEL = "pipeline"
"""The label :class:`PipelineLabel` adds to every ``kappa_*`` sample (and ``_register`` to the target)."""


class PipelineLabel(Collector):
    """The ``kappa_*`` metrics of ``source`` with ``pipeline="<name>"`` added to every sample.

    Why at scrape time: the label is the same for every series of a process (a process runs one
    pipeline), so adding it to each ``labels(...)`` call would cost every batch and every call
    site; here it costs one dict per sample per scrape. Other series (``process_*``,
    ``python_*``) are left as they are.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> source = CollectorRegistry()
    >>> Counter("kappa_demo_events_total", "Demo.", ["topic"], registry=source).labels("t").inc()
    >>> registry = CollectorRegistry()
    >>> registry.register(PipelineLabel("iot", source))
    >>> [ln for ln in generate_latest(registry).decode().splitlines() if ln.startswith("kappa_demo_events_total")]
    ['kappa_demo_events_total{pipeline="iot",topic="t"} 1.0']
    """

    def __init__(self, pipeline: str, source: Collector = REGISTRY) -> None:
        self.pipeline = pipeline
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():  # fresh Metric objects on every collect
            if family.name.startswith("kappa_"):
                family.samples = [s._replace(labels={PIPELINE_LABEL: self.pipeline, **s.labels})
                                  for s in family.samples]
            yield family


def _labelled(pipeline: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PipelineLabel(pipeline))
    return registry


TARGETS_DIR = Path("metrics") / "targets"
"""Under ``KAPPA_HOME``: one Prometheus file_sd JSON per live endpoint (``<component>-<pid>.json``)."""


def targets_dir(home: Path) -> Path:
    """The file_sd directory the local Prometheus watches (``kappa up --with-prometheus``)."""
    return home / TARGETS_DIR


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_target(path: Path) -> tuple[str, str, int] | None:
    """(component, address, pid) of one file_sd file, None when unreadable/foreign."""
    try:
        entry = json.loads(path.read_text())[0]
        labels = entry["labels"]
        return str(labels["service"]), str(entry["targets"][0]), int(labels["pid"])
    except (OSError, ValueError, LookupError, TypeError):
        return None


def _register(home: Path, component: str, host: str, port: int, pipeline: str) -> Path:
    """Write this process's file_sd target atomically and remove it at exit.

    Why: ports are picked at random so several workers never collide; Prometheus finds them
    through this directory instead. A process killed with -9 leaves its file behind, so
    Prometheus reports ``up == 0`` for it (the component-down alert) until the component
    restarts and prunes the dead files of its own name.
    """
    folder = targets_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{component}-*.json"):
        found = _read_target(stale)
        if found and found[0] == component and not _pid_alive(found[2]):
            stale.unlink(missing_ok=True)
    pid = os.getpid()
    address = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    path = folder / f"{component}-{pid}.json"
    tmp = path.with_name(path.name + ".tmp")  # not *.json: Prometheus never reads half a file
    # target label `service`, not `component`: kappa_component_up has its own `component` label,
    # and a clash would make Prometheus rename it to exported_component. `pipeline` is on the
    # samples too (the same value): the local scrape config honors theirs, and `up` gets this one
    tmp.write_text(json.dumps([{"targets": [address],
                                "labels": {"service": component, "pid": str(pid), PIPELINE_LABEL: pipeline}}]))
    tmp.replace(path)

    def _unregister() -> None:
        if os.getpid() == pid:  # a forked child must not remove its parent's registration
            path.unlink(missing_ok=True)

    atexit.register(_unregister)
    return path


def list_targets(home: Path) -> list[tuple[str, str]]:
    """(component, address) of every live metrics endpoint registered under ``home``.

    ``kappa status`` prints these; files of dead processes are skipped (not deleted: they are
    what makes Prometheus see the crash).
    """
    out = []
    for path in sorted(targets_dir(home).glob("*.json")):
        found = _read_target(path)
        if found and _pid_alive(found[2]):
            out.append((found[0], found[1]))
    return out


def _pick_port(base: int) -> int:
    """``base`` or the next free port above it (several workers per host share one base)."""
    for port in range(base, base + 100):
        if port_free(port):
            return port
    raise ConfigError(
        f"no free metrics port in {base}..{base + 99}: set KAPPA_METRICS_PORT to another base "
        "or to 0 (free ports, found through file_sd)"
    )


def serve(component: str, port: int = 0) -> int:
    """Expose ``/metrics``, register it for Prometheus, mark ``component`` up; return the port.

    ``port`` 0 means ``KAPPA_METRICS_PORT`` (the first free port from that base) or, when that
    is 0 too, any free port. The address is ``KAPPA_METRICS_HOST`` (127.0.0.1 by default;
    containers set 0.0.0.0 so Prometheus in another container can scrape). Every ``kappa_*``
    series is served with the selected pipeline's name as ``pipeline`` (:class:`PipelineLabel`).
    """
    settings = get_settings()
    pipeline = current().name
    registry = _labelled(pipeline)
    host = settings.metrics_host
    for attempt in range(5):
        chosen = port or (_pick_port(settings.metrics_port) if settings.metrics_port else free_port())
        try:
            start_http_server(chosen, addr=host, registry=registry)
            break
        except OSError as exc:  # lost the race for a free port to another process
            if port or attempt == 4:
                raise ConfigError(
                    f"cannot serve metrics of {component} on {host}:{chosen}: {exc}; pick another "
                    "port (KAPPA_METRICS_PORT) or leave it 0"
                ) from exc
    _register(settings.home.resolve(), component, host, chosen, pipeline)
    _precreate(component)
    COMPONENT_UP.labels(component).set(1)
    return chosen


def _precreate(component: str) -> None:
    """Export 0-valued series for counters that may stay at zero (failures, drift detections).

    Without them a panel or alert over ``rate()``/``increase()`` has no data until the first
    failure, and the first increment is invisible to ``increase()``. Label values come from the
    selected pipeline's definition: its tables, declared ids, windows and models.
    """
    pipe = current()
    if component == "sink":
        from sinks.rows import TABLES  # the selected pipeline's tables

        for table in (t for t in TABLES if t != "sink_offsets"):
            SINK_INSERT_FAILURES.labels(table)
            SINK_ROWS.labels(table)
    elif component == "processor":
        for model in pipe.models:
            DRIFT_DETECTIONS.labels(model)
            MODEL_LABELLED.labels(model)
        for name, inp in pipe.inputs.items():
            if inp.id:
                DUPLICATES.labels(name)
        for w in pipe.windows.values():
            for kind in ("within_grace", "too_late"):
                LATE_EVENTS.labels(kind, w.stream)
