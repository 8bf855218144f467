"""Publication that follows the learner: the first version early, frequent checks, a proper scoring rule."""

from __future__ import annotations

import itertools
import random

import orjson
import pytest

from appliance.config.file import ModelConfig, config_from_dict
from appliance.config.model_spec import build_model
from appliance.errors import ConfigError
from appliance.learning.online_model import OnlineModel
from appliance.learning.publication import YOUNG

SPEC = "appliance.ScaleNumeric() | linear_model.LogisticRegression()"


def feed(model: OnlineModel, n: int, seed: int = 1, start: float = 0.0) -> list:
    """Label n events of a learnable stream, each scored by the served model and in shadow first."""
    rng, decisions = random.Random(seed), []
    for i in range(n):
        amount = rng.uniform(0, 200)
        x, y = {"amount": amount, f"city#{rng.randrange(3)}": 1.0}, amount > 100
        shadow, served = model.shadow(x), model.predict(model.served.model, x)
        decisions += model.learn(x, y, shadow, served, start + i)
    return decisions


def test_the_first_version_serves_once_the_learner_has_first_publish_labels():
    model = OnlineModel(ModelConfig(first_publish=5), SPEC)
    decisions = feed(model, 4)
    assert decisions == [] and model.served.version == 1
    decisions = feed(model, 1)
    assert [d.action for d in decisions] == ["publish"] and decisions[0].reason.startswith("first version")
    assert model.served.version == 2 and model.served.n_learned == 5


def test_checks_come_every_n_over_young_labels_up_to_publish_every():
    model = OnlineModel(ModelConfig(publish_every=7, first_publish=1), SPEC)
    checks = []
    for n in range(1, 1500):
        before = model.publications + model.refusals
        feed(model, 1, seed=n)
        if model.publications + model.refusals > before:
            checks.append(n)
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    assert checks[0] == 1 and gaps[:YOUNG] == [1] * YOUNG  # every label while young...
    assert set(gaps[-10:]) == {7}  # ...then every publish_every
    assert all(gap <= 7 for gap in gaps)


def overconfident(model: OnlineModel, learner: float, served: float, n: int = 40) -> None:
    """Score the learner and the served version on the same labels: the learner ranks as well (same
    ROC AUC) but is overconfident when wrong (worse log loss)."""
    rng = random.Random(3)
    for _ in range(n):
        y = rng.random() < 0.5
        right = rng.random() < 0.8
        p_learner = learner if right == y else 1 - learner
        p_served = served if right == y else 1 - served
        model.learner_eval.update(y, {True: p_learner, False: 1 - p_learner})
        model.served_eval.update(y, {True: p_served, False: 1 - p_served})


def test_the_gate_judges_by_log_loss_by_default_so_an_overconfident_learner_is_refused():
    model = OnlineModel(ModelConfig(), SPEC)
    model.publish_now(0.0)  # a trained version serves; the untrained first one would give way ungated
    overconfident(model, learner=0.999, served=0.7)
    assert model.learner_eval.window_value("roc_auc") == pytest.approx(model.served_eval.window_value("roc_auc"))
    decision = model.try_publish(1.0)
    assert decision.action == "refuse" and decision.reason.startswith("recent log_loss: learner ")


def test_gate_metric_roc_auc_publishes_the_same_overconfident_learner():
    model = OnlineModel(ModelConfig(gate_metric="roc_auc"), SPEC)
    model.publish_now(0.0)
    overconfident(model, learner=0.999, served=0.7)
    decision = model.try_publish(1.0)
    assert decision.action == "publish" and decision.reason.startswith("recent roc_auc: learner ")


def test_the_margin_keeps_a_learner_a_little_worse_publishing_and_refuses_a_clearly_worse_one():
    for learner_error, action in ((10.5, "publish"), (12.0, "refuse")):
        model = OnlineModel(ModelConfig(task="regression", publish_margin=1.0),
                            "appliance.ScaleNumeric() | linear_model.LinearRegression()")
        model.publish_now(0.0)
        for i in range(30):
            model.learner_eval.update(float(i), float(i) + learner_error)
            model.served_eval.update(float(i), float(i) + 10.0)
        decision = model.try_publish(1.0)
        assert decision.action == action and "recent mae: learner" in decision.reason


def test_the_served_version_keeps_up_with_the_learner_on_a_learnable_stream():
    model = OnlineModel(ModelConfig(), SPEC)
    feed(model, 3000)
    learner, served = model.learner_eval.values()["roc_auc"], model.served_eval.values()["roc_auc"]
    assert learner - served < 0.01
    assert model.publications < 3000 / 5  # but not a version per label: ~YOUNG * ln(n / YOUNG) + n / 100


def test_gate_metric_must_be_one_of_the_tasks_metrics():
    assert config_from_dict({"model": {"gate_metric": "roc_auc"}}).model.gate_metric == "roc_auc"
    with pytest.raises(ConfigError, match='gate_metric "mae" is not a classification metric'):
        config_from_dict({"model": {"gate_metric": "mae"}})
    with pytest.raises(ConfigError, match="first_publish"):
        config_from_dict({"model": {"first_publish": 0}})


LEARNER = "preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))"
FROZEN = "linear_model.LogisticRegression(optimizer=optim.SGD(0.0), intercept_lr=0.0)"  # always scores 0.5


def flip(model: OnlineModel, n: int, start: int = 0, flipped: bool = False, seed: int = 5) -> list:
    """Label n events: fraud is a big amount (a small one once `flipped`), each scored in shadow first."""
    rng, decisions = random.Random(seed + start), []
    for i in range(start, start + n):
        amount = rng.uniform(0, 200)
        x, y = {"amount": amount}, (amount > 100) != flipped
        decisions += model.learn(x, y, model.shadow(x), model.predict(model.served.model, x), float(i))
    return decisions


def with_challenger(champion: str, challenger: str, **lifecycle) -> OnlineModel:
    from appliance.config.lifecycle import ChallengerSpec, Lifecycle

    config = ModelConfig(challengers=(ChallengerSpec("fast", challenger),), metric_window=300)
    return OnlineModel(config, champion, Lifecycle(**lifecycle))


def test_a_challenger_that_learns_better_is_promoted_then_kept_after_its_probation():
    model = with_challenger(FROZEN, LEARNER, promote_after=200, promote_margin=0.05, rollback_after=200)
    decisions = flip(model, 1200)
    actions = [d.action for d in decisions if d.action != "publish" and d.action != "refuse"]
    assert actions == ["promote", "keep"]
    promote = next(d for d in decisions if d.action == "promote")
    assert promote.reason.startswith("fast beat the champion main") and promote.switched
    assert " log_loss " in promote.reason  # the duel's default metric: the gate's proper scoring rule
    keep = next(d for d in decisions if d.action == "keep")
    assert keep.reason.startswith("probation passed: log_loss on the last")
    assert model.champion == "fast" and model.served.candidate == "fast" and model.probation is None


def test_the_shadows_reference_is_the_frozen_served_version_or_on_probation_the_predecessor():
    model = with_challenger(LEARNER, LEARNER, rollback_after=100)
    flip(model, 50)
    x = {"amount": 150.0}
    assert set(model.shadow(x).scores) == {"main", "fast"}
    predecessor = model.served  # published and following its learner: the reference is the frozen copy
    assert model.following and model.shadow(x).reference == predecessor.model.predict_proba_one(x)
    model.promote_candidate("fast", 50.0, "a test", by_policy=True)
    shadow = model.shadow(x)
    assert shadow.reference == predecessor.model.predict_proba_one(x)
    assert shadow.scores["fast"] == model.candidates["fast"].model.predict_proba_one(x)


def test_a_promotion_that_does_worse_on_probation_is_rolled_back_to_the_champions_lineage():
    # by ROC AUC, the frozen replaced version ranks as well as main's live learner (by log loss, the default,
    # the live learner is better calibrated and a new version of it would serve instead)
    model = with_challenger(LEARNER, FROZEN, rollback_after=200, auto_promote=False, promote_metric="roc_auc")
    flip(model, 600)
    replaced = model.served.version
    model.promote_candidate("fast", 600.0, "a test promotion by policy", by_policy=True)
    decisions = flip(model, 400, start=600)
    rollback = next(d for d in decisions if d.action == "rollback")
    assert rollback.switched and "fast (promoted as v" in rollback.reason and "did worse than" in rollback.reason
    assert model.champion == "main" and model.rollbacks == 1
    assert rollback.version == replaced  # exactly the version it replaced (it did as well as main's live learner)
    assert model.served.candidate == "main"  # and main's learner goes on being published


def test_a_drift_challenger_learns_the_examples_since_the_change_and_its_decision_names_it():
    from appliance.config.lifecycle import Lifecycle

    model = OnlineModel(ModelConfig(), LEARNER, Lifecycle(warm_start=300, promote_after=100, warm_start_from="change"))
    flip(model, 500)
    decision = model.start_challenger("concept drift on a test", since_change=40)
    assert decision.action == "challenger" and decision.candidate == "retrain-1"
    fresh = model.candidates[decision.candidate]
    assert fresh.n_learned == 40 and fresh.origin == "concept drift on a test"
    expected = build_model(LEARNER, "classification")
    for x, y in list(model.examples)[-40:]:
        expected.learn_one(orjson.loads(x), y)
    assert fresh.model.predict_proba_one({"amount": 150.0}) == expected.predict_proba_one({"amount": 150.0})
    assert model.start_challenger("another alert", since_change=10) is None  # retrain-1 is not judged yet
    flip(model, 150, start=500)
    assert model.start_challenger("a later alert", since_change=10).candidate == "retrain-2"


def test_pausing_stops_publication_and_resuming_restarts_it():
    model = OnlineModel(ModelConfig(publish_every=10), LEARNER)
    flip(model, 100)
    model.set_publishing(paused=True)
    served = model.served.version
    assert [d for d in flip(model, 300, start=100) if d.action in ("publish", "refuse")] == []
    assert model.served.version == served and model.paused
    model.set_publishing(paused=False)
    assert any(d.action == "publish" for d in flip(model, 100, start=400))


def test_an_operators_switch_serves_the_version_makes_its_lineage_champion_and_ends_probation():
    model = with_challenger(LEARNER, LEARNER, rollback_after=1000, auto_promote=False)
    flip(model, 100)
    main_version = model.served
    model.promote_candidate("fast", 100.0, "a test", by_policy=True)
    assert model.probation is not None and model.champion == "fast"
    model.switch_to(main_version)
    assert model.served is main_version and model.champion == "main" and model.probation is None
    assert model.previous() != main_version.version  # the fast version served in between


def test_a_registered_version_put_up_as_a_challenger_learns_on_from_a_copy():
    model = OnlineModel(ModelConfig(), LEARNER)
    flip(model, 200)
    published = model.served
    decision = model.add_challenger(published)
    assert decision.candidate == published.name and decision.version == published.version
    challenger = model.candidates[published.name]
    assert challenger.learns and challenger.model is not published.model
    before = published.model.predict_proba_one({"amount": 150.0})
    flip(model, 100, start=200, flipped=True)
    assert published.model.predict_proba_one({"amount": 150.0}) == before  # the served copy stays frozen
    assert challenger.model.predict_proba_one({"amount": 150.0}) != before


def test_by_default_the_served_version_is_never_more_than_25_labels_behind_the_learner():
    # flights (docs/lifecycle.md, "Real data"): every 50 labels left the served copy 0.0090 ROC AUC behind
    # the learner at 40,000 labels, every 25 0.0059 (every 10 0.0021); so the default checks every 25 at most
    model = OnlineModel(ModelConfig(), SPEC)
    lags = []
    for n in range(1, 4001):
        feed(model, 1, seed=n)
        lags.append(model.candidates[model.champion].n_learned - model.served.n_learned)
    assert model.refusals == 0  # a learnable stream: every check publishes, so the lag is the cadence's
    assert max(lags[:YOUNG * 25]) < 25 and max(lags) == 24 and ModelConfig().publish_every == 25


def test_a_published_version_is_a_copy_that_does_not_learn_with_its_learner():
    """Versions are frozen (and the followed learner copied for other threads) by a pickle round
    trip (`versions.copy_model`): the copy predicts exactly as the learner did, then stays put."""
    model = OnlineModel(ModelConfig(first_publish=5), SPEC)
    feed(model, 300)
    probes = [{"amount": float(a), "city#1": 1.0} for a in range(0, 200, 7)]
    published = model.publish_now(300.0)
    assert published.model is not model.learner
    before = [model.predict(model.learner, x) for x in probes]
    assert [model.predict(published.model, x) for x in probes] == before
    feed(model, 50, seed=2, start=301.0)
    assert [model.predict(model.learner, x) for x in probes] != before  # the learner moved on...
    assert [model.predict(published.model, x) for x in probes] == before  # ...its version did not
