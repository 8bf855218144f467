"""Prequential (test-then-train) evaluation, cumulative and rolling, with River's metrics' values.

Each prediction is scored when its label arrives, before the model learns from it, exactly as
`river.evaluate.progressive_val_score` does, so the appliance's figures can be checked against River.
ROC AUC and accuracy are kept as counts (`RocAucCounts`, `AccuracyCounts`: what River's confusion
matrices hold, one histogram update per label instead of ten matrix updates and a revert), log loss,
MAE and RMSE as River's running mean (`LogLossMean`, `AbsoluteErrorMean`, `RootSquaredErrorMean`:
River's float operations without its layers of calls); every value equals River's metric's bit for
bit (tests/learning/test_metric_counts.py). All are checkpointed as plain data. The rolling metrics
share one window of labelled predictions.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, deque
from typing import Any

from river import metrics
from scipy import integrate

from appliance.storage.snapshot import dump_object, load_object


class RocAucCounts:
    """River's `metrics.ROCAUC` (10 thresholds, positive class True) as a histogram of scores.

    River keeps one confusion matrix per threshold; every count in them is the number of positives
    (or negatives) whose score lies above (or not above) that threshold, so a histogram over the
    gaps between thresholds holds the same information and `get` returns River's value exactly.

    >>> mine, river = RocAucCounts(), metrics.ROCAUC()
    >>> for y, p in [(0, .1), (0, .4), (1, .35), (1, .8), (1, 0.0), (0, 1.0)]:
    ...     mine.update(y, p); river.update(y, p)
    >>> float(mine.get()) == float(river.get())
    True
    """

    __slots__ = ("thresholds", "pos", "neg")

    def __init__(self, n_thresholds: int = 10) -> None:
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


# name -> (metric class, takes probabilities, bigger is better)
_CLASSIFICATION = {"roc_auc": (RocAucCounts, True, True), "log_loss": (LogLossMean, True, False),
                   "accuracy": (AccuracyCounts, False, True)}
_REGRESSION = {"mae": (AbsoluteErrorMean, False, False), "rmse": (RootSquaredErrorMean, False, False)}
_RIVER_CLASSES = {metrics.ROCAUC: RocAucCounts, metrics.Accuracy: AccuracyCounts, metrics.LogLoss: LogLossMean,
                  metrics.MAE: AbsoluteErrorMean, metrics.RMSE: RootSquaredErrorMean}
PRIMARY = {"classification": "roc_auc", "regression": "mae"}
# What the publication gate compares by default: a proper scoring rule (log loss) for classification,
# the task's error for regression. ROC AUC ignores calibration and is undefined on one-class windows.
GATE = {"classification": "log_loss", "regression": "mae"}


def metric_names(task: str) -> tuple[str, ...]:
    """Return the metrics `Evaluation` keeps for `task`.

    >>> metric_names("regression")
    ('mae', 'rmse')
    """
    return tuple(_CLASSIFICATION if task == "classification" else _REGRESSION)


def bigger_is_better(task: str, name: str) -> bool:
    """Return whether a bigger value of metric `name` is better.

    >>> bigger_is_better("classification", "roc_auc"), bigger_is_better("classification", "log_loss")
    (True, False)
    """
    return (_CLASSIFICATION if task == "classification" else _REGRESSION)[name][2]


def predicted_label(proba: dict) -> Any:
    """Return the class River's `predict_one` would return for these probabilities."""
    return max(proba, key=proba.get) if proba else None


def positive_score(proba: dict) -> float:
    """Return the probability of the positive class (True) from a River probability dict."""
    return float(proba.get(True, 0.0))


class Evaluation:
    """Prequential metrics of one model on one task.

    >>> ev = Evaluation("classification", window=2)
    >>> ev.update(True, {True: 0.9, False: 0.1}); ev.update(False, {True: 0.2, False: 0.8})
    >>> round(ev.values()["accuracy"], 3), ev.count
    (1.0, 2)
    """

    def __init__(self, task: str, window: int = 1000, *, cumulative: bool = True) -> None:
        self.task = task
        self.window = window
        # cumulative=False: the rolling metrics alone, for a comparison judged on recent labels only
        # (a challenger's duel with the champion, the learner against its frozen version)
        self.cumulative = cumulative
        self._metrics = self._fresh() if cumulative else []
        self._rolling = self._fresh()
        # the labelled predictions in the rolling window, (y_true, y_pred, predicted label): evicted
        # ones are reverted from every rolling metric, as `utils.Rolling` does, one queue for all
        self._scored: deque = deque()
        table = _CLASSIFICATION if task == "classification" else _REGRESSION
        self.primary = PRIMARY[task]
        self.bigger_is_better = table[self.primary][2]
        self.count = 0
        self.window_count = 0
        self.classes: Counter = Counter()  # labels seen, overall and in the window: ROC AUC needs two
        self.window_labels: deque = deque(maxlen=window)
        self.window_classes: Counter = Counter()

    def _fresh(self) -> list[tuple[str, Any, bool]]:
        table = _CLASSIFICATION if self.task == "classification" else _REGRESSION
        return [(name, cls(), uses_proba) for name, (cls, uses_proba, _) in table.items()]

    def reset_window(self) -> None:
        """Forget the rolling metrics (the served model changed); cumulative ones go on."""
        self._rolling = self._fresh()
        self._scored.clear()
        self.window_count = 0
        self.window_labels.clear()
        self.window_classes.clear()

    def to_data(self) -> dict[str, Any]:
        """This evaluation as plain data: counts as lists, River's metric objects pickled by name."""
        return {"task": self.task, "window": self.window, "count": self.count, "window_count": self.window_count,
                "cumulative": self.cumulative, "metrics": _metrics_data(self._metrics), "rolling": _metrics_data(self._rolling),
                "scored": dump_object(list(self._scored)),
                "classes": list(self.classes.items()), "window_labels": list(self.window_labels),
                "window_classes": list(self.window_classes.items())}

    @classmethod
    def from_data(cls, data: dict[str, Any], *, cumulative: bool | None = None) -> Evaluation:
        """The evaluation `to_data` described (or a checkpoint of River's `utils.Rolling` metrics);
        `cumulative=False` leaves out the cumulative metrics of one written with them (each is read by
        name from the fresh evaluation's, so there are none to read)."""
        keep = data.get("cumulative", True) if cumulative is None else cumulative
        evaluation = cls(data["task"], data["window"], cumulative=keep)
        evaluation.count, evaluation.window_count = data["count"], data["window_count"]
        if "scored" in data:
            evaluation._metrics = _metrics_from_data(evaluation._metrics, data["metrics"])
            evaluation._rolling = _metrics_from_data(evaluation._rolling, data["rolling"])
            evaluation._scored.extend(load_object(data["scored"]))
        else:  # written before the counts: River's metrics, the rolling ones wrapped in utils.Rolling
            metrics_, rolling = load_object(data["metrics"]), load_object(data["rolling"])
            evaluation._metrics = [(name, _from_river(metric), uses)
                                   for (name, _, uses), metric in zip(evaluation._metrics, metrics_)]
            evaluation._rolling = [(name, _from_river(metric.obj), uses)
                                   for (name, _, uses), metric in zip(evaluation._rolling, rolling)]
            if rolling:
                evaluation._scored.extend(_scored_entry(evaluation.task, *args) for args, _ in rolling[0].window)
        evaluation.classes = Counter(dict(data["classes"]))
        evaluation.window_labels.extend(data["window_labels"])
        evaluation.window_classes = Counter(dict(data["window_classes"]))
        return evaluation

    def _track(self, y_true: Any) -> None:
        self.classes[y_true] += 1
        if len(self.window_labels) == self.window_labels.maxlen:
            old = self.window_labels[0]
            self.window_classes[old] -= 1
            if not self.window_classes[old]:
                del self.window_classes[old]
        self.window_labels.append(y_true)
        self.window_classes[y_true] += 1

    def update(self, y_true: Any, y_pred: Any) -> None:
        """Score one prediction: a probability dict for classification, a number for regression.

        A model with nothing to say yet (None, or an empty dict from an untrained tree) is not
        scored, exactly as `progressive_val_score` skips it.
        """
        if y_pred is None or (isinstance(y_pred, dict) and not y_pred):
            return
        self.count += 1
        self.window_count += 1
        scored = self._scored
        if self.window and len(scored) == self.window:
            old_true, old_pred, old_label = scored.popleft()
            for _, metric, uses_proba in self._rolling:
                metric.revert(old_true, old_pred if uses_proba else old_label)
        if self.task == "classification":
            self._track(y_true)
            label = predicted_label(y_pred)
            for _, metric, uses_proba in self._metrics:
                metric.update(y_true, y_pred if uses_proba else label)
            for _, metric, uses_proba in self._rolling:
                metric.update(y_true, y_pred if uses_proba else label)
        else:
            label = y_pred  # what a regression metric is given either way
            for _, metric, _ in self._metrics:
                metric.update(y_true, y_pred)
            for _, metric, _ in self._rolling:
                metric.update(y_true, y_pred)
        if self.window:
            scored.append((y_true, y_pred, label))

    def values(self) -> dict[str, float | None]:
        """Return cumulative metrics by name and rolling ones as `<name>_window`.

        ROC AUC is None (undefined) until both classes have been seen, overall or in the window.
        """
        out: dict[str, float | None] = {name: float(metric.get()) for name, metric, _ in self._metrics}
        out.update({f"{name}_window": float(metric.get()) for name, metric, _ in self._rolling})
        if "roc_auc" in out and len(self.classes) < 2:
            out["roc_auc"] = None
        if "roc_auc_window" in out and len(self.window_classes) < 2:
            out["roc_auc_window"] = None
        return out

    def window_primary(self) -> float | None:
        """Return the rolling value of the primary metric, or None while it is undefined."""
        if self.window_count == 0:
            return None
        if self.primary == "roc_auc" and len(self.window_classes) < 2:
            return None
        for name, metric, _ in self._rolling:
            if name == self.primary:
                return float(metric.get())
        return None

    def window_value(self, name: str) -> float | None:
        """Return the rolling value of metric `name`, or None while it is undefined."""
        if name == self.primary:
            return self.window_primary()
        if self.window_count == 0:
            return None
        if name == "roc_auc" and len(self.window_classes) < 2:
            return None
        for metric_name, metric, _ in self._rolling:
            if metric_name == name:
                return float(metric.get())
        raise KeyError(name)

    def metric(self, name: str) -> Any:
        """Return the cumulative River metric object called `name` (for parity checks)."""
        for metric_name, metric, _ in self._metrics:
            if metric_name == name:
                return metric
        raise KeyError(name)


def _scored_entry(task: str, y_true: Any, y_pred: Any) -> tuple[Any, Any, Any]:
    return y_true, y_pred, predicted_label(y_pred) if task == "classification" else y_pred


def _metrics_data(metrics_: list[tuple[str, Any, bool]]) -> dict[str, Any]:
    return {name: metric.to_data() for name, metric, _ in metrics_}


def _metrics_from_data(fresh: list[tuple[str, Any, bool]], data: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    # bytes: a River metric object pickled by a release before this module kept it as plain data
    return [(name, _from_river(load_object(data[name])) if isinstance(data[name], bytes)
             else type(metric).from_data(data[name]), uses) for name, metric, uses in fresh]


def _from_river(metric: Any) -> Any:
    """A River metric from an older checkpoint as the metric this module keeps for it."""
    return _RIVER_CLASSES[type(metric)].from_river(metric)


def not_worse(candidate: float | None, incumbent: float | None, margin: float, bigger_is_better: bool) -> bool:
    """Return whether `candidate` is within `margin` of `incumbent` or better.

    >>> not_worse(0.80, 0.805, 0.01, True), not_worse(0.70, 0.80, 0.01, True), not_worse(1.2, 1.0, 0.1, False)
    (True, False, False)
    """
    if candidate is None:
        return False
    if incumbent is None:
        return True
    return candidate >= incumbent - margin if bigger_is_better else candidate <= incumbent + margin


def better_by(candidate: float | None, incumbent: float | None, margin: float, bigger_is_better: bool) -> bool:
    """Return whether `candidate` beats `incumbent` by more than `margin` (both must be defined).

    >>> better_by(0.90, 0.88, 0.01, True), better_by(0.88, 0.88, 0.0, True), better_by(0.9, 1.0, 0.05, False)
    (True, False, True)
    """
    if candidate is None or incumbent is None:
        return False
    return candidate > incumbent + margin if bigger_is_better else candidate < incumbent - margin
