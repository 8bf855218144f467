"""Label rates per categorical value: what the labels already joined say about each value.

A hashed one-hot lets a linear model learn a weight per value, but only by gradient steps, only in
the learner, and a served copy keeps the weights it was frozen with. A label rate is the same
knowledge as a feature: for each one-hot `field#NN` of an event, the smoothed share of positive
labels among the earlier events that had it, as log-odds against the overall share
(`<field>_label_rate`), and the share among the last ~100 labels against the overall one
(`label_rate_recent`). The state changes when a label is learned, never when an event arrives, so
a feature vector sees only labels joined before its event was scored (point-in-time correct: an
inline label is learned after its event is scored). What serves reads the state as it is now, so a
frozen served version still follows what the labels say.

For regression the same state keeps the label's mean: a value's smoothed mean minus the overall one.

>>> rates = LabelRates(("city",), "classification")
>>> for y in (True, True, False, False, False, False):
...     rates.learn({"city#1": 1.0}, y)
>>> rates.learn({"city#2": 1.0}, True)
>>> x = {"city#1": 1.0}
>>> rates.rates_into(x, {"city": "city#1"})
>>> round(x["city_label_rate"], 3), round(x["label_rate_recent"], 3)
(-0.09, -0.011)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PRIOR_LABELS = 20.0  # a value's rate starts at the overall one and moves from it as if that were 20 labels
RECENT_WEIGHT = 0.01  # the recent rate: each label weighs 1% (an exponential average over ~100 labels)
RECENT = "label_rate_recent"
SUFFIX = "_label_rate"


def feature_names(fields: tuple[str, ...]) -> list[str]:
    """The features label rates add, in the order `rates_into` writes them."""
    return [f"{name}{SUFFIX}" for name in fields] + [RECENT]


@dataclass
class LabelRates:
    """Labels (count, sum) per one-hot name, overall, and recently; owned by the engine's thread.

    Each update replaces a tuple (never mutates one) and the server thread only reads, so a predict
    on the socket sees a consistent value per name.
    """

    fields: tuple[str, ...]
    task: str
    by_name: dict[str, tuple[float, float]] = field(default_factory=dict)  # one-hot name -> (labels, sum of y)
    n: float = 0.0
    total: float = 0.0
    recent_sum: float = 0.0  # labels weighed (1 - RECENT_WEIGHT)^age: the recent rate is their ratio
    recent_weight: float = 0.0

    def __post_init__(self) -> None:
        self._prefixes = {f"{name}#": f"{name}{SUFFIX}" for name in self.fields}

    def to_data(self) -> dict:
        """The state as plain data (the checkpoint's `label_rates` field)."""
        return {"fields": list(self.fields), "task": self.task, "by_name": self.by_name, "n": self.n,
                "total": self.total, "recent_sum": self.recent_sum, "recent_weight": self.recent_weight}

    @classmethod
    def from_data(cls, data: dict) -> LabelRates:
        """The state `to_data` described."""
        return cls(tuple(data["fields"]), data["task"], {name: tuple(seen) for name, seen in data["by_name"].items()},
                   data["n"], data["total"], data["recent_sum"], data["recent_weight"])

    def learn(self, x: dict[str, float], y: object) -> None:
        """Count a learned label for each of the event's one-hots (from its logged feature vector)."""
        value = float(y)  # type: ignore[arg-type]
        for name in x:
            if "#" in name and name[:name.index("#") + 1] in self._prefixes:
                n, total = self.by_name.get(name, (0.0, 0.0))
                self.by_name[name] = (n + 1.0, total + value)
        self.n += 1.0
        self.total += value
        keep = 1.0 - RECENT_WEIGHT
        self.recent_sum = keep * self.recent_sum + value
        self.recent_weight = keep * self.recent_weight + 1.0

    def rates_into(self, x: dict[str, float], names: dict[str, str]) -> None:
        """Write each field's rate (its one-hot name in `names`) and the recent rate into `x`."""
        if not self.n:
            return
        prior = self.total / self.n
        for name in self.fields:
            onehot = names.get(name)
            seen = self.by_name.get(onehot) if onehot is not None else None
            if seen is not None:
                smoothed = (seen[1] + PRIOR_LABELS * prior) / (seen[0] + PRIOR_LABELS)
                x[f"{name}{SUFFIX}"] = self._versus(smoothed, prior)
        x[RECENT] = self._versus(self.recent_sum / self.recent_weight, prior)

    def _versus(self, value: float, prior: float) -> float:
        """Log-odds of `value` against `prior` (classification), or their difference (regression)."""
        if self.task != "classification":
            return value - prior
        return _logit(value) - _logit(prior)


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1.0 - p))
