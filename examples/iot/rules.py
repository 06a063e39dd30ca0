"""The IoT pipeline's rule that a field condition cannot say: the unit and range depend on the metric.

>>> unit_and_range({"metric": "temperature", "unit": "celsius", "value": 21.5}, None) is None
True
>>> unit_and_range({"metric": "temperature", "unit": "kelvin", "value": 290.0}, None)
'bad_unit: kelvin for temperature (expected celsius)'
>>> unit_and_range({"metric": "humidity", "unit": "percent", "value": 130.0}, None)
'out_of_range: humidity 130.0 outside [0.0, 100.0]'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

UNITS = {"temperature": ("celsius", -60.0, 90.0), "humidity": ("percent", 0.0, 100.0),
         "pressure": ("hpa", 800.0, 1100.0)}
"""Metric -> (unit, lowest and highest plausible value)."""


def unit_and_range(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
    """The reading's unit is its metric's, and its value is finite and plausible for it."""
    metric = rec.get("metric")
    if metric not in UNITS:
        return None  # the metric rule (declared before this one) rejects it
    unit, low, high = UNITS[metric]
    if rec.get("unit") != unit:
        return f"bad_unit: {rec.get('unit')} for {metric} (expected {unit})"
    value = rec.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) \
            or not low <= value <= high:
        return f"out_of_range: {metric} {value!r} outside [{low}, {high}]"
    return None
