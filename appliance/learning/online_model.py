"""The online models: candidates that learn side by side, and the evaluated version that serves.

Every candidate (the `[model]` learner, called "main", each `[[model.challenger]]`, fresh
challengers started on drift, registered versions put up as challengers) predicts every event in
shadow and is scored on every label, before it learns from it. The champion is the candidate whose
lineage serves. Every version is a frozen copy in the registry; it changes only by a `Decision`:

* publish: the champion's learner, on the schedule and past the gate of `publication`;
* promote: a challenger whose learner beat the champion's (`candidates.winning_challenger`), or one
  an operator names;
* rollback: a policy promotion that then does worse on probation (`candidates.Probation`) than the
  version it replaced or the replaced champion's live learner (or an operator's rollback).

A published version follows its learner (`[model] follow`, on by default; `learning.following`):
between checks, the stream's events are scored by the champion's learner itself, and the other
threads and processes serve `view`, a copy of it refreshed after batches. After every label the
learner's recent `gate_metric` is compared with the frozen version's on the same events: worse by
more than `publish_margin`, and the frozen version serves as it is (no longer following) until the
learner passes that comparison at a check; not worse at a check, and the learner is frozen as the
next version, which follows in turn. A promotion, a rollback or a pause serves the frozen version.

Every version gets a number never reused; `catalog` keeps every version's metadata (the models
themselves live in the store's registry), `history` the versions that served, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from appliance.config.file import CHAMPION, ModelConfig
from appliance.config.lifecycle import Lifecycle
from appliance.learning.candidates import (
    Candidate,
    Probation,
    backfill,
    promote_metric,
    warm_started,
    winning_challenger,
)
from appliance.learning.following import Paired, View
from appliance.learning.metrics import Evaluation
from appliance.learning.publication import gate, labels_between_checks
from appliance.learning.shadow import Shadow
from appliance.learning.versions import Decision, Published, Versions, copy_model

if TYPE_CHECKING:
    from appliance.engine.label_join import Pending



class OnlineModel:
    """The candidates, their prequential evaluations, and the evaluated version that serves."""

    def __init__(self, config: ModelConfig, spec: str, lifecycle: Lifecycle | None = None) -> None:
        self.config = config
        self.lifecycle = lifecycle or Lifecycle()
        self.task = config.task
        window = config.metric_window
        self.candidates: dict[str, Candidate] = {CHAMPION: Candidate.untrained(CHAMPION, spec, config.task, window)}
        for challenger in config.challengers:
            self.candidates[challenger.name] = Candidate.untrained(challenger.name, challenger.spec, config.task, window)
        self.champion = CHAMPION
        self.served_eval = Evaluation(config.task, window)
        # (x as JSON, y): warm starts replay these. Encoded, 10,000 examples are 10,000 objects to keep
        # and to checkpoint, not half a million floats.
        self.examples: deque = deque(maxlen=self.lifecycle.warm_start)
        self.probation: Probation | None = None
        self.n_learned = 0
        self.labels_since_check = 0
        self.last_check_ts: float | None = None  # event time of the last scheduled check
        self.publications = 0
        self.refusals = 0
        self.promotions = 0
        self.rollbacks = 0
        self.retrains = 0
        self.paused = False
        self.versions = Versions()
        self.following = False  # the served version follows its learner (`[model] follow`)
        # With `follow`: the champion's learner and the frozen served version on the same events,
        # whether the stream was served by the one (following) or the other
        self.paired = Paired.fresh(config.task, window)
        self.served = self._new_version(self.candidates[CHAMPION], parent=None, event_ts=None)
        self._view = View(self.served)
        self.versions.served(self.served.version)

    _SCALARS = ("n_learned", "labels_since_check", "last_check_ts", "publications", "refusals", "promotions",
                 "rollbacks", "retrains", "paused", "champion", "following")

    def to_data(self) -> dict[str, Any]:
        """The state as plain data (`snapshot`); config and lifecycle come from the config at restore.

        The recently published versions are left out: the registry in the store has them.
        """
        return {**{name: getattr(self, name) for name in self._SCALARS}, "last_version": self.versions.last,
                "candidates": [candidate.to_data() for candidate in self.candidates.values()],
                "served_eval": self.served_eval.to_data(), "served": self.served.to_data(),
                "paired": self.paired.to_data(),
                "examples": [list(example) for example in self.examples],
                "probation": None if self.probation is None else self.probation.to_data(),
                "catalog": self.versions.catalog, "history": self.versions.history}

    def load_data(self, data: dict[str, Any]) -> None:
        """Take the state `to_data` described (then `reconcile` applies the config)."""
        for name in self._SCALARS:
            setattr(self, name, data[name])
        self.paired = Paired.from_data(data["paired"])
        self.candidates = {c["name"]: Candidate.from_data(c) for c in data["candidates"]}
        self.served_eval = Evaluation.from_data(data["served_eval"])
        self.served = Published.from_data(data["served"])
        self.examples = deque(((x, y) for x, y in data["examples"]), maxlen=self.lifecycle.warm_start)
        self.probation = None if data["probation"] is None else Probation.from_data(data["probation"])
        self.versions = Versions(data["last_version"], data["catalog"], data["history"])
        self._view = View(self.served)
        self.refresh_view(force=True)

    # -- the champion's learner ------------------------------------------------------------
    @property
    def learner(self) -> Any:
        return self.candidates[self.champion].model

    @property
    def learner_eval(self) -> Evaluation:
        return self.candidates[self.champion].evaluation

    @property
    def spec(self) -> str:
        return self.candidates[self.champion].spec

    # -- prediction and learning -----------------------------------------------------------
    def predict(self, model: Any, x: dict) -> Any:
        """Return a probability dict (classification) or a number (regression)."""
        return predict_with(self.task, model, x)

    @property
    def serving_model(self) -> Any:
        """What scores the stream's events on the engine's thread: the champion's learner while the
        served version follows it, else the frozen version."""
        return self.learner if self.following else self.served.model

    def shadow(self, x: dict) -> Shadow:
        """Every candidate's prediction for `x`, and the frozen reference's: the probation
        predecessor's, or while following, the frozen served version's."""
        scores = {name: self.predict(candidate.model, x) for name, candidate in self.candidates.items()}
        if self.probation is not None:
            return Shadow(scores, self.predict(self.probation.predecessor.model, x))
        if self.following:
            return Shadow(scores, self.predict(self.served.model, x))
        return Shadow(scores)

    @property
    def view(self) -> Published:
        """What other threads and processes serve: the served version, or a recent copy of the
        learner it follows (`following.View`)."""
        return self._view.published

    @property
    def view_stale(self) -> bool:
        """Whether the learner the served version follows learned since `view` was copied."""
        return self.following and self._view.stale(self.served, self.candidates[self.champion].n_learned)

    def refresh_view(self, *, force: bool = False) -> bool:
        """After a batch (on the engine's thread): while following, copy the learner if it learned
        since the last copy (`following.View.refresh`). Return whether the view changed."""
        if not self.following:
            changed = self._view.published is not self.served
            self._view.show(self.served)
            return changed
        return self._view.refresh(self.served, self.learner, self.candidates[self.champion].n_learned, force=force)

    def learn(self, x: dict, y: Any, shadow: Shadow, y_served: Any, event_ts: float) -> list[Decision]:
        """Score every candidate on this label, let them learn it, and decide what serves next."""
        self.served_eval.update(y, y_served)
        scores, late = shadow.scores, shadow.late
        y_champion = scores.get(self.champion)
        frozen = shadow.reference if self.following else y_served
        if self.config.follow and self.probation is None and frozen is not None and y_champion is not None:
            self.paired.update(y, y_champion, frozen)
        for name, candidate in self.candidates.items():
            prediction = scores.get(name)
            if prediction is None:
                pass
            elif late is not None and name in late:  # judged only against the champion's, made late too
                champion, champion_score = late[name]
                if champion == self.champion:
                    candidate.duel.update(y, prediction)
                    candidate.duel_champion.update(y, champion_score)
            else:
                candidate.evaluation.update(y, prediction)
                if name != self.champion and y_champion is not None:
                    candidate.duel.update(y, prediction)
                    candidate.duel_champion.update(y, y_champion)
            if candidate.learns:
                candidate.model.learn_one(x, y)
                candidate.n_learned += 1
        if self.examples.maxlen:
            self.examples.append((orjson.dumps(x), y))
        self.n_learned += 1
        decisions = []
        if self.probation is not None and shadow.reference is not None:
            trial = self.probation
            trial.update(y, y_served, shadow.reference, scores.get(trial.promoted), scores.get(trial.champion))
            decisions += self._judge_probation(event_ts)
            if any(d.switched for d in decisions):
                self.labels_since_check = 0  # the next check compares with the restored version
                return decisions
        self.labels_since_check += 1
        if self.following and not self.paired.holds(self.config, self.n_learned)[0]:  # at every label
            return decisions + [self._freeze()]
        if self.last_check_ts is None:
            self.last_check_ts = event_ts
        if self.paused or not self._check_is_due(event_ts):
            return decisions
        self.labels_since_check = 0
        self.last_check_ts = event_ts
        return decisions + self.check(event_ts)

    def _check_is_due(self, event_ts: float) -> bool:
        if self._untrained_serves():  # the untrained first version gives way as soon as the learner has learned
            return self.candidates[self.champion].n_learned >= self.config.first_publish
        interval = self.config.publish_interval
        return self.labels_since_check >= labels_between_checks(self.config, self.n_learned) or (
            interval is not None and event_ts - self.last_check_ts >= interval)

    def _untrained_serves(self) -> bool:
        return self.served.parent is None and self.served.n_learned == 0 and self.served.candidate == CHAMPION

    def check(self, event_ts: float | None) -> list[Decision]:
        """The scheduled check: promote a challenger that wins, else publish the champion's learner."""
        if self.lifecycle.auto_promote and self.probation is None:
            winner = winning_challenger(self.candidates.values(), self.champion, self.lifecycle.promote_after,
                                        self.lifecycle.promote_margin, self.lifecycle.promote_confirm,
                                        promote_metric(self.task, self.lifecycle))
            if winner is not None:
                candidate, reason = winner
                return [self.promote_candidate(candidate.name, event_ts, reason, by_policy=True)]
        if not self.candidates[self.champion].learns:
            return []  # a frozen champion (an offline model) has no learner to publish
        return [self.try_publish(event_ts)]

    def try_publish(self, event_ts: float | None) -> Decision:
        """Publish the champion's learner if it passes the gate (`publication.gate`); the untrained
        first version gives way without a comparison once the learner has `first_publish` labels."""
        if self._untrained_serves():
            reason = f"first version: the learner has {self.candidates[self.champion].n_learned} labels"
        elif self.config.follow and self.paired.labels:
            ok, reason = self.paired.holds(self.config, self.n_learned)
            if not ok:
                return self._freeze() if self.following else self._refuse(reason)
            reason = f"{reason} (following {self.served.name})" if self.following else reason
        else:
            ok, reason = gate(self.config, self.learner_eval, self.served_eval, self.n_learned)
            if not ok:
                return self._refuse(reason)
        published = self.publish_now(event_ts)
        return Decision("publish", published.version, reason, published, True)

    def _refuse(self, reason: str) -> Decision:
        self.refusals += 1
        return Decision("refuse", None, reason)

    def _freeze(self) -> Decision:
        """The learner did worse than the version it follows: that version serves, frozen, until the
        learner passes the gate against it. The same version serves, so it is not a switch: its
        errors go on as one stream for the drift detector."""
        _, reason = self.paired.holds(self.config, self.n_learned)
        self.refusals += 1
        self.stop_following()
        return Decision("freeze", self.served.version, f"{reason}; {self.served.name} serves frozen")

    def publish_now(self, event_ts: float | None) -> Published:
        """Freeze the champion's learner as a new version and serve it, with no gate; it follows
        its learner from now on with `[model] follow`."""
        published = self._new_version(self.candidates[self.champion], self.served.version, event_ts)
        self.serve(published, reset_window=False)
        self.publications += 1
        if self.config.follow and not self.paused:
            self.following = True
        return published

    def stop_following(self) -> None:
        """Serve the frozen version as it is (its learner keeps learning, unpublished)."""
        if self.following:
            self.following = False
            self._view.show(self.served)

    def promote_candidate(self, name: str, event_ts: float | None, reason: str, *, by_policy: bool) -> Decision:
        """Serve candidate `name` (a frozen copy of its learner) and make it the champion."""
        candidate = self.candidates[name]
        predecessor, champion_before = self.served, self.champion
        if candidate.learns:
            published = self._new_version(candidate, self.served.version, event_ts)
            new_version = published
        else:
            published = Published(model=candidate.model, **self.catalog[candidate.version])
            new_version = None
        self.champion = name
        self.serve(published)
        self.promotions += 1
        if by_policy and self.lifecycle.auto_rollback:
            live = champion_before in self.candidates and self.candidates[champion_before].learns
            self.probation = Probation(predecessor, champion_before, published, self.task, self.config.metric_window,
                                       live=live, metric=promote_metric(self.task, self.lifecycle))
        return Decision("promote", published.version, reason, new_version, True)

    def _judge_probation(self, event_ts: float) -> list[Decision]:
        """After `rollback_after` labels: keep the promotion, or roll back if it lost to either baseline
        (`Probation.verdict`): to the version it replaced, or to a new version of the live learner."""
        trial, life = self.probation, self.lifecycle
        if trial.current.window_count < life.rollback_after or self.paused:
            return []
        self.probation = None
        verdict = trial.verdict(life.rollback_margin, self.served.version, live_available=trial.champion in self.candidates)
        figures = verdict.figures
        if not verdict.lost_to:
            return [Decision("keep", self.served.version, f"probation passed: {figures}")]
        failed = f"{trial.promoted} (promoted as v{trial.version}, serving as v{self.served.version})"
        lost_to, self.rollbacks = verdict.lost_to, self.rollbacks + 1
        if trial.champion in self.candidates:
            self.champion = trial.champion
        if verdict.live_is_better:
            published = self._new_version(self.candidates[trial.champion], self.served.version, event_ts)
            self.serve(published)
            decisions = [Decision("rollback", published.version, f"{failed} did worse than {lost_to}: {figures}; "
                                                                 f"{trial.champion}'s learner serves as v{published.version}",
                                  published, True)]
        else:
            self.serve(trial.predecessor)
            decisions = [Decision("rollback", trial.predecessor.version,
                                  f"{failed} did worse than {lost_to}: {figures}", None, True)]
        if trial.promoted.startswith("retrain-") and trial.promoted in self.candidates:
            decisions.append(self.retire(trial.promoted, f"its promotion (v{trial.version}) was rolled back"))
        return decisions

    # -- challengers -----------------------------------------------------------------------
    def start_challenger(self, reason: str, since_change: int | None = None) -> Decision | None:
        """A fresh model (`challenger_spec`, or the champion's), warm-started on the kept examples.

        By default (`warm_start_from = "last"`) it learns all of the last `warm_start` labelled
        examples; with "change" only the last `since_change` of them, the detector's estimate of how
        many labels arrived since the change (ADWIN's window after its cut), and none without an
        estimate (docs/lifecycle.md measures both on River's drifting streams).
        Returns None while the previous fresh challenger has not yet been scored on enough labels to
        be judged (a burst of alerts starts one challenger).
        """
        life = self.lifecycle
        fresh = [c for c in self.candidates.values() if c.name.startswith("retrain-") and c.name != self.champion]
        if fresh and fresh[-1].duel.window_count < life.promote_after:
            return None
        champion = self.candidates[self.champion]
        spec = life.challenger_spec or (champion.spec if champion.learns else self.candidates.get(CHAMPION, champion).spec)
        everything = life.warm_start_from == "last"
        warm = len(self.examples) if everything else min(len(self.examples), max(0, since_change or 0))
        model = warm_started(spec, self.task, self.examples, warm)
        self.retrains += 1
        name = f"retrain-{self.retrains}"
        candidate = Candidate(name, spec, model, self.task, self.config.metric_window, origin=reason)
        candidate.n_learned = warm
        decisions_note = ""
        while len(self.candidates) - 1 >= life.max_challengers and fresh:
            oldest = fresh.pop(0)
            del self.candidates[oldest.name]
            decisions_note += f"; retired {oldest.name} to stay within {life.max_challengers} challengers"
        self.candidates[name] = candidate
        start = (f"warm-started on the last {warm} labelled examples" + ("" if everything else " (since the estimated change)")
                 if warm else "untrained (no estimate of the change)" if since_change is None else "untrained")
        return Decision("challenger", None, f"{name} started ({spec}), {start}, after {reason}{decisions_note}",
                        candidate=name)

    def backfill(self, name: str, pending: Iterable[Pending]) -> int:
        """Let new challenger `name` score the predictions still waiting for their labels, now
        (`candidates.backfill`); returns how many it scored."""
        champion = self.candidates[self.champion]
        return backfill(self.candidates[name], self.champion, champion.model, pending, self.predict)

    def add_challenger(self, published: Published) -> Decision:
        """Put a registered version up as a challenger: a River model learns on, an offline one does not."""
        name = f"v{published.version}"
        learns = callable(getattr(published.model, "learn_one", None)) and not getattr(published.model, "frozen", False)
        model = copy_model(published.model) if learns else published.model
        candidate = Candidate(name, published.spec, model, self.task, self.config.metric_window, learns=learns,
                              origin=f"registry v{published.version}", version=None if learns else published.version)
        candidate.n_learned = published.n_learned
        self.candidates[name] = candidate
        what = "learns on from there" if learns else "is scored but does not learn"
        return Decision("challenger", published.version, f"{name} put up as a challenger; it {what}", candidate=name)

    def retire(self, name: str, reason: str) -> Decision:
        """Drop a challenger (never the champion)."""
        del self.candidates[name]
        return Decision("retire", None, f"{name} retired: {reason}")

    def reconcile(self, config: ModelConfig, lifecycle: Lifecycle) -> list[Decision]:
        """After a restore: take the config's settings, add its new challengers, drop removed ones."""
        self.config, self.lifecycle = config, lifecycle
        if self.examples.maxlen != lifecycle.warm_start:
            self.examples = deque(self.examples, maxlen=lifecycle.warm_start)
        wanted = {c.name for c in config.challengers}
        decisions = [self.retire(name, "it is no longer in the config") for name, c in list(self.candidates.items())
                     if c.origin == "config" and name not in (CHAMPION, self.champion) and name not in wanted]
        for challenger in config.challengers:
            if challenger.name not in self.candidates:
                self.candidates[challenger.name] = Candidate.untrained(challenger.name, challenger.spec, self.task,
                                                                       config.metric_window)
                decisions.append(Decision("challenger", None, f"{challenger.name} added from the config "
                                          f"({challenger.spec}); it starts untrained", candidate=challenger.name))
        return decisions

    # -- serving ---------------------------------------------------------------------------
    def serve(self, published: Published, *, reset_window: bool = True) -> None:
        """Make `published` the served version (one reference swap).

        A switch other than a publication restarts the served model's recent window and every
        challenger's duel, so they compare with what serves now, not with what served before.
        """
        self.following = False  # a publication follows again (`publish_now`); nothing else does
        self.served = published
        self._view.show(published, published.n_learned if published.candidate == self.champion else -1)
        self.versions.served(published.version)
        if reset_window:
            self.served_eval.reset_window()
            self.paired.reset_window()
            for candidate in self.candidates.values():
                candidate.reset_duel()

    def switch_to(self, published: Published) -> None:
        """An operator's promote or rollback: serve `published`, make its lineage the champion if it
        still competes, and end any probation (the operator judged)."""
        self.serve(published)
        if published.candidate in self.candidates:
            self.champion = published.candidate
        self.probation = None

    def set_publishing(self, *, paused: bool) -> None:
        """Pause or resume automatic publication (promotion and rollback by policy wait with it); a
        paused version no longer follows its learner."""
        self.paused = paused
        if paused:
            self.stop_following()

    def needed_versions(self) -> tuple[int, ...]:
        """The versions that can still serve without a new publication: served, the one a rollback
        returns to, the probation predecessor, registered versions running as candidates, and the
        recent ones kept in memory. Their model bytes stay in the registry (`registry.thin_models`)."""
        needed = {self.served.version, *self.versions.recent}
        needed.update(c.version for c in self.candidates.values() if c.version is not None)
        if self.probation is not None:
            needed.add(self.probation.predecessor.version)
        previous = self.previous()
        if previous is not None:
            needed.add(previous)
        return tuple(sorted(needed))

    def previous(self) -> int | None:
        """The version that served before the current one (what a rollback returns to)."""
        return self.versions.previous(self.served.version)

    @property
    def catalog(self) -> dict[int, dict[str, Any]]:
        """Every version's metadata, by number (`Versions.catalog`)."""
        return self.versions.catalog

    @property
    def recent(self) -> dict[int, Published]:
        """The newest versions with their models (`Versions.recent`)."""
        return self.versions.recent

    def register(self, model: Any, spec: str, n_learned: int, metrics: dict, event_ts: float | None,
                 candidate: str = "import") -> Published:
        """Add a model from outside (an import) to the registry as a new version; it does not serve."""
        return self.versions.add(model, spec, n_learned, metrics, parent=None, event_ts=event_ts, candidate=candidate)

    def _new_version(self, candidate: Candidate, parent: int | None, event_ts: float | None) -> Published:
        metrics = candidate.evaluation.values() if candidate.evaluation.count else {}
        return self.versions.freeze(candidate.model, candidate.spec, candidate.n_learned, metrics, parent=parent,
                                    event_ts=event_ts, candidate=candidate.name)


def predict_with(task: str, model: Any, x: dict) -> Any:
    """A model's prediction for a task: a probability dict (classification) or a number (regression);
    the one definition the engine and the serving replicas share."""
    if task == "classification":
        return model.predict_proba_one(x)
    value = model.predict_one(x)
    return 0.0 if value is None else float(value)
