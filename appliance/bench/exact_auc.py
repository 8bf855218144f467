"""The exact ROC AUC beside River's approximate one, for `appliance bench learning`.

River's `metrics.ROCAUC` (what the appliance reports) counts the ROC curve at 10 score thresholds. On a
rare class whose scores mostly sit below the lowest threshold it is far off: the bundled sample's
served model with `appliance init` scores 0.909 by it and 0.944 exactly. The bench reports both.
"""

from __future__ import annotations

from typing import Any

from river import metrics
from sklearn.metrics import roc_auc_score


class ExactROCAUC(metrics.ROCAUC):
    """River's `ROCAUC` (its `get`) that also keeps every (label, score) pair for `exact`."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[bool, float]] = []

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        super().update(y_true, y_pred, w)
        score = y_pred.get(True, 0.0) if isinstance(y_pred, dict) else y_pred
        self.pairs.append((bool(y_true), float(score)))

    def exact(self) -> float | None:
        """The exact ROC AUC of every pair so far."""
        return exact_roc_auc(self.pairs)


def exact_roc_auc(pairs: list[tuple[bool, float]]) -> float | None:
    """The exact ROC AUC of (label, score) pairs (scikit-learn's); None with one class only.

    >>> exact_roc_auc([(False, 0.1), (True, 0.2), (False, 0.3), (True, 0.4)]), exact_roc_auc([(True, 0.5)])
    (0.75, None)
    """
    labels = [y for y, _ in pairs]
    if len(set(labels)) < 2:
        return None
    return float(roc_auc_score(labels, [score for _, score in pairs]))
