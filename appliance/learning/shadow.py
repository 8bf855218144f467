"""What a scored event carries until its label: every candidate's prediction made at event time.

`learning.OnlineModel.shadow` makes one per event; it waits with the prediction
(`label_join.Pending`, packed as its plain fields: pickling a class instance per prediction would
cost more than the rest of the pack) and `OnlineModel.learn` scores the candidates on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Shadow:
    """Every candidate's prediction for one event, made when the event was scored, kept with the
    prediction until its label arrives (`label_join.Pending`)."""

    scores: dict[str, Any]  # candidate name -> its prediction
    # The prediction of the frozen version the served one was judged against when the event was
    # scored: while on probation, the version a policy promotion replaced; while the served version
    # follows its learner (`[model] follow`), the snapshot it was last published as.
    reference: Any = None
    # Candidates that scored this event late (a challenger started while its label was pending):
    # name -> [the champion then, the champion's learner's prediction then]. Judged only in the duel.
    late: dict[str, list] | None = None

    def fields(self) -> tuple[dict[str, Any], Any, dict[str, list] | None]:
        """The fields as plain data, in order (what `label_join.Pending` packs)."""
        return self.scores, self.reference, self.late

    def add_late(self, name: str, score: Any, champion: str, champion_score: Any) -> None:
        """Record a challenger's late prediction, and the champion's learner's made at the same time."""
        self.scores[name] = score
        self.late = {**(self.late or {}), name: [champion, champion_score]}
