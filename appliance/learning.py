"""The online model: a learner that updates on every label, and a served version that changes
only when the learner has proved itself on live labels.

The served model is a deep copy frozen at publication; nothing mutates it afterwards, so the
socket server can call it from its own thread without a lock. Every publication is a new version.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from .config import ModelConfig
from .metrics import Evaluation, not_worse
from .model_spec import build_model

FIRST_CHECK = 50  # labels before the first publication check, while the untrained version serves


@dataclass(frozen=True)
class Published:
    """An immutable served model version."""

    version: int
    model: Any
    spec: str
    parent: int | None
    n_learned: int
    event_ts: float | None
    wall_ts: float
    metrics: dict

    @property
    def name(self) -> str:
        return f"v{self.version}"


class OnlineModel:
    """A learner, its prequential evaluation, and the evaluated version that serves."""

    def __init__(self, config: ModelConfig, spec: str) -> None:
        self.config = config
        self.task = config.task
        self.spec = spec
        self.learner = build_model(spec, config.task)
        self.learner_eval = Evaluation(config.task, config.metric_window)
        self.served_eval = Evaluation(config.task, config.metric_window)
        self.n_learned = 0
        self.labels_since_check = 0
        self.publications = 0
        self.refusals = 0
        self.served = self._freeze(version=1, parent=None, event_ts=None)

    def predict(self, model: Any, x: dict) -> Any:
        """Return a probability dict (classification) or a number (regression)."""
        if self.task == "classification":
            return model.predict_proba_one(x)
        value = model.predict_one(x)
        return 0.0 if value is None else float(value)

    def learn(self, x: dict, y: Any, y_learner: Any, y_served: Any, event_ts: float) -> Published | None:
        """Score both models on this label, learn it, and publish when the schedule and gate allow."""
        self.learner_eval.update(y, y_learner)
        self.served_eval.update(y, y_served)
        self.learner.learn_one(x, y)
        self.n_learned += 1
        self.labels_since_check += 1
        due = self.config.publish_every
        if self.served.parent is None and self.served.n_learned == 0:
            due = min(due, FIRST_CHECK)  # the untrained initial version gives way early
        if self.labels_since_check < due:
            return None
        self.labels_since_check = 0
        return self.try_publish(event_ts)

    def try_publish(self, event_ts: float | None) -> Published | None:
        """Publish the learner if its recent metric is not worse than the served model's."""
        ok = not_worse(self.learner_eval.window_primary(), self.served_eval.window_primary(),
                       self.config.publish_margin, self.learner_eval.bigger_is_better)
        if not ok:
            self.refusals += 1
            return None
        self.served = self._freeze(self.served.version + 1, self.served.version, event_ts)
        self.publications += 1
        return self.served

    def _freeze(self, version: int, parent: int | None, event_ts: float | None) -> Published:
        return Published(
            version=version,
            model=copy.deepcopy(self.learner),
            spec=self.spec,
            parent=parent,
            n_learned=self.n_learned,
            event_ts=event_ts,
            wall_ts=time.time(),
            metrics=self.learner_eval.values() if self.learner_eval.count else {},
        )

    def summary(self) -> dict[str, Any]:
        """Return the model's figures for `stats`."""
        return {
            "spec": self.spec,
            "task": self.task,
            "served_version": self.served.name,
            "examples_learned": self.n_learned,
            "publications": self.publications,
            "publications_refused": self.refusals,
            "learner": self.learner_eval.values() if self.learner_eval.count else {},
            "served": self.served_eval.values() if self.served_eval.count else {},
            "labels_scored": self.learner_eval.count,
        }
