"""The engine: test-then-train on logged features, delayed labels, publication, checkpoints."""

from __future__ import annotations

from dataclasses import replace

from appliance.engine.core import Engine
from appliance.storage.rows import LABEL_STATUSES
from tests.conftest import items, make_stream, run


class LearnRecorder:
    """Wraps `learn_one` and records what it was given (module level, so the model still pickles)."""

    def __init__(self, learn_one):
        self.learn_one = learn_one
        self.calls = []

    def __call__(self, x, y):
        self.calls.append((dict(x), y))
        return self.learn_one(x, y)


def test_learning_uses_the_feature_vector_logged_at_prediction_time(small_config):
    engine = Engine(small_config)
    recorder = LearnRecorder(engine.model.learner.learn_one)
    engine.model.learner.learn_one = recorder
    learned = recorder.calls
    rows = run(engine, items(small_config, make_stream(200)))
    logged = {row["event_id"]: row["features"] for row in rows["predictions"]}
    joined = [row for row in rows["labels"] if LABEL_STATUSES[row["status"]] == "joined"]
    assert joined, "the stream has labels that arrive after their events"
    from appliance.storage.rows import decode_vector

    by_event = {row["event_id"]: decode_vector(logged[row["event_id"]]) for row in rows["labels"]}
    label_order = [row["event_id"] for row in rows["labels"]]
    assert len(learned) == len(label_order)
    for (x, _), event_id in zip(learned, label_order):
        assert x == by_event[event_id]


def test_labels_before_their_event_are_held_then_joined(small_config):
    engine = Engine(small_config)
    stream = [
        {"type": "label", "event_id": "late-event", "label": 1, "ts": 1000.0},
        {"type": "payment", "event_id": "late-event", "ts": 1001.0, "user": "u", "card": "c", "amount": 5.0, "city": "x"},
    ]
    rows = run(engine, items(small_config, stream))
    assert engine.counts["labels_early"] == 1
    assert [LABEL_STATUSES[r["status"]] for r in rows["labels"]] == ["early"]
    assert engine.model.n_learned == 1


def test_no_label_by_the_horizon_learns_the_default(small_config):
    engine = Engine(small_config)
    stream = [
        {"type": "payment", "event_id": "a", "ts": 0.0, "user": "u", "card": "c", "amount": 5.0, "city": "x"},
        {"type": "payment", "event_id": "b", "ts": 3601.0, "user": "u", "card": "c", "amount": 5.0, "city": "x"},
    ]
    rows = run(engine, items(small_config, stream))
    assert [(r["event_id"], LABEL_STATUSES[r["status"]], r["label"]) for r in rows["labels"]] == [("a", "defaulted", 0)]
    assert [r["seq"] for r in rows["labels"]] == [e["seq"] for e in rows["events"] if e["event_id"] == "a"]
    assert engine.counts["predictions_expired"] == 1 and len(engine.join.pending) == 1
    assert engine.stats()["label_join_rate"] == 0.0
    more = [{"type": "label", "event_id": "b", "ts": 3700.0, "label": 1},
            {"type": "payment", "event_id": "c", "ts": 3800.0, "user": "u", "card": "c", "amount": 5.0, "city": "x"},
            {"type": "label", "event_id": "c", "ts": 3900.0, "label": 0}]
    run(engine, items(small_config, more))
    assert engine.stats()["label_join_rate"] == round(2 / 3, 4)  # b and c joined, a expired


def test_drop_policy_learns_nothing_on_expiry(small_config):
    config = replace(small_config, labels=replace(small_config.labels, default=None))
    engine = Engine(config)
    stream = [
        {"type": "payment", "event_id": "a", "ts": 0.0, "user": "u", "card": "c", "amount": 5.0, "city": "x"},
        {"type": "payment", "event_id": "b", "ts": 3601.0, "user": "u", "card": "c", "amount": 5.0, "city": "x"},
        {"type": "label", "event_id": "a", "label": 1, "ts": 3700.0},
    ]
    rows = run(engine, items(config, stream))
    assert engine.model.n_learned == 0
    assert rows["labels"] == []  # nothing learned: a's label is late, kept apart by its event id
    assert [(r["event_id"], r["label"]) for r in rows["late_labels"]] == [("a", 1)]


def test_late_events_become_dead_letters_with_a_reason(small_config):
    engine = Engine(small_config)
    stream = [
        {"type": "payment", "event_id": "a", "ts": 10_000.0, "user": "u", "card": "c", "amount": 5.0, "city": "x"},
        {"type": "payment", "event_id": "b", "ts": 10_000.0 - 601, "user": "u", "card": "c", "amount": 5.0, "city": "x"},
        {"type": "payment", "event_id": "c", "ts": 10_000.0 - 599, "user": "u", "card": "c", "amount": 5.0, "city": "x"},
    ]
    rows = run(engine, items(small_config, stream))
    assert [r["offset"] for r in rows["dead_letters"]] == [2]
    assert rows["dead_letters"][0]["reason"].startswith("late: 601s behind")
    assert engine.counts["events"] == 2


def test_duplicate_event_ids_are_dead_lettered(small_config):
    engine = Engine(small_config)
    event = {"type": "payment", "event_id": "a", "ts": 0.0, "user": "u", "card": "c", "amount": 5.0, "city": "x"}
    rows = run(engine, items(small_config, [event, dict(event)]))
    assert engine.counts["duplicates"] == 1 and "duplicate" in rows["dead_letters"][0]["reason"]


def test_served_model_changes_only_at_publication(small_config):
    engine = Engine(small_config)
    published = []
    engine.on_publish = published.append
    first = engine.model.served
    run(engine, items(small_config, make_stream(600)))
    assert engine.model.n_learned > 20
    # A check every n/100 labels while the learner has n (every label at first), at most every 20.
    checks, since = 0, 0
    for n in range(1, engine.model.n_learned + 1):
        since += 1
        if since >= max(1, min(20, n // 100)):
            checks, since = checks + 1, 0
    assert engine.model.publications + engine.model.refusals == checks
    assert published and engine.model.served is published[-1]
    assert first.version == 1 and engine.model.served.version == 1 + len(published)
    assert engine.model.served.model is not engine.model.learner


def test_publication_is_refused_when_the_learner_is_worse(small_config):
    engine = Engine(small_config)
    model = engine.model
    model.publish_now(0.0)  # v2 serves: the gate judges against a published version, not the untrained v1
    for y, good, bad in [(True, 0.9, 0.1), (False, 0.1, 0.9)] * 10:
        model.learner_eval.update(y, {True: bad, False: 1 - bad})
        model.served_eval.update(y, {True: good, False: 1 - good})
    decision = model.try_publish(0.0)
    assert decision.action == "refuse" and decision.new_version is None
    assert model.refusals == 1 and model.served.version == 2


def test_checkpoint_restore_resumes_identically(small_config):
    stream = items(small_config, make_stream(500))
    straight = Engine(small_config)
    run(straight, stream)

    first = Engine(small_config)
    run(first, stream[:230])
    saved = first.checkpoint()
    entity_rows = [row for row in saved["entities"]]
    resumed = Engine(small_config)
    resumed.restore(saved["engine"], entity_rows, [(r[0], r[2], r[3]) for r in saved["pending"][0]])
    assert resumed.offsets == {"test": 230}
    run(resumed, stream[230:])

    assert resumed.counts == straight.counts
    assert resumed.model.learner_eval.values() == straight.model.learner_eval.values()
    probe = {"amount": 12.0, "card_n_10m": 2.0}
    assert resumed.model.learner.predict_proba_one(probe) == straight.model.learner.predict_proba_one(probe)
    for key in straight.entities:
        assert {k: (v[0].tolist(), v[1]) for k, v in straight.entities[key].items()} == \
               {k: (v[0].tolist(), v[1]) for k, v in resumed.entities[key].items()}


def test_checkpoint_only_carries_entities_changed_since_the_last_one(small_config):
    engine = Engine(small_config)
    stream = items(small_config, make_stream(100))
    run(engine, stream[:50])
    assert engine.checkpoint()["entities"]
    assert engine.checkpoint()["entities"] == []


def test_every_publication_and_refusal_is_audited_with_its_reason(small_config):
    engine = Engine(small_config)
    rows = run(engine, items(small_config, make_stream(900)))
    audit = rows["audit"]
    assert [row["id"] for row in audit] == list(range(1, len(audit) + 1))
    assert audit[0]["action"] == "serve" and audit[0]["version"] == 1
    published = [row for row in audit if row["action"] == "publish"]
    refused = [row for row in audit if row["action"] == "refuse"]
    assert len(published) == engine.model.publications > 0
    assert len(refused) == engine.model.refusals
    assert [row["version"] for row in published] == list(range(2, engine.model.served.version + 1))
    # The first publication replaces the untrained v1 ungated; every later one is judged by log loss.
    assert published[0]["reason"].startswith("first version: the learner has 1 labels")
    assert all(row["actor"] == "policy" and row["reason"].startswith("recent log_loss: learner ")
               for row in published[1:] + refused)


def test_roc_auc_is_undefined_until_both_classes_are_seen_and_gates_nothing():
    from appliance.learning.metrics import Evaluation

    evaluation = Evaluation("classification", window=3)
    for _ in range(3):
        evaluation.update(True, {True: 0.9, False: 0.1})
    assert evaluation.values()["roc_auc"] is None and evaluation.window_primary() is None
    evaluation.update(False, {True: 0.2, False: 0.8})
    assert evaluation.values()["roc_auc"] == 1.0 and evaluation.window_primary() == 1.0
    for _ in range(3):
        evaluation.update(True, {True: 0.9, False: 0.1})
    assert evaluation.values()["roc_auc"] == 1.0  # overall, both classes were seen
    assert evaluation.values()["roc_auc_window"] is None  # the window of 3 holds only positives


def test_a_scored_only_socket_prediction_logs_the_learner_score_it_was_served(small_config):
    """A `predict` scored by a server (a serving child, from the view of the learner its version
    follows) and logged with `"ingest": false`: while the version follows its learner, the learner's
    score is the one served, as for the stream's events; served by a frozen version (not following,
    or an older version than the engine's), the engine's learner scores it for the row."""
    from appliance.engine.items import EventItem, Served
    from appliance.ingest.events import parse_event
    from appliance.learning.metrics import positive_score

    engine = Engine(small_config)
    run(engine, items(small_config, make_stream(400)))
    model = engine.model
    assert model.following and model.served.version > 1
    model.refresh_view(force=True)
    raw = {"type": "payment", "event_id": "probe", "ts": engine.watermark, "user": "u1", "card": "c1",
           "amount": 80.0, "city": "paris"}

    def logged(event_id, score, version):
        event = parse_event({**raw, "event_id": event_id}, small_config.event, "classification")
        x = engine.space.compute(event.values, event.ts, engine.entities)
        row = run(engine, [EventItem("inbox", None, event, Served(x, score, version), ingest=False)])["predictions"][0]
        return row, positive_score(model.predict(model.learner, x))

    row, learner = logged("s1", 0.123, model.served.version)  # any score: the server's word is logged
    assert row["score"] == row["learner_score"] == 0.123 and learner != 0.123
    row, learner = logged("s2", 0.123, model.served.version - 1)  # an older version: not the learner's view
    assert row["score"] == 0.123 and row["learner_score"] == learner
    model.stop_following()
    row, learner = logged("s3", 0.123, model.served.version)  # the frozen version served: the learner scores
    assert row["score"] == 0.123 and row["learner_score"] == learner
