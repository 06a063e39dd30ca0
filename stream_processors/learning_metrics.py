"""Progressive metrics and drift detection of one online model, exactly as River computes them.

River's ``evaluate.progressive_val_score`` feeds a metric that ``requires_labels``
(:class:`river.metrics.Accuracy`) with ``predict_one`` and the probabilistic ones
(:class:`river.metrics.ROCAUC`, :class:`river.metrics.LogLoss`) with ``predict_proba_one``,
always *before* ``learn_one``. For a classifier ``predict_one`` is ``max(proba, key=proba.get)``
of the same probabilities, so one ``predict_proba_one`` call per sample feeds all three metrics
with the values River would compute: the figures match ``progressive_val_score`` exactly.

The drift detector (River's ADWIN) watches the 0/1 error stream of the same predictions.

ROC AUC is :class:`ROCAUC`: River's ``metrics.ROCAUC`` computed from a histogram. River keeps
one confusion matrix per threshold and updates all of them per sample (200 thresholds: ~70 us
per label, more than the model itself); a sample with probability ``p`` counts at exactly the
thresholds below ``p``, a prefix of the sorted thresholds, so one counter per prefix length
holds the same information, and :meth:`ROCAUC.get` rebuilds River's true/false positive rates
from it with the same float operations on the same (integer) counts: the same value, bit for
bit (tests/unit/test_learning_metrics.py compares both on random streams).

>>> t = Progressive()
>>> t.update(True, {False: 0.2, True: 0.8})
False
>>> t.update(False, {False: 0.4, True: 0.6})
False
>>> t.labelled, round(t.accuracy.get(), 2), float(round(t.roc_auc.get(), 2))
(2, 0.5, 1.0)
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from river import drift, metrics
from scipy import integrate

__all__ = ["ROCAUC", "Progressive", "predicted_label"]


def predicted_label(proba: dict[Any, float]) -> Any:
    """The label River's ``Classifier.predict_one`` derives from ``proba`` (first key wins ties).

    >>> predicted_label({False: 0.5, True: 0.5})
    False
    """
    return max(proba, key=proba.get) if proba else None  # type: ignore[arg-type]


class ROCAUC:
    """River's ``metrics.ROCAUC(n_thresholds)`` (unit weights, ``pos_val=True``) in O(log n) per sample.

    ``counts[y][k]``: samples of truth ``y`` whose probability of True is above exactly the
    ``k`` lowest thresholds (River: ``p_true > t``); pickled with the learner.

    >>> m, r = ROCAUC(), metrics.ROCAUC()
    >>> for y, p in ((False, 0.1), (False, 0.4), (True, 0.35), (True, 0.8)):
    ...     m.update(y, {True: p, False: 1 - p}); r.update(y, {True: p, False: 1 - p})
    >>> bool(m.get() == r.get()), float(m.get())
    (True, 0.875)
    """

    def __init__(self, n_thresholds: int = 10) -> None:
        self.n_thresholds = n_thresholds
        # River's thresholds, computed as River computes them
        self.thresholds = [i / (n_thresholds - 1) for i in range(n_thresholds)]
        self.thresholds[0] -= 1e-7
        self.thresholds[-1] += 1e-7
        self.counts: tuple[list[int], list[int]] = ([0] * (n_thresholds + 1), [0] * (n_thresholds + 1))

    @classmethod
    def of_river(cls, metric: Any) -> ROCAUC:
        """The same metric from a River ``ROCAUC`` (checkpoints written before this class):
        threshold ``i``'s matrix counts the samples above ``i + 1`` thresholds or more."""
        new = cls(metric.n_thresholds)
        new.thresholds = list(metric.thresholds)
        n = new.n_thresholds
        if metric.pos_val is not True:
            raise ValueError(f"ROCAUC with pos_val={metric.pos_val!r} is not supported")
        for y in (False, True):
            row = metric.cms[0].data.get(y, {})
            total = int(row.get(False, 0.0) + row.get(True, 0.0))
            above = [total] + [int(cm.data.get(y, {}).get(True, 0.0)) for cm in metric.cms] + [0]
            new.counts[y][:] = [above[k] - above[k + 1] for k in range(n + 1)]
        return new

    def update(self, y_true: Any, y_pred: dict[Any, float] | float) -> None:
        """Count one sample (``y_pred``: probabilities, or the probability of True)."""
        p = y_pred.get(True, 0.0) if isinstance(y_pred, dict) else y_pred
        # thresholds t with p > t: the first bisect_left(thresholds, p) of them (none for NaN)
        self.counts[1 if y_true == True else 0][bisect_left(self.thresholds, p)] += 1  # noqa: E712

    def get(self) -> Any:
        """River's value: trapezoid of the per-threshold (FPR, TPR), as River computes it."""
        n = self.n_thresholds
        neg, pos = self.counts
        tprs: list[float] = [0.0] * n
        fprs: list[float] = [0.0] * n
        tp = fp = 0
        n_pos, n_neg = sum(pos), sum(neg)
        for i in range(n - 1, -1, -1):
            tp += pos[i + 1]  # samples above threshold i: above more than i thresholds
            fp += neg[i + 1]
            fn, tn = n_pos - tp, n_neg - fp
            tprs[i] = float(tp) / float(tp + fn) if tp + fn else 0.0
            fprs[i] = float(fp) / float(fp + tn) if fp + tn else 0.0
        return -integrate.trapezoid(x=fprs, y=tprs)


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
        self.roc_auc = ROCAUC(roc_thresholds)
        self.log_loss = metrics.LogLoss()
        self.labelled = 0
        self.drift_detections = 0
        self.detector = drift.ADWIN(delta=drift_delta)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # checkpoints written with River's ROCAUC: the same counts, as a histogram
        if isinstance(state.get("roc_auc"), metrics.ROCAUC):
            state["roc_auc"] = ROCAUC.of_river(state["roc_auc"])
        self.__dict__.update(state)

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

    def update_binary(self, y_true: bool, p: float) -> bool:
        """:meth:`update` with ``{False: 1 - p, True: p}``, without building it: River's
        ``predict_one`` is then True exactly when ``p > 1 - p`` (the first key wins ties), and
        ROCAUC and LogLoss read ``p`` as they read the dict's True.

        >>> a, b = Progressive(), Progressive()
        >>> for y, p in ((True, 0.8), (False, 0.5), (True, 0.3), (False, 0.1)):
        ...     _ = a.update(y, {False: 1.0 - p, True: p}), b.update_binary(y, p)
        >>> a.values() == b.values(), b.labelled
        (True, 4)
        """
        self.labelled += 1
        label = True if p > 1.0 - p else False  # a bool, also for numpy floats
        self.accuracy.update(y_true, label)
        self.roc_auc.update(y_true, p)
        self.log_loss.update(y_true, p)
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
