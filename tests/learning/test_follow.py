"""A published version follows its learner between checks (`[model] follow`), and is frozen when
the learner does worse than it, on a pause, a promotion or a rollback."""

from __future__ import annotations

import random

import orjson

from appliance.config.file import ModelConfig, config_from_dict
from appliance.learning.online_model import OnlineModel
from appliance.learning.shadow import Shadow
from appliance.runtime.app import Appliance, RunOptions
from appliance.storage.rows import decode_vector, read_names
from appliance.storage.snapshot import pack, unpack
from appliance.storage.store import open_db
from tests.conftest import SMALL_CONFIG, logged_features, make_stream

SPEC = "appliance.ScaleNumeric() | linear_model.LogisticRegression()"


def example(rng: random.Random) -> tuple[dict, bool]:
    amount = rng.uniform(0, 200)
    return {"amount": amount, f"city#{rng.randrange(3)}": 1.0}, amount > 100


def feed(model: OnlineModel, n: int, seed: int = 1) -> list:
    """Label n events, each scored first as the engine scores a stream's event."""
    rng, decisions = random.Random(seed), []
    for i in range(n):
        x, y = example(rng)
        shadow = model.shadow(x)
        served = shadow.scores[model.champion] if model.following else model.predict(model.served.model, x)
        decisions += model.learn(x, y, shadow, served, float(i))
    return decisions


def test_between_checks_the_stream_is_scored_by_the_learner_and_the_version_stays():
    model = OnlineModel(ModelConfig(publish_every=50), SPEC)
    feed(model, 6000)  # past the young checks (n/100): one every 50 labels now
    assert model.following
    version, frozen = model.served.version, model.served.model
    feed(model, 10, seed=2)  # fewer labels than a check
    assert model.served.version == version and model.served.model is frozen
    assert model.serving_model is model.learner
    x = {"amount": 120.0, "city#1": 1.0}
    assert model.predict(model.serving_model, x) != model.predict(frozen, x)  # it learned since the freeze
    shadow = model.shadow(x)
    assert shadow.reference == model.predict(frozen, x)  # each event is scored by the frozen copy too


def test_the_view_for_other_threads_is_a_copy_refreshed_only_when_the_learner_learned():
    model = OnlineModel(ModelConfig(publish_every=50), SPEC)
    feed(model, 6000)
    feed(model, 3, seed=5)
    assert model.view_stale and model.refresh_view(force=True) is True
    x = {"amount": 99.0, "city#2": 1.0}
    assert model.view.model is not model.learner and model.view.version == model.served.version
    assert model.predict(model.view.model, x) == model.predict(model.learner, x)
    assert not model.view_stale and model.refresh_view(force=True) is False  # nothing learned since
    feed(model, 1, seed=6)
    assert model.view_stale
    assert model.refresh_view(force=True) is True and not model.view_stale


def test_a_learner_that_does_worse_than_its_frozen_version_stops_following():
    model = OnlineModel(ModelConfig(publish_every=20, publish_margin=0.01), SPEC)
    feed(model, 6000)
    assert model.following
    version = model.served.version
    x = {"amount": 150.0}
    decisions = []
    for i in range(60):  # the learner confidently wrong, the frozen version right, on the same events
        shadow = Shadow({model.champion: {True: 0.05, False: 0.95}}, {True: 0.9, False: 0.1})
        decisions += model.learn(x, True, shadow, shadow.scores[model.champion], 1000.0 + i)
    freezes = [d for d in decisions if d.action == "freeze"]
    assert len(freezes) == 1 and decisions[0] is freezes[0]  # at the label the learner slipped
    freeze = freezes[0]
    assert freeze.version == version and "serves frozen" in freeze.reason
    assert not freeze.switched  # the same version serves: its errors stay one stream for drift
    assert all(d.action == "refuse" for d in decisions[1:])  # then the checks refuse, as ever
    assert not any(d.action == "publish" for d in decisions)
    assert not model.following and model.served.version == version
    assert model.serving_model is model.served.model and model.view is model.served


def test_follow_off_serves_the_frozen_copy_between_checks():
    model = OnlineModel(ModelConfig(publish_every=50, follow=False), SPEC)
    feed(model, 6000)
    assert not model.following and model.serving_model is model.served.model
    assert model.shadow({"amount": 1.0}).reference is None  # no reference to judge against


def test_a_pause_freezes_the_served_version_and_a_publication_follows_again():
    model = OnlineModel(ModelConfig(publish_every=50), SPEC)
    feed(model, 6000)
    model.set_publishing(paused=True)
    assert not model.following and model.view is model.served
    feed(model, 100, seed=3)
    assert not model.following
    model.set_publishing(paused=False)
    feed(model, 60, seed=4)
    assert model.following


def test_following_and_its_paired_figures_survive_a_checkpoint():
    model = OnlineModel(ModelConfig(publish_every=50), SPEC)
    feed(model, 6030)
    data = unpack(pack(model.to_data()))  # as the checkpoint stores it
    restored = OnlineModel(ModelConfig(publish_every=50), SPEC)
    restored.load_data(data)
    assert restored.following and restored.paired.frozen.count == model.paired.frozen.count > 0
    assert restored.paired.learner.values() == model.paired.learner.values()
    x = {"amount": 42.0, "city#0": 1.0}
    assert restored.predict(restored.view.model, x) == model.predict(model.learner, x)


def test_a_replay_logs_the_learners_own_score_as_served_between_checks(tmp_path):
    """The real flow: after the first version, every stream event's served score is the learner's
    (the `learner_score` column), while the version number moves only at checks."""
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(orjson.dumps(raw) + b"\n" for raw in make_stream(400)))
    data = dict(SMALL_CONFIG, source={"spec": str(source)}, serve={"db": str(tmp_path / "a.db")})
    appliance = Appliance(config_from_dict(data), RunOptions(serve=False))
    appliance.run()
    db = open_db(tmp_path / "a.db")
    rows = db.execute("SELECT p.version, p.score, p.learner_score FROM predictions p JOIN events e USING (seq) "
                      "ORDER BY e.ts, seq").fetchall()
    followed = [(score, learner) for version, score, learner in rows if version > 1]
    assert len(followed) > 100 and all(score == learner for score, learner in followed)
    assert len({version for version, _, _ in rows}) < len(followed) / 2  # versions at checks, not per event
    model = appliance.engine.model
    assert model.following and model.view.version == model.served.version
    names = read_names(db.conn)
    newest = db.execute("SELECT event_id FROM events ORDER BY ts DESC, seq DESC LIMIT 1").fetchone()[0]
    x = decode_vector(logged_features(db.conn)[newest], names)
    assert model.predict(model.view.model, x) == model.predict(model.learner, x)  # the view after the last batch
