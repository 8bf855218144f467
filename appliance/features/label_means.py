"""Label means per entity: what the labels already learned say about each value of an entity key.

A key such as a user or a film recurs, and its own labels say much about its next one (a user who
rates high, a film rated low). A hashed one-hot of a key with many values collides, and a linear
model learns a weight per value only by gradient steps, in the learner alone. The label mean is the
same knowledge as a feature (target encoding): for each `[event] keys` field, the mean label among
the earlier events with the same value, shrunk toward the overall mean as if that were `PRIOR_LABELS`
labels, against the overall mean (`<key>_label_mean`: their difference; for classification the
log-odds of the smoothed share of positive labels against the overall share).

The state changes when a label is learned, never when an event arrives, so a feature vector sees only
labels learned before its event was scored (point in time: an inline label is learned after its own
event is scored). The key values a label is learned for are the ones the event had when it was scored
(kept with the pending prediction, `Scored.keys`), so the values logged, served and learned on agree.

>>> means = LabelMeans(("user",), "regression")
>>> for y in (4.0, 5.0, 4.5):
...     means.learn(("u1",), y)
>>> means.learn(("u2",), 1.0)
>>> x = {}
>>> means.means_into(x, {"user": "u1"})
>>> round(x["user_label_mean"], 4)
0.3281
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

PRIOR_LABELS = 5.0  # a value's mean starts at the overall one and moves from it as if that were 5 labels
SUFFIX = "_label_mean"


def feature_names(keys: tuple[str, ...]) -> list[str]:
    """The features label means add, in the order `means_into` writes them."""
    return [f"{key}{SUFFIX}" for key in keys]


@dataclass
class LabelMeans:
    """Labels (count, sum) per value of each key, and overall; owned by the engine's thread.

    Each update replaces a tuple (never mutates one) and the server thread only reads, so a predict
    on the socket sees a consistent value per entity.
    """

    keys: tuple[str, ...]
    task: str
    by_key: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # key -> value -> (labels, sum)
    n: float = 0.0
    total: float = 0.0

    def __post_init__(self) -> None:
        for key in self.keys:
            self.by_key.setdefault(key, {})
        self._names = [(key, f"{key}{SUFFIX}", self.by_key[key]) for key in self.keys]

    def key_values(self, values: dict[str, Any]) -> tuple[str | None, ...]:
        """The event's value of each key, as `learn` takes them (kept with its pending prediction)."""
        return tuple(None if values.get(key) is None else str(values[key]) for key in self.keys)

    def learn(self, entities: tuple[str | None, ...] | list, y: object) -> None:
        """Count a learned label for each key value the event had when it was scored."""
        value = float(y)  # type: ignore[arg-type]
        for (_, _, seen), entity in zip(self._names, entities):
            if entity is not None:
                n, total = seen.get(entity, (0.0, 0.0))
                seen[entity] = (n + 1.0, total + value)
        self.n += 1.0
        self.total += value

    def means_into(self, x: dict[str, float], values: dict[str, Any]) -> None:
        """Write each key's smoothed label mean against the overall one into `x` (a value with labels)."""
        if not self.n:
            return
        prior = self.total / self.n
        for key, name, seen in self._names:
            entity = values.get(key)
            counted = seen.get(entity if entity is None or entity.__class__ is str else str(entity))
            if counted is not None:
                smoothed = (counted[1] + PRIOR_LABELS * prior) / (counted[0] + PRIOR_LABELS)
                x[name] = smoothed - prior if self.task != "classification" else _logit(smoothed) - _logit(prior)

    def to_data(self) -> dict:
        """The state as plain data (the checkpoint's `label_means` field)."""
        return {"keys": list(self.keys), "task": self.task, "by_key": self.by_key, "n": self.n, "total": self.total}

    @classmethod
    def from_data(cls, data: dict) -> LabelMeans:
        """The state `to_data` described."""
        by_key = {key: {entity: tuple(seen) for entity, seen in values.items()} for key, values in data["by_key"].items()}
        return cls(tuple(data["keys"]), data["task"], by_key, data["n"], data["total"])


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1.0 - p))
