"""The online model: a learner that updates on every label, and a served version that changes
only when the learner has proved itself on live labels, or when an operator says so.

The served model is a deep copy frozen at publication; nothing mutates it afterwards, so the
socket server can call it from its own thread without a lock. Every publication is a new version
with a number never reused; `catalog` keeps every version's metadata (the models themselves live
in the store's registry), `history` the versions that served, in order, for rollback.
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
HISTORY = 1000  # served versions remembered for rollback
RECENT = 8  # published versions kept in memory, so a promote never waits for the store's commit


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

    def describe(self) -> dict[str, Any]:
        """Metadata without the model: what `models` lists."""
        return {"version": self.version, "spec": self.spec, "parent": self.parent, "n_learned": self.n_learned,
                "event_ts": self.event_ts, "wall_ts": self.wall_ts, "metrics": self.metrics}


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
        self.paused = False
        self.last_version = 0
        self.catalog: dict[int, dict[str, Any]] = {}
        self.history: list[int] = []
        self.recent: dict[int, Published] = {}
        self.served = self._new_version(parent=None, event_ts=None)
        self.history.append(self.served.version)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["recent"] = {}  # the registry in the store has them; a checkpoint stays small
        return state

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
        if self.labels_since_check < due or self.paused:
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
        return self.publish_now(event_ts)

    def publish_now(self, event_ts: float | None) -> Published:
        """Freeze the learner as a new version and serve it, with no gate (an operator's promote)."""
        published = self._new_version(self.served.version, event_ts)
        self.serve(published, reset_window=False)
        self.publications += 1
        return published

    def serve(self, published: Published, *, reset_window: bool = True) -> None:
        """Make `published` the served version (one reference swap).

        An operator's switch to another lineage restarts the served model's recent window, so the
        publication gate compares the learner with what serves now, not with what served before.
        """
        self.served = published
        self.history.append(published.version)
        del self.history[:-HISTORY]
        if reset_window:
            self.served_eval.reset_window()

    def previous(self) -> int | None:
        """The version that served before the current one (what a rollback returns to)."""
        current = self.served.version
        for version in reversed(self.history):
            if version != current:
                return version
        return None

    def register(self, model: Any, spec: str, n_learned: int, metrics: dict, event_ts: float | None) -> Published:
        """Add a model from outside (an import) to the registry as a new version; it does not serve."""
        self.last_version += 1
        published = Published(version=self.last_version, model=model, spec=spec, parent=None, n_learned=n_learned,
                              event_ts=event_ts, wall_ts=time.time(), metrics=metrics)
        self.catalog[published.version] = published.describe()
        self._remember(published)
        return published

    def _remember(self, published: Published) -> None:
        self.recent[published.version] = published
        while len(self.recent) > RECENT:
            del self.recent[next(iter(self.recent))]

    def _new_version(self, parent: int | None, event_ts: float | None) -> Published:
        self.last_version += 1
        published = self._freeze(self.last_version, parent, event_ts)
        self.catalog[published.version] = published.describe()
        self._remember(published)
        return published

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
            "publishing": "paused" if self.paused else "automatic",
            "versions": len(self.catalog),
            "examples_learned": self.n_learned,
            "publications": self.publications,
            "publications_refused": self.refusals,
            "learner": self.learner_eval.values() if self.learner_eval.count else {},
            "served": self.served_eval.values() if self.served_eval.count else {},
            "labels_scored": self.learner_eval.count,
        }
