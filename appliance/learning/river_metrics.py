"""River's classification and regression metrics, kept lean: values equal River's bit for bit.

ROC AUC and accuracy are kept as counts (`RocAucCounts`, `AccuracyCounts`: what River's confusion
matrices hold, one histogram update per label instead of ten matrix updates and a revert); log loss,
MAE and RMSE as River's running mean (`LogLossMean`, `AbsoluteErrorMean`, `RootSquaredErrorMean`:
River's float operations in River's order, without its layers of calls). Each has `update`, `revert`,
`get`, plain-data `to_data`/`from_data`, and `from_river` for a River object of an older checkpoint
(tests/learning/test_metric_counts.py compares every value with River's after every label).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from river import metrics

# River's metrics and SciPy are imported where they are used, not here: `river.metrics` pulls in
# `scipy.stats` (about 1 s), and a serving child imports this module without ever evaluating.


class RocAucCounts:
    """River's `metrics.ROCAUC` (10 thresholds, positive class True) as a histogram of scores.

    River keeps one confusion matrix per threshold; every count in them is the number of positives
    (or negatives) whose score lies above (or not above) that threshold, so a histogram over the
    gaps between thresholds holds the same information and `get` returns River's value exactly.

    >>> from river import metrics
    >>> mine, river = RocAucCounts(), metrics.ROCAUC()
    >>> for y, p in [(0, .1), (0, .4), (1, .35), (1, .8), (1, 0.0), (0, 1.0)]:
    ...     mine.update(y, p); river.update(y, p)
    >>> float(mine.get()) == float(river.get())
    True
    """

    __slots__ = ("thresholds", "pos", "neg")

    def __init__(self, n_thresholds: int = 10) -> None:
        from river import metrics

        reference = metrics.ROCAUC(n_thresholds=n_thresholds)
        self.thresholds = list(reference.thresholds)
        self.pos = [0] * (n_thresholds + 1)  # pos[k]: positives whose score is above exactly k thresholds
        self.neg = [0] * (n_thresholds + 1)

    def update(self, y_true: Any, y_pred: Any, w: int = 1) -> None:
        p_true = y_pred.get(True, 0.0) if isinstance(y_pred, dict) else y_pred
        # thresholds ascend: a score is above exactly those before the first threshold >= it (NaN: none)
        (self.pos if y_true == True else self.neg)[bisect_left(self.thresholds, p_true)] += w  # noqa: E712

    def revert(self, y_true: Any, y_pred: Any) -> None:
        self.update(y_true, y_pred, -1)

    def get(self) -> float:
        n = len(self.thresholds)
        tprs, fprs = [0] * n, [0] * n
        n_pos, n_neg = sum(self.pos), sum(self.neg)
        above_pos, above_neg = n_pos - self.pos[0], n_neg - self.neg[0]
        for i in range(n):  # River: tp / (tp + fn) and fp / (fp + tn) at threshold i, 0.0 when undefined
            tprs[i] = above_pos / n_pos if n_pos else 0.0
            fprs[i] = above_neg / n_neg if n_neg else 0.0
            above_pos -= self.pos[i + 1]
            above_neg -= self.neg[i + 1]
        from scipy import integrate

        return -integrate.trapezoid(x=fprs, y=tprs)

    def to_data(self) -> dict[str, Any]:
        return {"pos": list(self.pos), "neg": list(self.neg)}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> RocAucCounts:
        counts = cls(len(data["pos"]) - 1)
        counts.pos, counts.neg = list(data["pos"]), list(data["neg"])
        return counts

    @classmethod
    def from_river(cls, metric: metrics.ROCAUC) -> RocAucCounts:
        """The counts a River ROCAUC's confusion matrices hold (a checkpoint written before them)."""
        counts = cls(metric.n_thresholds)
        for hist, label in ((counts.pos, True), (counts.neg, False)):
            above = [int(cm.data[label][True]) for cm in metric.cms] + [0]
            total = int(metric.cms[0].sum_row[label])
            hist[0] = total - above[0]
            for k in range(1, len(hist)):
                hist[k] = above[k - 1] - above[k]
        return counts


class AccuracyCounts:
    """River's `metrics.Accuracy` as two counts (its confusion matrix's diagonal and total).

    >>> mine = AccuracyCounts(); mine.update(True, True); mine.update(True, False); mine.get()
    0.5
    """

    __slots__ = ("correct", "total")

    def __init__(self) -> None:
        self.correct = self.total = 0

    def update(self, y_true: Any, y_pred: Any, w: int = 1) -> None:
        self.total += w
        if y_true == y_pred:
            self.correct += w

    def revert(self, y_true: Any, y_pred: Any) -> None:
        self.update(y_true, y_pred, -1)

    def get(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def to_data(self) -> dict[str, Any]:
        return {"correct": self.correct, "total": self.total}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> AccuracyCounts:
        counts = cls()
        counts.correct, counts.total = data["correct"], data["total"]
        return counts

    @classmethod
    def from_river(cls, metric: metrics.Accuracy) -> AccuracyCounts:
        counts = cls()
        counts.correct, counts.total = int(metric.cm.total_true_positives), int(metric.cm.total_weight)
        return counts


_LOW, _HIGH = 1e-15, 1 - 1e-15  # River's `_clamp_proba` bounds


class _RunningMean:
    """River's `stats.Mean` inside a `MeanMetric` (LogLoss, MAE, RMSE), without the metric's layers:
    `update` and `revert` do River's float operations in River's order, so `get` is River's value bit
    for bit (River: about five Python calls per update, here one)."""

    __slots__ = ("n", "mean")

    def __init__(self) -> None:
        self.n = 0.0
        self.mean = 0.0

    def _add(self, x: float, w: float) -> None:
        self.n += w
        self.mean += (w / self.n) * (x - self.mean)

    def _remove(self, x: float, w: float) -> None:
        self.n -= w
        if self.n < 0:
            raise ValueError("Cannot go below 0")
        if self.n == 0:
            self.mean = 0.0
        else:
            self.mean -= (w / self.n) * (x - self.mean)

    def get(self) -> float:
        return self.mean

    def to_data(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> _RunningMean:
        metric = cls()
        metric.n, metric.mean = data["n"], data["mean"]
        return metric

    @classmethod
    def from_river(cls, metric: Any) -> _RunningMean:
        """The running mean a River `MeanMetric` holds (a checkpoint written before this class)."""
        return cls.from_data({"n": metric._mean.n, "mean": metric._mean._mean})


class LogLossMean(_RunningMean):
    """River's `metrics.LogLoss` (positive class True, probabilities clamped to (1e-15, 1 - 1e-15)).

    >>> from river import metrics
    >>> mine, river = LogLossMean(), metrics.LogLoss()
    >>> for y, p in [(True, {True: .9}), (False, {True: .2}), (True, {False: 1.0}), (False, .65)]:
    ...     mine.update(y, p); river.update(y, p)
    >>> mine.get() == river.get()
    True
    """

    __slots__ = ()

    @staticmethod
    def _loss(y_true: Any, y_pred: Any) -> float:
        p = y_pred.get(True, 0.0) if isinstance(y_pred, dict) else y_pred
        if _HIGH < p:  # max(min(p, high), low), as `utils.math.clamp` (a NaN stays NaN)
            p = _HIGH
        if _LOW > p:
            p = _LOW
        return -math.log(p) if y_true else -math.log(1 - p)

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self._add(self._loss(y_true, y_pred), w)

    def revert(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self._remove(self._loss(y_true, y_pred), w)


class AbsoluteErrorMean(_RunningMean):
    """River's `metrics.MAE`."""

    __slots__ = ()

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self._add(abs(y_true - y_pred), w)

    def revert(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self._remove(abs(y_true - y_pred), w)


class RootSquaredErrorMean(_RunningMean):
    """River's `metrics.RMSE`: the root of the running mean of squared errors."""

    __slots__ = ()

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self._add((y_true - y_pred) ** 2, w)

    def revert(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self._remove((y_true - y_pred) ** 2, w)

    def get(self) -> float:
        return self.mean ** 0.5


def from_river(metric: Any) -> Any:
    """A River metric from an older checkpoint as the metric kept for it here."""
    from river import metrics

    classes = {metrics.ROCAUC: RocAucCounts, metrics.Accuracy: AccuracyCounts, metrics.LogLoss: LogLossMean,
               metrics.MAE: AbsoluteErrorMean, metrics.RMSE: RootSquaredErrorMean}
    return classes[type(metric)].from_river(metric)
