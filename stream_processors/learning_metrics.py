"""Progressive metrics and drift detection of one online model, exactly as River computes them.

River's ``evaluate.progressive_val_score`` feeds a metric that ``requires_labels``
(:class:`river.metrics.Accuracy`) with ``predict_one`` and the probabilistic ones
(:class:`river.metrics.ROCAUC`, :class:`river.metrics.LogLoss`) with ``predict_proba_one``,
always *before* ``learn_one``. For a classifier ``predict_one`` is ``max(proba, key=proba.get)``
of the same probabilities, so one ``predict_proba_one`` call per sample feeds all three metrics
with the values River would compute: the figures match ``progressive_val_score`` exactly.

The drift detector (River's ADWIN) watches the 0/1 error stream of the same predictions.

>>> t = Progressive()
>>> t.update(True, {False: 0.2, True: 0.8})
False
>>> t.update(False, {False: 0.4, True: 0.6})
False
>>> t.labelled, round(t.accuracy.get(), 2), float(round(t.roc_auc.get(), 2))
(2, 0.5, 1.0)
"""

from __future__ import annotations

from typing import Any

from river import drift, metrics

__all__ = ["Progressive", "predicted_label"]


def predicted_label(proba: dict[Any, float]) -> Any:
    """The label River's ``Classifier.predict_one`` derives from ``proba`` (first key wins ties).

    >>> predicted_label({False: 0.5, True: 0.5})
    False
    """
    return max(proba, key=proba.get) if proba else None  # type: ignore[arg-type]


class Progressive:
    """Cumulative Accuracy, ROCAUC, LogLoss, labelled count and an ADWIN on the error stream.

    Pickleable as a whole, so it is checkpointed with its model and resumes where it stopped.
    ``roc_thresholds`` is River's ``ROCAUC(n_thresholds=...)``: keep the default 10 wherever the
    figures must equal ``progressive_val_score`` (the ``samples.*`` streams).
    """

    def __init__(self, drift_delta: float = 0.002, roc_thresholds: int = 10) -> None:
        self.drift_delta = drift_delta
        self.roc_thresholds = roc_thresholds
        self.accuracy = metrics.Accuracy()
        self.roc_auc = metrics.ROCAUC(n_thresholds=roc_thresholds)
        self.log_loss = metrics.LogLoss()
        self.labelled = 0
        self.drift_detections = 0
        self.detector = drift.ADWIN(delta=drift_delta)

    def update(self, y_true: bool, proba: dict[Any, float]) -> bool:
        """Score one prediction made before learning ``y_true``; True when drift is detected."""
        self.labelled += 1
        if not proba:
            return False
        label = predicted_label(proba)
        self.accuracy.update(y_true, label)
        self.roc_auc.update(y_true, proba)
        self.log_loss.update(y_true, proba)
        self.detector.update(0 if label == y_true else 1)
        if self.detector.drift_detected:
            self.drift_detections += 1
            return True
        return False

    def values(self) -> dict[str, float]:
        """Current metric values by ModelQuality field name."""
        return {
            "accuracy": float(self.accuracy.get()),
            "roc_auc": float(self.roc_auc.get()),
            "log_loss": float(self.log_loss.get()),
        }

    def quality(self, model: str, start_ms: int, index: int, version: str) -> dict[str, Any]:
        """A ModelQuality record: cumulative metrics of ``model`` as of the end of bucket
        ``index``, which starts at ``start_ms`` (epoch ms)."""
        return {
            "model": model,
            "bucket": int(start_ms),
            "labelled": self.labelled,
            **self.values(),
            "drift_detections": self.drift_detections,
            "pipeline_version": version,
            "bucket_index": int(index),
        }
