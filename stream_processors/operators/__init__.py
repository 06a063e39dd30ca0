"""Kappa's generic operators: each keeps its state in the worker's partitioned table and is
idempotent under re-delivery (first-occurrence offsets, per-partition watermarks, update-style
outputs with revisions). A pipeline definition (:mod:`kappa.pipeline`) says which run where."""
