"""A published version that follows its learner: the figures that judge it, and the copy others serve.

With `[model] follow` (on by default) a published version is not frozen between checks: the
stream's events are scored by the champion's learner itself, which has learned every label since
the version was frozen (`learning.OnlineModel` decides when it follows). Two things make that safe:

* `Paired`: the learner and the frozen version, scored on the same events (while following, the
  frozen version scores each event in shadow, `Shadow.reference`; while not, it is what serves). Its
  gate, checked after every label while following, freezes the version the moment the learner does
  worse than it; at a check, it says whether the learner may be frozen as the next version.
* `View`: the socket server's threads and the serving processes never touch a learner the engine's
  thread is changing; they serve a copy taken after a batch, at most every `VIEW_EVERY` seconds
  (a copy of a linear pipeline, a pickle round trip, costs ~0.06 ms: so bounded it takes at most
  ~1 % of a core however small the batches), and when the flow is idle after a burst.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

from appliance.config.file import ModelConfig
from appliance.learning.metrics import Evaluation
from appliance.learning.publication import gate
from appliance.learning.versions import Published, copy_model

VIEW_EVERY = 0.005  # seconds between two copies of a followed learner for other threads


@dataclass
class Paired:
    """The champion's learner and the frozen served version, scored on the same recent events."""

    learner: Evaluation
    frozen: Evaluation

    @classmethod
    def fresh(cls, task: str, window: int) -> Paired:
        # judged on recent labels only (`publication.gate`): no cumulative metrics
        return cls(Evaluation(task, window, cumulative=False), Evaluation(task, window, cumulative=False))

    def update(self, y: Any, y_learner: Any, y_frozen: Any) -> None:
        self.learner.update(y, y_learner)
        self.frozen.update(y, y_frozen)

    @property
    def labels(self) -> int:
        """Labels in the recent window (0 after a switch)."""
        return self.frozen.window_count

    def holds(self, config: ModelConfig, n_learned: int) -> tuple[bool, str]:
        """Whether the learner is not worse than the frozen version (`publication.gate`), and why."""
        if not self.labels:
            return True, "no label yet"
        return gate(config, self.learner, self.frozen, n_learned)

    def reset_window(self) -> None:
        """The served version was switched: what the frozen side scored is another version's."""
        self.learner.reset_window()
        self.frozen.reset_window()

    def to_data(self) -> dict[str, Any]:
        return {"learner": self.learner.to_data(), "frozen": self.frozen.to_data()}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Paired:
        return cls(Evaluation.from_data(data["learner"], cumulative=False),
                   Evaluation.from_data(data["frozen"], cumulative=False))


class View:
    """What other threads and processes serve: the served version, or a recent copy of the learner
    it follows. Changed on the engine's thread only; readers take `published` (one reference)."""

    def __init__(self, served: Published) -> None:
        self.published = served
        self.learned = -1  # the learner's label count when it was copied
        self.at = -math.inf  # when (time.monotonic) it was copied

    def show(self, published: Published, learned: int = -1) -> None:
        """Serve `published` itself (frozen, or a copy taken when its learner had `learned` labels)."""
        self.published, self.learned = published, learned

    def stale(self, served: Published, learned: int) -> bool:
        """Whether a learner with `learned` labels, which `served` follows, learned since the copy."""
        return learned != self.learned or self.published.version != served.version

    def refresh(self, served: Published, learner: Any, learned: int, *, force: bool) -> bool:
        """Copy `learner` (followed by `served`) if it learned since the last copy, at most every
        `VIEW_EVERY` seconds unless `force`. Return whether the view changed."""
        now = time.monotonic()
        if not self.stale(served, learned) or (not force and now - self.at < VIEW_EVERY):
            return False
        self.published = dataclasses.replace(served, model=copy_model(learner))
        self.learned, self.at = learned, now
        return True
