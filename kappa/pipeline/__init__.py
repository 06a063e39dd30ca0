"""Pipeline definitions: the project file a pipeline is derived from (:mod:`kappa.pipeline.definition`)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from kappa.pipeline.definition import Input, Pipeline, PipelineError, load, parse_duration

__all__ = ["DEFAULT", "Input", "Pipeline", "PipelineError", "current", "load", "parse_duration", "selected_path"]

DEFAULT = Path(__file__).resolve().parents[2] / "examples" / "ecommerce"
"""The e-commerce example: the pipeline when none is named (``--pipeline`` / ``KAPPA_PIPELINE``)."""


def selected_path() -> Path:
    """The project directory of the selected pipeline: ``KAPPA_PIPELINE``, else :data:`DEFAULT`."""
    chosen = os.environ.get("KAPPA_PIPELINE")
    return Path(chosen).expanduser().resolve() if chosen else DEFAULT


@functools.cache
def _load(path: Path) -> Pipeline:
    return load(path)


def current() -> Pipeline:
    """The selected pipeline, loaded once per process and path."""
    return _load(selected_path())
