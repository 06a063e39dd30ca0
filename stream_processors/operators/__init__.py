"""Generic stream operators: the exactly-once machinery (first-occurrence offsets, per-partition
watermarks, update-style outputs with revisions) inside operators a pipeline declares.

Nothing here names a pipeline's fields: the e-commerce pipeline binds them in
:mod:`stream_processors.windows`.
"""

from stream_processors.operators.windows import (
    Aggregation,
    PartitionWindows,
    WindowMerge,
    WindowSpec,
    WindowSpecError,
    WindowTotal,
    parse_duration,
    parse_window,
)

__all__ = [
    "Aggregation",
    "PartitionWindows",
    "WindowMerge",
    "WindowSpec",
    "WindowSpecError",
    "WindowTotal",
    "parse_duration",
    "parse_window",
]
