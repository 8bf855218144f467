"""No skew between serving and learning: the appliance's prequential metrics equal River's own
`progressive_val_score` on the same data with the same model spec, exactly."""

from __future__ import annotations

import pytest
from river import evaluate, metrics

from appliance.config.model_spec import parse_model
from appliance.runtime.app import Appliance, RunOptions
from appliance.runtime.settings import resolve_config

SPEC = "preprocessing.StandardScaler() | linear_model.LogisticRegression()"


@pytest.mark.parametrize("workers", [1, 2])
def test_prequential_metrics_equal_progressive_val_score(tmp_path, workers):
    config = resolve_config(None, "river:Phishing", db=str(tmp_path / "a.db"))
    config = config.with_overrides(model=config.model.__class__(task="classification", spec=SPEC))
    appliance = Appliance(config, RunOptions(serve=False, workers=workers))
    appliance.run()
    evaluation = appliance.engine.model.learner_eval

    from river import datasets

    for name, metric in [("roc_auc", metrics.ROCAUC()), ("log_loss", metrics.LogLoss()),
                         ("accuracy", metrics.Accuracy())]:
        expected = evaluate.progressive_val_score(datasets.Phishing(), parse_model(SPEC), metric)
        assert evaluation.metric(name).get() == expected.get(), name
    assert appliance.engine.counts["labels_immediate"] == 1250


def test_regression_parity_on_trump_approval(tmp_path):
    spec = "preprocessing.StandardScaler() | linear_model.LinearRegression(intercept_lr=0.1)"
    config = resolve_config(None, "river:TrumpApproval", db=str(tmp_path / "r.db"))
    config = config.with_overrides(model=config.model.__class__(task="regression", spec=spec))
    appliance = Appliance(config, RunOptions(serve=False))
    appliance.run()
    from river import datasets

    expected = evaluate.progressive_val_score(datasets.TrumpApproval(), parse_model(spec), metrics.MAE())
    assert appliance.engine.model.learner_eval.metric("mae").get() == expected.get()


def test_a_challenger_in_shadow_equals_its_own_progressive_val_score(tmp_path):
    """Shadow scoring is honest: a challenger's metrics are River's for that model alone."""
    from dataclasses import replace

    from appliance.config.lifecycle import ChallengerSpec

    tree = "tree.HoeffdingTreeClassifier(grace_period=50)"
    config = resolve_config(None, "river:Phishing", db=str(tmp_path / "c.db"))
    config = config.with_overrides(model=replace(config.model, task="classification", spec=SPEC,
                                                 challengers=(ChallengerSpec("tree", tree),)))
    appliance = Appliance(config, RunOptions(serve=False))
    appliance.run()
    from river import datasets

    expected = evaluate.progressive_val_score(datasets.Phishing(), parse_model(tree), metrics.ROCAUC())
    assert appliance.engine.model.candidates["tree"].evaluation.metric("roc_auc").get() == expected.get()
    champion = evaluate.progressive_val_score(datasets.Phishing(), parse_model(SPEC), metrics.ROCAUC())
    assert appliance.engine.model.learner_eval.metric("roc_auc").get() == champion.get() != expected.get()


def test_default_regression_pipeline_equals_the_same_pipeline_built_by_hand_in_river(tmp_path):
    from river import datasets, linear_model, optim, preprocessing

    from appliance.learning.scaling import ScaleNumeric

    config = resolve_config(None, "river:TrumpApproval", db=str(tmp_path / "d.db"))
    assert config.model.spec is None  # the default spec
    appliance = Appliance(config, RunOptions(serve=False))
    appliance.run()
    by_hand = ScaleNumeric(clip=3.0) | preprocessing.TargetStandardScaler(
        regressor=linear_model.LinearRegression(loss=optim.losses.Huber(epsilon=1.35),
                                                optimizer=optim.SGD(optim.schedulers.InverseScaling(0.01, power=0.25))))
    expected = evaluate.progressive_val_score(datasets.TrumpApproval(), by_hand, metrics.MAE())
    assert appliance.engine.model.learner_eval.metric("mae").get() == expected.get()
