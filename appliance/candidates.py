"""What competes to serve: candidates scored in shadow, and a promotion on probation.

A `Candidate` is one model that predicts every event at event time and is scored on its label
before it learns it: its lifetime prequential metrics, and a duel against the champion's learner on
the same labels since the champion last changed (what promotion by policy compares). A `Probation`
scores a policy promotion against the version it replaced, for an automatic rollback.
`learning.OnlineModel` owns both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .metrics import Evaluation

if TYPE_CHECKING:
    from .versions import Published


class Candidate:
    """A model that predicts every event in shadow and is scored on every label."""

    def __init__(self, name: str, spec: str, model: Any, task: str, window: int, *, learns: bool = True,
                 origin: str = "config", version: int | None = None) -> None:
        self.name = name
        self.spec = spec
        self.model = model
        self.learns = learns
        self.origin = origin
        self.version = version  # a registered version put up as a challenger
        self.evaluation = Evaluation(task, window)
        self.duel = Evaluation(task, window)  # this candidate since the champion last changed...
        self.duel_champion = Evaluation(task, window)  # ...and the champion's learner on the same labels
        self.n_learned = 0

    def reset_duel(self) -> None:
        self.duel.reset_window()
        self.duel_champion.reset_window()

    def summary(self, champion: str) -> dict[str, Any]:
        values = self.evaluation.values() if self.evaluation.count else {}
        row = {"name": self.name, "role": "champion" if self.name == champion else "challenger",
               "spec": self.spec, "learns": self.learns, "origin": self.origin, "n_learned": self.n_learned,
               "labels_scored": self.evaluation.count, "metrics": values}
        if self.name != champion:
            row["versus_champion"] = {"labels": self.duel.window_count, "challenger": self.duel.window_primary(),
                                      "champion": self.duel_champion.window_primary()}
        return row


class Probation:
    """A policy promotion on trial: the new served version against the one it replaced."""

    def __init__(self, predecessor: Published, champion: str, promoted: Published, task: str, window: int) -> None:
        self.predecessor = predecessor
        self.champion = champion  # the candidate that was champion before
        self.promoted = promoted.candidate
        self.version = promoted.version
        self.current = Evaluation(task, window)
        self.previous = Evaluation(task, window)
