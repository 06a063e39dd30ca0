"""Kappa's generic operators: each keeps its state in the worker's partitioned table and is
idempotent under re-delivery (first-occurrence offsets, per-partition watermarks, update-style
outputs with revisions). A pipeline definition (:mod:`kappa.pipeline`) says which run where.

Nothing here names a pipeline's fields: ``windows`` (tumbling and hopping event-time windows),
``sessions`` (session windows per key), ``joins`` (interval joins of two streams), ``dedupe``,
``asof``; each declared window is bound by the stream stage (:mod:`stream_processors.stream`)."""
