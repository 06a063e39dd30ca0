"""The e-commerce example's generator and demo report, for tests.

``examples/ecommerce`` is a pipeline project, not a package: its modules load through the
definition (as Kappa loads them), under ``kappa_pipelines.ecommerce.*``.
"""

from __future__ import annotations

from typing import Any

from kappa.pipeline import DEFAULT, load
from stream_processors.operators.windows import WindowSpec, parse_window

__all__ = ["FUTURE_OFFSET_MS", "ORDER_REASONS", "REVENUE_WINDOW", "Event", "GeneratorConfig", "Manifest", "generate",
           "manifest_of", "publish_events", "reconcile", "revenue_spec"]

_PIPE = load(DEFAULT)
_GEN = _PIPE.module("generate")

FUTURE_OFFSET_MS = _GEN.FUTURE_OFFSET_MS
ORDER_REASONS = _GEN.ORDER_REASONS
Event = _GEN.Event
GeneratorConfig = _GEN.GeneratorConfig
Manifest = _GEN.Manifest
generate = _GEN.generate
manifest_of = _GEN.manifest_of
publish_events = _GEN.publish_events
reconcile = _PIPE.module("demo").reconcile

REVENUE_WINDOW: dict[str, Any] = {
    "stream": "orders",
    "size": "1m",
    "keys": ["category", "currency"],
    "aggregations": {"orders": "count", "revenue": "sum(amount)"},
}
"""The ``[windows.revenue_per_minute]`` declaration of the e-commerce pipeline (grace from settings)."""


def revenue_spec(grace_ms: int) -> WindowSpec:
    """The revenue window's operator spec with ``grace_ms``; checked against the definition."""
    spec = parse_window("revenue_per_minute", REVENUE_WINDOW, grace_ms)
    declared = _PIPE.windows["revenue_per_minute"]
    assert (spec.keys, spec.size_ms) == (declared.keys, declared.size_ms), "REVENUE_WINDOW drifted from pipeline.toml"
    return spec
