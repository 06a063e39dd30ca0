"""The e-commerce example's generator and demo report, for tests.

``examples/ecommerce`` is a pipeline project, not a package: its modules load through the
definition (as Kappa loads them), under ``kappa_pipelines.ecommerce.*``.
"""

from __future__ import annotations

from kappa.pipeline import DEFAULT, load

__all__ = ["FUTURE_OFFSET_MS", "ORDER_REASONS", "Event", "GeneratorConfig", "Manifest", "generate",
           "manifest_of", "publish_events", "reconcile"]

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
