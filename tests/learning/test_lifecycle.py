"""Champion/challenger, drift alerts and the automatic policy, on real engine runs over streams with
a known change point."""

from __future__ import annotations

import orjson
import pytest

from appliance.config.model_spec import DEFAULT_MODELS, build_model
from appliance.engine.control import Challenge, Promote, Retire
from appliance.engine.core import Engine
from appliance.engine.items import ControlItem
from appliance.errors import ConfigError
from tests.conftest import (
    FROZEN,
    LEARNER,
    audit_rows,
    config_with,
    flip_stream,
    items,
    process_until,
    run,
)


def test_challengers_are_scored_in_shadow_on_the_same_labels():
    config = config_with({"challenger": [{"name": "twin", "spec": DEFAULT_MODELS["classification"]},
                                         {"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]})
    engine = Engine(config)
    run(engine, items(config, flip_stream(600, change=10_000)))
    model = engine.model
    main, twin, tree = (model.candidates[name] for name in ("main", "twin", "tree"))
    assert main.evaluation.count == twin.evaluation.count == 600
    assert 590 < tree.evaluation.count < 600  # an untrained tree predicts {}: not scored, as in River
    # the same spec, learning on the same logged vectors, gives the same metrics as the champion's learner
    assert twin.evaluation.values() == main.evaluation.values()
    assert tree.evaluation.values() != main.evaluation.values()
    board = engine.stats()["model"]["leaderboard"]
    assert [row["name"] for row in board][0] == "main" and board[0]["role"] == "champion"
    assert {row["name"] for row in board} == {"main", "twin", "tree"}
    # only the champion answers: every served prediction came from a version of main
    assert all(model.catalog[v]["candidate"] == "main" for v in model.versions.history)


def test_a_challenger_that_wins_by_the_margin_is_promoted_by_policy():
    config = config_with({"spec": FROZEN, "challenger": [{"name": "good", "spec": LEARNER}]},
                         {"promote_after": 100, "promote_margin": 0.05, "promote_confirm": 50})
    engine = Engine(config)
    rows = run(engine, items(config, flip_stream(400, change=10_000)))
    promotions = audit_rows(rows, "promote")
    assert len(promotions) == 1 and promotions[0]["actor"] == "policy"
    assert "good beat the champion main" in promotions[0]["reason"]
    model = engine.model
    assert model.champion == "good" and model.served.candidate == "good"
    # the promoted version and every one published after it are copies of the challenger's learner
    lineage = {row["version"]: row["candidate"] for row in rows["models"]}
    assert lineage[promotions[0]["version"]] == "good"
    assert all(lineage[v] == "good" for v in lineage if v >= promotions[0]["version"])
    assert all(lineage[v] == "main" for v in lineage if v < promotions[0]["version"])


def test_a_challenger_no_better_than_the_champion_is_not_promoted():
    config = config_with({"spec": LEARNER, "challenger": [{"name": "twin", "spec": LEARNER}]},
                         {"promote_after": 100, "promote_margin": 0.0})
    engine = Engine(config)
    rows = run(engine, items(config, flip_stream(400, change=10_000)))
    assert not audit_rows(rows, "promote") and engine.model.champion == "main"


def test_manual_promotion_policy_leaves_the_winner_waiting():
    config = config_with({"spec": FROZEN, "challenger": [{"name": "good", "spec": LEARNER}]},
                         {"promote_after": 100, "promote_margin": 0.05, "auto_promote": False})
    engine = Engine(config)
    run(engine, items(config, flip_stream(400, change=10_000)))
    assert engine.model.champion == "main"
    engine.process(ControlItem("inbox", None, Promote(challenger="good", actor="ops")))
    rows = engine.take_rows()
    assert engine.model.champion == "good" and rows["audit"][-1]["actor"] == "ops"
    assert rows["models"][-1]["candidate"] == "good"


def test_a_policy_promotion_that_degrades_is_rolled_back_exactly():
    config = config_with({"spec": FROZEN, "challenger": [{"name": "good", "spec": LEARNER}]},
                         {"promote_after": 100, "promote_margin": 0.05, "promote_confirm": 0, "rollback_after": 200,
                          "rollback_margin": 0.01})
    stream = flip_stream(600, change=250)
    engine = Engine(config)
    rows = process_until(engine, items(config, stream), "rollback")  # up to the first rollback
    promotion = audit_rows(rows, "promote")[0]
    rollback = audit_rows(rows, "rollback")[0]
    assert rollback["actor"] == "policy" and rollback["id"] > promotion["id"]
    assert f"good (promoted as v{promotion['version']}, serving as v" in rollback["reason"]
    assert "did worse than the version it replaced" in rollback["reason"]
    model = engine.model
    assert model.champion == "main" and model.served.version == rollback["version"] < promotion["version"]
    # the version that serves again is the very one the promotion replaced: same predictions
    replaced = max(row["version"] for row in rows["models"] if row["version"] < promotion["version"])
    assert rollback["version"] == replaced
    probe = {"amount": 150.0, "card_n_10m": 1.0}
    import pickle

    blob = next(row["model"] for row in rows["models"] if row["version"] == replaced)
    assert model.served.model.predict_proba_one(probe) == pickle.loads(blob).predict_proba_one(probe)


def test_concept_drift_is_alerted_within_a_bounded_number_of_labels_after_the_change():
    change, n = 1500, 3000
    stream = flip_stream(n, change=change)
    config = config_with({"spec": LEARNER}, {"alert_cooldown": "1h"})
    engine = Engine(config)
    rows = run(engine, items(config, stream))
    concept = [row for row in rows["alerts"] if row["kind"] == "concept"]
    change_ts = stream[change]["ts"]
    assert concept, "the flip of the label's relation to amount was not detected"
    assert all(row["event_ts"] >= change_ts for row in concept), "an alert before the change"
    first = concept[0]
    delay = sum(1 for event in stream if change_ts <= event["ts"] <= first["event_ts"])
    assert delay <= 300, f"detected {delay} labels after the change"
    evidence = orjson.loads(first["evidence"])
    assert evidence["error_after"] > evidence["error_before"] and first["action"] == "alert only"
    assert first["subject"].startswith("served model (v")


def test_data_drift_on_a_monitored_feature_is_alerted_after_the_shift():
    change = 1000
    stream = flip_stream(2000, change=change, shift_amount=True)
    config = config_with({"spec": LEARNER}, {"drift_features": ["amount", "card_n_10m"]})
    engine = Engine(config)
    rows = run(engine, items(config, stream))
    data = [row for row in rows["alerts"] if row["kind"] == "data" and row["subject"] == "feature amount"]
    assert len(data) == 1 and data[0]["event_ts"] >= stream[change]["ts"]
    assert data[0]["event_ts"] <= stream[change + 100]["ts"]
    evidence = orjson.loads(data[0]["evidence"])
    assert evidence["mean_after"] > evidence["mean_before"]


def test_unknown_drift_feature_is_refused():
    with pytest.raises(ConfigError, match="drift_features: nope"):
        Engine(config_with({}, {"drift_features": ["nope"]}))


def test_drift_starts_a_challenger_warm_started_on_the_examples_since_the_estimated_change():
    change = 1500
    stream = flip_stream(3000, change=change)
    config = config_with({"spec": LEARNER}, {"on_concept_drift": "challenger", "warm_start": 300,
                                              "warm_start_from": "change", "alert_cooldown": "1h",
                                              "promote_after": 300})
    engine = Engine(config)
    parsed = items(config, stream)
    started_at = None
    for index, item in enumerate(parsed):
        engine.process(item)
        if "retrain-1" in engine.model.candidates and started_at is None:
            started_at = index
            since = engine.drift.recent[-1]["evidence"]["since_change"]
            warm = min(300, since)
            # at its start, the challenger is exactly a fresh model trained on the last `warm` examples
            expected = build_model(LEARNER, "classification")
            for x, y in list(engine.model.examples)[-warm:]:
                expected.learn_one(orjson.loads(x), y)  # kept as the JSON they were logged as
            probe = orjson.loads(engine.model.examples[-1][0])
            challenger = engine.model.candidates["retrain-1"]
            assert 0 < challenger.n_learned == warm < 300
            assert challenger.model.predict_proba_one(probe) == expected.predict_proba_one(probe)
    rows = engine.take_rows()
    assert started_at is not None and started_at >= change
    started = [row for row in rows["audit"] if row["action"] == "challenger"]
    assert started[0]["actor"] == "policy" and "(since the estimated change)" in started[0]["reason"]
    assert any(row["action"] == "retrain-1 started" for row in rows["alerts"])


def test_operator_puts_a_registered_version_up_as_a_challenger_and_retires_it(small_config):
    engine = Engine(small_config)
    stream = items(small_config, flip_stream(300, change=10_000))
    run(engine, stream[:200])
    version = engine.model.served.version
    engine.process(ControlItem("inbox", None, Challenge(version)))
    assert f"v{version}" in engine.model.candidates
    run(engine, stream[200:])
    challenger = engine.model.candidates[f"v{version}"]
    assert challenger.evaluation.count > 0 and challenger.learns
    engine.process(ControlItem("inbox", None, Retire(f"v{version}")))
    engine.process(ControlItem("inbox", None, Retire("main")))
    rows = engine.take_rows()
    assert f"v{version}" not in engine.model.candidates and "main" in engine.model.candidates
    assert [row["action"] for row in rows["audit"]][-2:] == ["retire", "refuse"]


def test_checkpoint_restore_keeps_challengers_and_detectors(tmp_path):
    config = config_with({"challenger": [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]},
                         {"drift_features": ["amount"], "on_concept_drift": "challenger", "alert_cooldown": "1h",
                          "drift_warmup": 100})
    config = config.with_overrides(db=str(tmp_path / "a.db"))
    stream = items(config, flip_stream(2400, change=1200))
    straight = Engine(config)
    run(straight, stream)
    first = Engine(config)
    run(first, stream[:1300])
    blob = first.checkpoint()
    resumed = Engine(config)
    entities = [(key, entity, state) for key, entity, state in blob["entities"]]
    resumed.restore(blob["engine"], entities, [(r[0], r[2], r[3]) for r in blob["pending"][0]])
    run(resumed, stream[1300:])
    assert list(resumed.model.candidates) == list(straight.model.candidates)
    for name, candidate in straight.model.candidates.items():
        assert resumed.model.candidates[name].evaluation.values() == candidate.evaluation.values(), name
    def without_wall_time(summary):
        return {**summary, "recent": [{k: v for k, v in a.items() if k != "wall_ts"} for a in summary["recent"]]}

    assert straight.drift.alerts > 0
    assert without_wall_time(resumed.drift.summary()) == without_wall_time(straight.drift.summary())
    assert resumed.model.served.version == straight.model.served.version


def test_publication_is_also_checked_on_an_event_time_interval():
    """`publish_interval`: a check once that much event time has passed, even before N labels."""
    stream = flip_stream(400, change=10_000)  # 5-60 s between events
    by_count = config_with({"spec": LEARNER, "publish_every": 10_000})
    by_time = config_with({"spec": LEARNER, "publish_every": 10_000, "publish_interval": "30m"})
    counted, timed = Engine(by_count), Engine(by_time)
    # past its young phase (checks every n/100 labels while it has n), a learner checks every publish_every
    counted.model.n_learned = timed.model.n_learned = 10**9
    run(counted, items(by_count, stream))
    rows = run(timed, items(by_time, stream))
    checks = [row for row in rows["audit"] if row["action"] in ("publish", "refuse")]
    assert counted.model.publications + counted.model.refusals == 1  # only the first version's
    span = (stream[-1]["ts"] - stream[0]["ts"]) / 1800
    assert span - 3 <= len(checks) <= span + 1
    times = [row["event_ts"] for row in checks]
    assert all(b - a >= 1800 for a, b in zip(times[1:], times[2:]))
