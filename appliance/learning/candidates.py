"""What competes to serve: candidates scored in shadow, and a promotion on probation.

A `Candidate` is one model that predicts every event at event time and is scored on its label
before it learns it: its lifetime prequential metrics, and a duel against the champion's learner on
the same labels since the champion last changed (what promotion by policy compares). A `Probation`
scores a policy promotion against the version it replaced and against the replaced champion's
live learner, for an automatic rollback.
`learning.OnlineModel` owns both.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from appliance.config.model_spec import build_model
from appliance.learning.metrics import GATE, PRIMARY, Evaluation, better_by, bigger_is_better, not_worse
from appliance.learning.versions import Published
from appliance.storage.snapshot import dump_object, load_object

if TYPE_CHECKING:
    from appliance.config.lifecycle import Lifecycle
    from appliance.engine.label_join import Pending


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
        # this candidate since the champion last changed, and the champion's learner on the same labels:
        # judged on their recent labels only (`winning_challenger`), so no cumulative metrics
        self.duel = Evaluation(task, window, cumulative=False)
        self.duel_champion = Evaluation(task, window, cumulative=False)
        self.lead_since: int | None = None  # duel labels at the first check of its current lead (`winning_challenger`)
        self.n_learned = 0

    @classmethod
    def untrained(cls, name: str, spec: str, task: str, window: int) -> Candidate:
        """A candidate of `spec` that has learned nothing yet (the config's)."""
        return cls(name, spec, build_model(spec, task), task, window)

    def to_data(self) -> dict[str, Any]:
        """The candidate as plain data; its model pickled on its own."""
        return {"name": self.name, "spec": self.spec, "model": dump_object(self.model), "learns": self.learns,
                "origin": self.origin, "version": self.version, "n_learned": self.n_learned,
                "evaluation": self.evaluation.to_data(), "duel": self.duel.to_data(),
                "duel_champion": self.duel_champion.to_data(), "lead_since": self.lead_since}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Candidate:
        """The candidate `to_data` described."""
        evaluation = Evaluation.from_data(data["evaluation"])
        candidate = cls(data["name"], data["spec"], load_object(data["model"]), evaluation.task, evaluation.window,
                        learns=data["learns"], origin=data["origin"], version=data["version"])
        candidate.n_learned = data["n_learned"]
        candidate.evaluation = evaluation
        candidate.duel = Evaluation.from_data(data["duel"], cumulative=False)
        candidate.duel_champion = Evaluation.from_data(data["duel_champion"], cumulative=False)
        candidate.lead_since = data.get("lead_since")  # absent in an earlier release's checkpoint
        return candidate

    def reset_duel(self) -> None:
        self.duel.reset_window()
        self.duel_champion.reset_window()
        self.lead_since = None

    def summary(self, champion: str) -> dict[str, Any]:
        values = self.evaluation.values() if self.evaluation.count else {}
        row = {"name": self.name, "role": "champion" if self.name == champion else "challenger",
               "spec": self.spec, "learns": self.learns, "origin": self.origin, "n_learned": self.n_learned,
               "labels_scored": self.evaluation.count, "metrics": values}
        if self.name != champion:
            row["versus_champion"] = {"labels": self.duel.window_count, "challenger": self.duel.window_primary(),
                                      "champion": self.duel_champion.window_primary()}
        return row


def promote_metric(task: str, lifecycle: Lifecycle) -> str:
    """What duels and probations compare: `[lifecycle] promote_metric`, else the publication gate's
    default (log loss for classification, a proper scoring rule; MAE for regression)."""
    return lifecycle.promote_metric or GATE[task]


def winning_challenger(candidates: Iterable[Candidate], champion: str, promote_after: int,
                       margin: float, confirm: int = 0, metric: str | None = None) -> tuple[Candidate, str] | None:
    """The challenger whose learner beat the champion's learner by more than `margin` of `metric` (the
    task's primary metric if None) over at least
    `promote_after` labels scored by both, at every check for the last `confirm` of them (the best if
    several did), with the reason; else None.

    Called at each scheduled check, it records when each challenger's lead began (`lead_since`) and
    forgets it at the first check the lead is gone. Checks come every few dozen labels, so without
    `confirm` the first check at which a noisy difference crosses the margin promotes: on River's
    drifting streams (docs/lifecycle.md) challengers that led by 0.020-0.021 ROC AUC at one check
    were promoted and then served worse than the champion would have.
    """
    best = None
    for candidate in candidates:
        if candidate.name == champion or candidate.duel.window_count < promote_after:
            continue
        name = metric or candidate.duel.primary
        mine, theirs = candidate.duel.window_value(name), candidate.duel_champion.window_value(name)
        if not better_by(mine, theirs, margin, bigger_is_better(candidate.duel.task, name)):
            candidate.lead_since = None
            continue
        if candidate.lead_since is None:
            candidate.lead_since = candidate.duel.window_count
        if candidate.duel.window_count - candidate.lead_since < confirm:
            continue
        if best is None or better_by(mine, best[1], 0.0, bigger_is_better(candidate.duel.task, name)):
            best = (candidate, mine, theirs)
    if best is None:
        return None
    candidate, mine, theirs = best
    held = candidate.duel.window_count - candidate.lead_since
    return candidate, (f"{candidate.name} beat the champion {champion} on the last "
                       f"{min(candidate.duel.window_count, candidate.duel.window)} labels scored by both: "
                       f"{metric or candidate.duel.primary} {mine:.4f} vs {theirs:.4f} (margin {margin}; "
                       f"ahead by more than the margin at every check for {held} labels)")


def warm_started(spec: str, task: str, examples: Sequence[tuple[bytes, Any]], warm: int) -> Any:
    """A fresh model of `spec` that learned the last `warm` of `examples` ((x as JSON, y), oldest first)."""
    model = build_model(spec, task)
    for x, y in itertools.islice(examples, len(examples) - warm, None):
        model.learn_one(orjson.loads(x) if isinstance(x, bytes) else x, y)  # a dict: an earlier release's
    return model


def backfill(candidate: Candidate, champion: str, champion_model: Any, pending: Iterable[Pending],
             predict: Callable[[Any, dict], Any]) -> int:
    """Let a new challenger score the predictions still waiting for their labels, now.

    A challenger started at time T would otherwise be judged only on events it scored itself,
    whose labels arrive up to a label horizon later. Scoring the waiting ones at T is fair only
    against the champion's learner scoring them at T too (both know the labels that arrived
    before T, neither knows these); so both scores are stored (`Shadow.late`), these labels count
    only in the challenger's duel, and never in its prequential metrics. Returns how many were scored.
    """
    count = 0
    for waiting in pending:
        scored = waiting.unpack()
        if candidate.name in scored.shadow.scores:
            continue
        scored.shadow.add_late(candidate.name, predict(candidate.model, scored.x), champion,
                               predict(champion_model, scored.x))
        waiting.repack(scored)
        count += 1
    return count


class Verdict(NamedTuple):
    """A probation's outcome: what the promotion lost to (empty: it passed), and the figures."""

    lost_to: str
    live_is_better: bool  # roll back to a new version of the live learner, not the replaced version
    figures: str


class Probation:
    """A policy promotion on trial, on the same labels, against the two things it could have been:

    * the frozen version it replaced (`current` is what serves now, `previous` that version), and
    * the replaced champion's live learner, which kept learning in shadow and would have been
      published by now (`mine` is the promoted candidate's learner, `live` that learner); `live` is
      None when the replaced champion does not learn (an offline model).
    """

    def __init__(self, predecessor: Published, champion: str, promoted: Published, task: str, window: int,
                 *, live: bool = True, metric: str | None = None) -> None:
        self.predecessor = predecessor
        self.metric = metric or PRIMARY[task]  # what the verdict compares
        self.champion = champion  # the candidate that was champion before
        self.promoted = promoted.candidate
        self.version = promoted.version
        self.current = Evaluation(task, window)
        self.previous = Evaluation(task, window)
        self.mine = Evaluation(task, window)
        self.live: Evaluation | None = Evaluation(task, window) if live else None

    _EVALUATIONS = ("current", "previous", "mine", "live")

    def to_data(self) -> dict[str, Any]:
        """The probation as plain data (the replaced version with its model)."""
        data = {"predecessor": self.predecessor.to_data(), "champion": self.champion, "promoted": self.promoted,
                "version": self.version, "metric": self.metric}
        for name in self._EVALUATIONS:
            evaluation = getattr(self, name)
            data[name] = None if evaluation is None else evaluation.to_data()
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Probation:
        """The probation `to_data` described."""
        probation = cls.__new__(cls)
        probation.predecessor = Published.from_data(data["predecessor"])
        probation.champion, probation.promoted, probation.version = data["champion"], data["promoted"], data["version"]
        for name in cls._EVALUATIONS:
            setattr(probation, name, None if data[name] is None else Evaluation.from_data(data[name]))
        probation.metric = data.get("metric") or probation.current.primary  # absent before `promote_metric`
        return probation

    def update(self, y: Any, y_served: Any, y_previous: Any, y_mine: Any, y_live: Any) -> None:
        """Score one label: served vs the replaced version, the promoted learner vs the live one."""
        self.current.update(y, y_served)
        self.previous.update(y, y_previous)
        if self.live is not None and y_mine is not None and y_live is not None:
            self.mine.update(y, y_mine)
            self.live.update(y, y_live)

    def verdict(self, margin: float, served: int, *, live_available: bool = True) -> Verdict:
        """Judge the promotion (serving as version `served`): worse than either baseline by more than `margin`?

        A rollback returns to the replaced champion's lineage: exactly the replaced version when it
        scored at least as well as the live learner on these labels, else a new version of the learner.
        """
        better = bigger_is_better(self.current.task, self.metric)
        now, before = self.current.window_value(self.metric), self.previous.window_value(self.metric)
        figures = (f"{self.metric} on the last {min(self.current.window_count, self.current.window)} "
                   f"labels: v{served} {_fmt(now)} vs v{self.predecessor.version} {_fmt(before)}")
        mine = live = None
        if self.live is not None and live_available:
            mine, live = self.mine.window_value(self.metric), self.live.window_value(self.metric)
            figures += f"; learners: {self.promoted} {_fmt(mine)} vs {self.champion} {_fmt(live)}"
        figures += f" (margin {margin})"
        lost = [what for what, a, b in (("the version it replaced", now, before),
                                        (f"the live learner of {self.champion}", mine, live))
                if a is not None and b is not None and not not_worse(a, b, margin, better)]
        live_is_better = live is not None and (before is None or better_by(live, before, 0.0, better))
        return Verdict(" and ".join(lost), live_is_better, figures)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
