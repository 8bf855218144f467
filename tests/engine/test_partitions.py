"""The engine's entity state in worker processes (`engine.partitions`): the same rows, states and
checkpoints as the engine that keeps them itself, with any number of workers."""

from __future__ import annotations

import os
import signal

import pytest

from appliance.engine.core import Engine
from appliance.engine.items import EventItem, Served
from appliance.engine.partitions import EntityPartitions
from appliance.features.entity_codec import encode_state
from appliance.features.partitions import PartitionFailed
from appliance.ingest.events import Event
from appliance.storage.snapshot import unpack_checkpoint
from tests.conftest import config_with, items, mixed_stream, settle_with
from tests.runtime.test_crash import canonical, loaded

# a challenger with no random state of its own (a tree's is seeded per instance), so two engines agree whole
CONFIG = config_with({"challenger": [{"name": "fast", "spec": "preprocessing.StandardScaler() | "
                                                              "linear_model.LogisticRegression(optimizer=optim.SGD(0.1))"}]},
                     {"drift_features": ["amount"], "on_concept_drift": "challenger", "alert_cooldown": "1h",
                      "drift_warmup": 100})


def stream_items() -> list:
    """The mixed stream, with events scored only and events scored over the socket before they came."""
    out = []
    for i, item in enumerate(items(CONFIG, mixed_stream())):
        out.append(item)
        if isinstance(item, EventItem) and i % 41 == 0:  # scored only ("ingest": false): read, never folded
            out.append(EventItem("test", None, Event(f"only{i}", item.event.ts, item.event.values, None,
                                                    item.event.raw), None, False))
        if isinstance(item, EventItem) and i % 29 == 0:  # entities seen once: idle, then evicted
            values = {**item.event.values, "user": f"once{i}", "card": f"once{i}"}
            out.append(EventItem("test", None, Event(f"once{i}", item.event.ts, values, None, item.event.raw)))
        if isinstance(item, EventItem) and i % 37 == 0:  # served over the socket, then ingested: folded only
            event = item.event
            out.append(EventItem("inbox", None, Event(f"served{i}", event.ts, event.values, None, event.raw),
                                 Served({"amount": 1.0}, 0.25, 1), True))
    return out


def core(blob: bytes):
    """The engine's checkpointed state, comparable (models by their pickled state, no wall-clock times)."""
    return canonical(loaded(unpack_checkpoint(blob)))


def states(engine: Engine) -> dict:
    return {(key, entity): encode_state(state) for key, entity, state in engine.space.iter_states(engine.entities)}


@pytest.mark.parametrize(("workers", "batch"), [(1, 1), (2, 64), (3, 500), (4, 37)])
def test_entity_workers_give_the_rows_states_and_checkpoints_of_the_engine_alone(workers, batch):
    stream = stream_items()
    straight = Engine(CONFIG)
    partitioned = Engine(CONFIG)
    partitioned.partitioned = True
    straight_rows: dict[str, list] = {}
    got_rows: dict[str, list] = {}
    checkpoints = []
    with EntityPartitions(CONFIG, partitioned.space, workers) as pool:
        pool.load([], partitioned.sweep_ticks)
        for first in range(0, len(stream), batch):
            chunk = stream[first:first + batch]
            for item in chunk:
                straight.process(item)
            settle_with(pool, partitioned, chunk)
            for engine, rows in ((straight, straight_rows), (partitioned, got_rows)):
                for table, new in engine.take_rows().items():
                    rows.setdefault(table, []).extend(new)
            if (first // batch) % max(1, 64 // batch) == 0:  # about every 64 items
                checkpoints.append((straight.checkpoint(), partitioned.checkpoint()))
            assert states(partitioned) == states(straight)  # after every batch, entity by entity
    assert straight.counts == partitioned.counts and straight.counts["late_events"] > 0
    for table in ("predictions", "labels", "metrics", "dead_letters", "late_labels", "events"):
        assert got_rows[table] == straight_rows[table], table
    evicted = 0
    for expected, got in checkpoints:
        assert sorted(got["entities"]) == sorted(expected["entities"])
        assert sorted(got["evicted"]) == sorted(expected["evicted"])
        assert got["pending"] == expected["pending"]
        assert core(got["engine"]) == core(expected["engine"])
        evicted += len(expected["evicted"])
    assert evicted > 0  # idle entities were evicted along the way, at the same watermarks
    assert partitioned.sweep_ticks == straight.sweep_ticks


def test_a_restored_engine_hands_its_workers_their_entities():
    stream = stream_items()
    half = len(stream) // 2
    straight = Engine(CONFIG)
    for item in stream:
        straight.process(item)
    first = Engine(CONFIG)
    for item in stream[:half]:
        first.process(item)
    saved = first.checkpoint()
    resumed = Engine(CONFIG)
    pending = [(event_id, p.ts, p.packed) for event_id, p in first.join.pending.items()]  # the store's rows
    resumed.restore(saved["engine"], saved["entities"], pending)
    resumed.partitioned = True
    with EntityPartitions(CONFIG, resumed.space, 2) as pool:
        pool.load(list(saved["entities"]), resumed.sweep_ticks)
        rest = stream[half:]
        for start in range(0, len(rest), 200):
            settle_with(pool, resumed, rest[start:start + 200])
    assert resumed.counts == straight.counts
    assert states(resumed) == states(straight)


def test_a_worker_that_dies_fails_the_batch_naming_it():
    engine = Engine(CONFIG)
    engine.partitioned = True
    chunk = stream_items()[:100]
    with EntityPartitions(CONFIG, engine.space, 2) as pool:
        pool.load([], engine.sweep_ticks)
        verdicts = [engine.admit(item) for item in chunk]
        dispatched = pool.dispatch(chunk, verdicts)
        pool.collect(dispatched)
        os.kill(pool.processes[1].pid, signal.SIGKILL)
        pool.processes[1].join(10)
        with pytest.raises(PartitionFailed) as failed:
            pool.collect(pool.dispatch(chunk, verdicts))
    assert "entity partition 2 of 2" in str(failed.value) and "restarts from its checkpoint" in str(failed.value)
