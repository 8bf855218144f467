"""Prequential (test-then-train) evaluation, cumulative and rolling, with River's metrics' values.

Each prediction is scored when its label arrives, before the model learns from it, exactly as
`river.evaluate.progressive_val_score` does, so the appliance's figures can be checked against River.
Each metric is River's, kept lean (`learning.river_metrics`: counts and running means whose values
equal River's bit for bit) and checkpointed as plain data. The rolling metrics share one window of
labelled predictions.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from appliance.learning.river_metrics import (
    AbsoluteErrorMean,
    AccuracyCounts,
    LogLossMean,
    RocAucCounts,
    RootSquaredErrorMean,
    from_river,
)
from appliance.storage.snapshot import dump_object, load_object

# name -> (metric class, takes probabilities, bigger is better)
_CLASSIFICATION = {"roc_auc": (RocAucCounts, True, True), "log_loss": (LogLossMean, True, False),
                   "accuracy": (AccuracyCounts, False, True)}
_REGRESSION = {"mae": (AbsoluteErrorMean, False, False), "rmse": (RootSquaredErrorMean, False, False)}
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
            evaluation._metrics = [(name, from_river(metric), uses)
                                   for (name, _, uses), metric in zip(evaluation._metrics, metrics_)]
            evaluation._rolling = [(name, from_river(metric.obj), uses)
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
    return [(name, from_river(load_object(data[name])) if isinstance(data[name], bytes)
             else type(metric).from_data(data[name]), uses) for name, metric, uses in fresh]




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
