"""Entity state partitioned across Bytewax workers gives every event the features the single engine gives it.

The streams are the property tests' (`tests/features/test_feature_properties.py`): jitter, disorder,
too-late events, idle gaps past the TTL, missing keys and values, score-only events. The reference is
`FeatureSpace.compute` then `update` on one store, in stream order; the partitioned side sends each
event's requests through real Bytewax runs with 1, 2 and 4 workers and rebuilds the vector from the
joined slices with the same `compute`.
"""

from __future__ import annotations

import math

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from hypothesis import HealthCheck, given, settings

from appliance.config.file import config_from_dict
from appliance.engine.feature_worker import FeatureSlice, SliceJoin, SliceRequest, answer, merged, requests_for
from appliance.features.space import FeatureSpace
from appliance.ingest.events import Event, parse_event
from dataflows.feature_stage import partitioned_features
from tests.features.test_feature_properties import CONFIG, streams


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
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=streams())
def test_partitioned_features_equal_the_single_engines(workers, stream):
    config = config_from_dict(CONFIG)
    space = FeatureSpace.for_config(config)
    events = accepted_events(config, stream)
    assert partitioned_vectors(space, events, workers) == serial_vectors(space, events)


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
