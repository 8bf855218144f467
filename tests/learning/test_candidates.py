"""candidates.py through its public parts: the promotion rule, a probation's verdict, the shadow
record of one scored event, a challenger's warm start and backfill (River's own models, seeded)."""

from __future__ import annotations

import random

import orjson

from appliance.config.model_spec import build_model
from appliance.engine.label_join import Pending, Scored
from appliance.learning.candidates import Candidate, Probation, backfill, warm_started, winning_challenger
from appliance.learning.shadow import Shadow
from appliance.learning.versions import Published

LEARNER = "preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))"


def duel(candidate: Candidate, n: int, mine: float, champion: float, seed: int = 1) -> None:
    """Score `candidate` and the champion's learner on the same n labels, right with these probabilities."""
    rng = random.Random(seed)
    for _ in range(n):
        y = rng.random() < 0.5
        for evaluation, p in ((candidate.duel, mine), (candidate.duel_champion, champion)):
            right = rng.random() < p
            q = 0.8 if right == y else 0.2
            evaluation.update(y, {True: q, False: 1 - q})


def candidate(name: str) -> Candidate:
    return Candidate.untrained(name, LEARNER, "classification", 500)


def test_the_challenger_that_beat_the_champion_by_the_margin_over_enough_labels_wins():
    champion, close, clear, young = candidate("main"), candidate("close"), candidate("clear"), candidate("young")
    duel(close, 400, mine=0.71, champion=0.70)
    duel(clear, 400, mine=0.90, champion=0.70, seed=2)
    duel(young, 50, mine=0.99, champion=0.50, seed=3)  # far better, on too few labels
    duel(champion, 400, mine=0.99, champion=0.50, seed=4)  # the champion is never its own challenger
    pool = [champion, close, clear, young]
    won = winning_challenger(pool, "main", promote_after=100, margin=0.05)
    assert won is not None and won[0] is clear
    assert won[1].startswith("clear beat the champion main on the last 400 labels scored by both: roc_auc ")
    assert winning_challenger([champion, close, young], "main", promote_after=100, margin=0.05) is None
    assert winning_challenger(pool, "main", promote_after=1000, margin=0.05) is None


def version(number: int, candidate_name: str = "main") -> Published:
    return Published(version=number, model=None, spec=LEARNER, parent=None, n_learned=0, event_ts=None, wall_ts=0.0,
                     metrics={}, candidate=candidate_name)


def probation_scored(served: float, previous: float, mine: float, live: float, n: int = 300) -> Probation:
    trial = Probation(version(4), "main", version(5, "fast"), "classification", 500)
    rng = random.Random(7)
    for _ in range(n):
        y = rng.random() < 0.5
        p = [0.8 if (rng.random() < right) == y else 0.2 for right in (served, previous, mine, live)]
        trial.update(y, *({True: q, False: 1 - q} for q in p))
    return trial


def test_a_probation_passes_when_the_promotion_is_not_worse_than_either_baseline():
    verdict = probation_scored(served=0.9, previous=0.7, mine=0.9, live=0.7).verdict(0.01, served=5)
    assert verdict.lost_to == "" and "v5" in verdict.figures and "learners: fast" in verdict.figures


def test_a_probation_fails_against_the_replaced_version_and_rolls_back_to_it_when_it_beats_the_live_learner():
    verdict = probation_scored(served=0.6, previous=0.9, mine=0.9, live=0.6).verdict(0.01, served=5)
    assert verdict.lost_to == "the version it replaced" and verdict.live_is_better is False


def test_a_probation_fails_against_the_live_learner_and_rolls_back_to_a_new_version_of_it():
    verdict = probation_scored(served=0.8, previous=0.6, mine=0.6, live=0.95).verdict(0.01, served=5)
    assert verdict.lost_to == "the live learner of main" and verdict.live_is_better is True
    # with the replaced champion gone (retired), only the frozen version is compared
    assert probation_scored(0.8, 0.6, 0.6, 0.95).verdict(0.01, served=5, live_available=False).lost_to == ""


def examples(n: int, seed: int = 3) -> list[tuple[bytes, bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        amount = rng.uniform(0, 200)
        out.append((orjson.dumps({"amount": amount}), amount > 100))
    return out


def test_a_warm_start_learns_exactly_the_last_examples_in_order():
    kept = examples(300)
    model = warm_started(LEARNER, "classification", kept, 40)
    expected = build_model(LEARNER, "classification")
    for x, y in kept[-40:]:
        expected.learn_one(orjson.loads(x), y)
    probe = {"amount": 150.0}
    assert model.predict_proba_one(probe) == expected.predict_proba_one(probe)
    assert warm_started(LEARNER, "classification", kept, 0).predict_proba_one(probe) == \
        build_model(LEARNER, "classification").predict_proba_one(probe)


def test_backfill_scores_the_waiting_predictions_late_beside_the_champions_learner_once():
    champion = candidate("main")
    for x, y in examples(200):
        champion.model.learn_one(orjson.loads(x), y)
    fresh = Candidate("retrain-1", LEARNER, warm_started(LEARNER, "classification", examples(200, seed=4), 50),
                      "classification", 500)

    def predict(model, x):
        return model.predict_proba_one(x)

    waiting = [Pending.pack(Scored(f"e{i}", i, float(i), {"amount": 20.0 * i}, Shadow({"main": {True: 0.5, False: 0.5}}),
                                   {True: 0.5, False: 0.5}, 1)) for i in range(5)]
    assert backfill(fresh, "main", champion.model, waiting, predict) == 5
    assert backfill(fresh, "main", champion.model, waiting, predict) == 0  # already scored: not again
    shadow = waiting[3].unpack().shadow
    assert shadow.scores["retrain-1"] == fresh.model.predict_proba_one({"amount": 60.0})
    assert shadow.late == {"retrain-1": ["main", champion.model.predict_proba_one({"amount": 60.0})]}
    assert shadow.scores["main"] == {True: 0.5, False: 0.5}  # the champion's own score at event time is kept


def test_a_challengers_summary_compares_it_with_the_champion_on_the_same_labels():
    challenger = candidate("fast")
    duel(challenger, 200, mine=0.9, champion=0.6)
    row = challenger.summary("main")
    assert row["role"] == "challenger" and row["versus_champion"]["labels"] == 200
    assert row["versus_champion"]["challenger"] > row["versus_champion"]["champion"]
    assert "versus_champion" not in candidate("main").summary("main")
