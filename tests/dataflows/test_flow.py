"""The dataflow under Bytewax's own harness, with 1 and 2 workers."""

from __future__ import annotations

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from appliance.engine.core import Engine
from dataflows.appliance_flow import build_flow
from tests.conftest import make_stream


def source_items(stream, name="file"):
    return [(name, offset, orjson.dumps(raw)) for offset, raw in enumerate(stream, start=1)]


def run_flow(config, items, workers=1):
    engine = Engine(config)
    out: list = []
    flow = build_flow(TestingSource(items), TestingSink(out), engine, checkpoint_seconds=3600)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    tables: dict[str, list] = {}
    checkpoints = []
    for item in out:
        if item[0] == "rows":
            for table, rows in item[1].items():
                tables.setdefault(table, []).extend(rows)
        else:
            checkpoints.append(item)
    return engine, tables, checkpoints


@pytest.mark.parametrize("workers", [1, 2])
def test_flow_scores_learns_and_checkpoints_at_the_end(small_config, workers):
    stream = make_stream(300)
    engine, tables, checkpoints = run_flow(small_config, source_items(stream), workers)
    payments = [e for e in stream if e["type"] == "payment"]
    assert len(tables["predictions"]) == len(payments)
    assert len(tables["events"]) == len(payments)
    assert engine.model.n_learned > 0
    assert checkpoints and checkpoints[-1][2]["offsets"] == {"file": len(stream)}


def test_two_workers_give_the_same_results_as_one(small_config):
    items = source_items(make_stream(400))
    one, rows_one, _ = run_flow(small_config, items, 1)
    two, rows_two, _ = run_flow(small_config, items, 2)
    assert rows_one["predictions"] == rows_two["predictions"]
    assert one.model.learner_eval.values() == two.model.learner_eval.values()


def test_bad_events_become_dead_letters_and_the_flow_goes_on(small_config):
    stream = make_stream(50)
    items = source_items(stream)
    items.insert(5, ("file", 1000, b"{not json"))
    items.insert(9, ("file", 1001, orjson.dumps({"type": "payment", "event_id": "x", "ts": 1.0, "user": "u",
                                                   "card": "c", "amount": "abc", "city": "x"})))
    items.insert(12, ("file", 1002, orjson.dumps({"type": "payment", "event_id": "y", "ts": 1.0, "card": "c",
                                                    "amount": 3.0, "city": "x"})))
    items.insert(15, ("file", 1003, orjson.dumps({"type": "payment", "event_id": "z", "ts": 1.0, "user": "u",
                                                    "card": "c", "amount": -3.0, "city": "x"})))
    _, tables, _ = run_flow(small_config, items)
    reasons = {row["offset"]: row["reason"] for row in tables["dead_letters"]}
    assert reasons[1000].startswith("not valid JSON")
    assert reasons[1001] == 'field "amount" must be a number, got \'abc\''
    assert reasons[1002] == 'missing entity key "user"'
    assert "outside" in reasons[1003]
    assert len(tables["predictions"]) == sum(1 for e in stream if e["type"] == "payment")


def test_replay_is_deterministic(small_config):
    items = source_items(make_stream(300))
    _, first, _ = run_flow(small_config, items)
    _, second, _ = run_flow(small_config, items)
    assert first["predictions"] == second["predictions"]
    assert first["labels"] == second["labels"]
