"""The label join's pending predictions: packed in memory, checkpointed to the store as changes."""

from __future__ import annotations

from appliance.config.file import LabelPolicy
from appliance.engine.core import Engine
from appliance.engine.label_join import LabelJoin, Pending, Scored
from appliance.learning.shadow import Shadow
from appliance.storage.rows import VectorCodec, json_vector
from appliance.storage.store import load_checkpoint, load_entities, load_pending, open_db
from appliance.storage.writer import StoreWriter
from tests.conftest import config_with, flip_stream, items


def scored(event_id: str, ts: float) -> Scored:
    shadow = Shadow({"main": {False: 0.75, True: 0.25}, "fast": {False: 0.5, True: 0.5}}, {False: 0.6, True: 0.4},
                    {"fast": ["main", {False: 0.7, True: 0.3}]})
    return Scored(event_id, 7, ts, {"amount": 12.5, "n": 3, "city_7": 1.0}, shadow, {False: 0.5, True: 0.5}, 4)


def test_a_packed_prediction_unpacks_to_what_was_packed():
    original = scored("e1", 100.0)
    assert Pending.pack(original).unpack() == original
    packed = VectorCodec(["city_7", "amount", "n"]).encode(original.x)  # as the engine logs it
    assert Pending.pack(original, packed).unpack() == original


def test_a_packed_prediction_is_plain_messagepack():
    from appliance.storage.snapshot import unpack

    original = scored("e1", 100.0)
    assert unpack(Pending.pack(original).packed) == [json_vector(original.x), 7, *original.shadow.fields(),
                                                     original.y_served, 4]


def test_changes_carry_what_was_added_and_what_left_since_the_last_call():
    join = LabelJoin(LabelPolicy(horizon=100.0, default=0))
    for i, ts in enumerate([10.0, 20.0, 30.0]):
        join.add(Pending.pack(scored(f"e{i}", ts)))
    rows, removed = join.changes()
    assert [(row[0], row[1], row[2]) for row in rows] == [("e0", 1, 10.0), ("e1", 2, 20.0), ("e2", 3, 30.0)]
    assert removed == []
    assert join.take("e1") is not None
    assert join.take("e0") is not None  # as when its horizon passed (`Admission` decides which)
    join.add(Pending.pack(scored("e3", 40.0)))
    join.add(Pending.pack(scored("e4", 41.0)))
    join.take("e4")  # added and gone between two checkpoints: a delete, no row
    rows, removed = join.changes()
    assert [row[0] for row in rows] == ["e3"] and sorted(removed) == ["e0", "e1", "e4"]
    join.touch_all()  # repacked in place: every one is written again, in arrival order
    rows, removed = join.changes()
    assert [row[0] for row in rows] == ["e2", "e3"] and rows[0][1] < rows[1][1] and removed == []
    assert join.changes() == ([], [])


def test_the_join_as_data_leaves_pending_predictions_to_the_store():
    join = LabelJoin(LabelPolicy(horizon=100.0, default=0))
    join.add(Pending.pack(scored("e0", 10.0)))
    join.record_delay(3.5)
    copy = LabelJoin(LabelPolicy())
    copy.load_data(join.to_data())
    assert not copy.pending and copy.seq == 1 and copy.changes() == ([], []) and copy.delays == [3.5]
    assert (copy.horizon, copy.default) == (100.0, 0)


def test_restoring_from_a_store_fed_by_many_checkpoints_resumes_exactly(tmp_path):
    """Checkpoints every 150 items through the real store writer (with a challenger backfilled by
    policy in between, which repacks every pending prediction), then a restart from the store."""
    config = config_with({"challenger": [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]},
                         {"drift_features": ["amount"], "on_concept_drift": "challenger", "alert_cooldown": "1h",
                          "drift_warmup": 100})
    config = config.with_overrides(db=str(tmp_path / "a.db"))
    stream = items(config, flip_stream(2400, change=1200, shift_amount=True))
    straight = Engine(config)
    for item in stream:
        straight.process(item)

    first = Engine(config)
    writer = StoreWriter(config.db).start()
    stop_at = 1900
    for start in range(0, stop_at, 150):
        for item in stream[start:min(start + 150, stop_at)]:
            first.process(item)
        writer.put_rows(first.take_rows())
        writer.put_checkpoint("fp", first.checkpoint())
    writer.close()
    assert first.drift.alerts > 0 and len(first.model.candidates) > 2  # a challenger was started and backfilled

    db = open_db(config.db)
    saved, entities, pending = load_checkpoint(db), load_entities(db), load_pending(db)
    db.conn.close()
    assert [row[0] for row in pending] == list(first.join.pending)
    resumed = Engine(config)
    resumed.restore(saved["engine"], entities, pending)
    assert [p.unpack() for p in resumed.join.pending.values()] == [p.unpack() for p in first.join.pending.values()]
    for item in stream[stop_at:]:
        resumed.process(item)
    assert resumed.counts == straight.counts
    assert list(resumed.join.pending) == list(straight.join.pending)
    for name, candidate in straight.model.candidates.items():
        assert resumed.model.candidates[name].evaluation.values() == candidate.evaluation.values(), name
