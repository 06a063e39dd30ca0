"""Every Kappa series carries its pipeline; pre-created label values come from the definition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from kappa import metrics

REPO = Path(__file__).resolve().parents[2]
IOT = REPO / "examples" / "iot"


def test_every_kappa_sample_gets_the_pipeline_and_keeps_its_labels() -> None:
    metrics.CONSUMED.labels("t.readings").inc(0)
    metrics.SINK_BATCH_SECONDS.labels("site_metrics").observe(0.01)
    families = list(metrics._labelled("iot").collect())
    kappa = [f for f in families if f.name.startswith("kappa_")]
    declared = {obj._name: obj._labelnames for obj in vars(metrics).values()
                if isinstance(obj, MetricWrapperBase)}
    assert {f.name for f in kappa} == set(declared)
    samples = [(f.name, s) for f in kappa for s in f.samples]
    assert samples
    for name, sample in samples:
        assert sample.labels["pipeline"] == "iot", sample
        assert set(declared[name]) <= set(sample.labels), sample  # existing labels unchanged
    consumed = [s for n, s in samples if s.name == "kappa_processor_events_total"]
    assert {"pipeline": "iot", "topic": "t.readings"} in [s.labels for s in consumed]
    # the hot path's children are the same objects, without the label
    assert metrics.CONSUMED.labels("t.readings") is metrics.CONSUMED.labels("t.readings")
    other = [s for f in families if not f.name.startswith("kappa_") for s in f.samples]
    assert all("pipeline" not in s.labels for s in other)


def test_the_target_file_names_the_pipeline(tmp_path: Path) -> None:
    path = metrics._register(tmp_path, "sink", "127.0.0.1", 9999, "iot")
    (entry,) = json.loads(path.read_text())
    assert entry["labels"]["pipeline"] == "iot" and entry["labels"]["service"] == "sink"
    assert metrics.list_targets(tmp_path) == [("sink", "127.0.0.1:9999")]
    path.unlink()


def _children(metric: MetricWrapperBase) -> set[tuple[str, ...]]:
    return {tuple(values) for values in metric._metrics}


def test_precreated_label_values_come_from_the_loaded_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAPPA_PIPELINE", str(IOT))
    drift, late, dups = (_children(m) for m in (metrics.DRIFT_DETECTIONS, metrics.LATE_EVENTS, metrics.DUPLICATES))
    metrics._precreate("processor")
    assert _children(metrics.DRIFT_DETECTIONS) - drift <= {("faults",)}  # examples/iot's [models.faults]
    assert ("faults",) in _children(metrics.DRIFT_DETECTIONS)
    assert _children(metrics.DUPLICATES) - dups <= {("readings",)}
    assert ("readings",) in _children(metrics.DUPLICATES)
    assert {("within_grace", "readings"), ("too_late", "readings")} <= _children(metrics.LATE_EVENTS) | late
    monkeypatch.setenv("KAPPA_PIPELINE", str(REPO / "examples" / "ecommerce"))
    metrics._precreate("processor")
    assert ("fraud",) in _children(metrics.DRIFT_DETECTIONS)  # the e-commerce definition's [models.fraud]
    assert ("fraud",) in _children(metrics.MODEL_LABELLED)
