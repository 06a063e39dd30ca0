"""The e-commerce fraud model as the unit tests drive it: the generic operator
(:class:`~stream_processors.operators.model.OnlineModel`) under the spec its definition declares."""

from __future__ import annotations

from typing import Any

from kappa.pipeline import DEFAULT, load
from stream_processors.operators.model import OnlineModel, model_spec

__all__ = ["FRAUD", "FraudLearner", "order_features"]

FRAUD = model_spec(load(DEFAULT), "fraud")
"""examples/ecommerce [models.fraud]: its features, its model, 200 ROC thresholds."""
order_features = FRAUD.features


def FraudLearner(version: str = "v1", **kwargs: Any) -> OnlineModel:
    """A fresh fraud learner (``OnlineModel`` of :data:`FRAUD`)."""
    return OnlineModel(FRAUD, version, **kwargs)
