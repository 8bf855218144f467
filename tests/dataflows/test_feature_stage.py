"""Entity state partitioned across Bytewax workers gives every event the features the single engine gives it.

The streams are like the property tests' (`tests/features/test_feature_properties.py`), seeded:
jitter, disorder, too-late events, idle gaps past the TTL, missing keys and values, score-only
events. The reference is `FeatureSpace.compute` then `update` on one store, in stream order; the
partitioned side sends each event's requests through real Bytewax runs with 1, 2 and 4 workers, and
with 2 worker processes (`python -m bytewax.testing -p 2`), and rebuilds the vector from the joined
slices with the same `compute`.
"""

from __future__ import annotations

import math
import pickle
import random
import subprocess
import sys
from pathlib import Path

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from appliance.config.file import config_from_dict
from appliance.engine.feature_worker import FeatureSlice, SliceJoin, SliceRequest, answer, merged, requests_for
from appliance.features.space import FeatureSpace
from appliance.ingest.events import Event, parse_event
from dataflows.feature_stage import partitioned_features

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "event": {"keys": ["user", "card"], "numeric": ["amount"], "categorical": ["city"],
              "optional": ["amount", "card"], "allowed_lateness": "90s"},
    "labels": {"horizon": "20m", "default": 0},
    "model": {"task": "classification"},
    "features": {
        "buckets_per_window": 4,
        "ttl": {"user": "15m"},
        "aggregate": [
            {"name": "card_n_2m", "key": "card", "op": "count", "window": "2m"},
            {"name": "card_sum_10m", "key": "card", "op": "sum", "field": "amount", "window": "10m"},
            {"name": "card_users_10m", "key": "card", "op": "distinct", "field": "user", "window": "10m"},
            {"name": "card_since", "key": "card", "op": "since"},
            {"name": "user_mean_2m", "key": "user", "op": "mean", "field": "amount", "window": "2m"},
            {"name": "user_std_10m", "key": "user", "op": "std", "field": "amount", "window": "10m"},
            {"name": "user_cities_10m", "key": "user", "op": "distinct", "field": "city", "window": "10m"},
            {"name": "user_last_amount", "key": "user", "op": "last", "field": "amount"},
        ],
        "expression": [{"name": "amount_vs_mean", "expr": "amount / (user_mean_2m + 1)"}],
    },
}


def stream_of(seed, n=150):
    """Payments on 4 users and 4 cards: jitter, disorder, too-late events, idle gaps, labels, score-only."""
    rng = random.Random(seed)
    t, out = 1_767_225_600.0, []
    for i in range(n):
        t += rng.choice([0.0, 1.0, 7.5, 30.0, 61.0, 200.0, 1000.0, 4000.0])
        event = {"type": "payment", "event_id": f"e{i}", "ts": t + rng.choice((0.0, 0.0, -20.0, -85.0, -700.0)),
                 "user": f"u{rng.randrange(4)}", "city": rng.choice("abc")}
        if rng.randrange(5) < 4:
            event["card"] = f"c{rng.randrange(4)}"
        if rng.random() < 0.8:
            event["amount"] = rng.randrange(501) / 4
        if rng.randrange(10) == 0:
            event["_score_only"] = True
        out.append(event)
        if rng.randrange(3) == 0:
            out.append({"type": "label", "event_id": f"e{i}", "ts": t + rng.choice([1.0, 2000.0]), "label": 1})
    return out


def accepted_events(config, stream):
    """(seq, values, ts, fold) of each event the engine would score, in order; late ones left out."""
    watermark, lateness, out = -math.inf, config.event.allowed_lateness, []
    for raw in stream:
        raw = dict(raw)
        score_only = raw.pop("_score_only", False)
        parsed = parse_event(raw, config.event, config.model.task)
        if not isinstance(parsed, Event):
            watermark = max(watermark, parsed.ts if parsed.ts is not None else watermark)
            continue
        if parsed.ts < watermark - lateness:
            continue
        out.append((len(out), parsed.values, parsed.ts, not score_only))
        if not score_only:
            watermark = max(watermark, parsed.ts)
    return out


def serial_vectors(space, events):
    store = space.new_store()
    out = []
    for _seq, values, ts, fold in events:
        out.append(space.compute(values, ts, store))
        if fold:
            space.update(values, ts, store)
    return out


def partitioned_vectors(space, events, workers):
    requests = [r for seq, values, ts, fold in events for r in requests_for(seq, values, ts, space.layouts, True, fold)]
    flow = Dataflow("features")
    joined = partitioned_features(op.input("requests", flow, TestingSource(requests)), space.layouts)
    got: list = []
    op.output("out", joined, TestingSink(got))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    slices = {int(seq): parts for seq, parts in got}
    assert len(slices) == len(got)  # each event completed once
    return [space.compute(values, ts, {}, aggregates=merged(space.layouts, slices.get(seq, {}), ts))
            for seq, values, ts, _fold in events]


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("seed", range(4))
def test_partitioned_features_equal_the_single_engines(workers, seed):
    config = config_from_dict(CONFIG)
    space = FeatureSpace.for_config(config)
    events = accepted_events(config, stream_of(seed))
    assert partitioned_vectors(space, events, workers) == serial_vectors(space, events)


class _FileSink(DynamicSink):
    """Each worker appends its joined events to its own JSONL file (worker processes share no memory)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def build(self, step_id, worker_index, worker_count):
        return _FilePart(Path(self.folder) / f"joined-{worker_index}.jsonl")


class _FilePart(StatelessSinkPartition):
    def __init__(self, path: Path) -> None:
        self.file = path.open("ab")

    def write_batch(self, items) -> None:
        self.file.write(b"".join(orjson.dumps(item) + b"\n" for item in items))

    def close(self) -> None:
        self.file.close()


def process_flow(folder: str) -> Dataflow:
    """The feature stage over the requests pickled in `folder`, for `python -m bytewax.testing -p N`."""
    requests = pickle.loads((Path(folder) / "requests.pkl").read_bytes())
    space = FeatureSpace.for_config(config_from_dict(CONFIG))
    flow = Dataflow("features")
    joined = partitioned_features(op.input("requests", flow, TestingSource(requests)), space.layouts)
    op.output("out", joined, _FileSink(folder))
    return flow


def test_partitioned_features_equal_the_single_engines_across_two_processes(tmp_path):
    config = config_from_dict(CONFIG)
    space = FeatureSpace.for_config(config)
    events = [e for seed in range(3) for e in accepted_events(config, stream_of(seed, 60))]
    events = [(seq, values, ts, fold) for seq, (_, values, ts, fold) in enumerate(sorted(events, key=lambda e: e[2]))]
    requests = [r for seq, values, ts, fold in events for r in requests_for(seq, values, ts, space.layouts, True, fold)]
    (tmp_path / "requests.pkl").write_bytes(pickle.dumps(requests))
    proc = subprocess.run([sys.executable, "-m", "bytewax.testing",
                           f"tests.dataflows.test_feature_stage:process_flow('{tmp_path}')", "-p", "2"],
                          cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    files = sorted(tmp_path.glob("joined-*.jsonl"))
    got = [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]
    assert len(files) == 2 and all(path.stat().st_size > 0 for path in files)  # both processes joined events
    slices = {int(seq): parts for seq, parts in got}
    assert len(slices) == len(got)
    vectors = [space.compute(values, ts, {}, aggregates=merged(space.layouts, slices.get(seq, {}), ts))
               for seq, values, ts, _fold in events]
    assert vectors == serial_vectors(space, events)


def test_an_owner_reads_before_it_folds():
    config = config_from_dict(CONFIG)
    space = FeatureSpace.for_config(config)
    values = {"user": "u1", "card": "c1", "amount": 5.0, "city": "a"}
    state, first = answer(space.layouts, None, SliceRequest(0, "card", "c1", 100.0, values, True, True, 2))
    _, second = answer(space.layouts, state, SliceRequest(1, "card", "c1", 160.0, values, True, True, 2))
    assert first.aggregates["card_n_2m"] == 0.0 and second.aggregates["card_n_2m"] == 1.0
    _, unfolded = answer(space.layouts, None, SliceRequest(2, "card", "c1", 100.0, values, True, False, 2))
    assert unfolded == FeatureSlice(2, "card", first.aggregates, 2)


def test_a_join_waits_for_every_slice():
    join = SliceJoin()
    assert join.add(FeatureSlice(7, "user", {"u": 1.0}, 2)) is None
    assert join.add(FeatureSlice(7, "card", {"c": 2.0}, 2)) == {"user": {"u": 1.0}, "card": {"c": 2.0}}
