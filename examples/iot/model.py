"""The IoT pipeline's fault model: declared in pipeline.toml under ``[models.faults]`` (the generic
operator: stream_processors.operators.model), learning the technicians' delayed fault checks.

A device is faulty when its reading is far from what its metric usually reads, in either
direction. The features are the value per metric (:func:`reading_features`); the model
standardizes them online (River's ``StandardScaler``: pressures near 1013 and humidities near
45 on one scale) and adds each standardized value's centered square (:func:`centered_squares`),
so a linear model draws a band around the usual value: ``z**2 - 1`` has mean 0, so while only
healthy readings are labelled its weight does not drift negative as a plain square (an
intercept in disguise) would.

>>> reading_features({"metric": "pressure", "value": 1010.0, "device_kind": "barometer"})
{'pressure': 1010.0}
>>> centered_squares({"pressure": 2.0})
{'pressure': 2.0, 'pressure^2': 3.0}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["centered_squares", "fault_model", "reading_features"]


def reading_features(reading: Mapping[str, Any]) -> dict[str, float]:
    """Features of a valid reading known at its time: its value, under its metric's name."""
    return {reading["metric"]: float(reading["value"])}


def centered_squares(x: Mapping[str, float]) -> dict[str, float]:
    """Each standardized value and its centered square."""
    return {**x, **{f"{k}^2": v * v - 1.0 for k, v in x.items()}}


def fault_model() -> Any:
    """StandardScaler | centered squares | logistic regression (SGD)."""
    from river import compose, linear_model, optim, preprocessing  # here: loading a definition does not pay for River

    return (preprocessing.StandardScaler() | compose.FuncTransformer(centered_squares)
            | linear_model.LogisticRegression(optimizer=optim.SGD(0.05)))
