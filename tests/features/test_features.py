"""Features: window semantics against a brute-force recomputation, and copy-on-write state."""

from __future__ import annotations

import math
import random

import pytest

from appliance.config.file import AggregateSpec, EventSchema, FeatureConfig
from appliance.features.space import FeatureSpace
from tests.conftest import make_stream


def brute_force(events: list[dict], spec: AggregateSpec, buckets: int, t: float, entity: str) -> float | None:
    """The documented semantics, computed from the raw event list."""
    hop = spec.window / buckets
    current = math.floor(t / hop)
    mine = [e for e in events if e[spec.key] == entity]
    inside = [e for e in mine if current - buckets < math.floor(e["ts"] / hop) <= current]
    values = [e[spec.field] for e in inside] if spec.field else []
    if spec.op == "count":
        return float(len(inside))
    if spec.op == "sum":
        return float(sum(values))
    if spec.op == "distinct":
        return float(len({e[spec.field] for e in inside}))
    if not values:
        return None
    if spec.op == "mean":
        return sum(values) / len(values)
    if spec.op == "max":
        return max(values)
    if spec.op == "min":
        return min(values)
    raise AssertionError(spec.op)


@pytest.mark.parametrize("op,field", [("count", None), ("sum", "amount"), ("mean", "amount"),
                                      ("max", "amount"), ("min", "amount"), ("distinct", "user")])
def test_in_order_windows_equal_brute_force(op, field):
    schema = EventSchema(keys=("card", "user"), numeric=("amount",))
    spec = AggregateSpec("f", "card", op, 1800.0, field)
    space = FeatureSpace(FeatureConfig(aggregates=(spec,), buckets_per_window=6), schema)
    store = space.new_store()
    seen: list[dict] = []
    for event in (e for e in make_stream(300) if e["type"] == "payment"):
        values = {"card": event["card"], "user": event["user"], "amount": float(event["amount"])}
        x = space.compute(values, event["ts"], store)
        expected = brute_force(seen, spec, 6, event["ts"], event["card"])
        if expected is None:
            assert "f" not in x
        else:
            assert x["f"] == pytest.approx(expected, rel=1e-9)
        space.update(values, event["ts"], store)
        seen.append({**values, "ts": event["ts"]})


def test_event_does_not_see_itself(small_config):
    space = FeatureSpace(small_config.features, small_config.event)
    store = space.new_store()
    values = {"user": "u", "card": "c", "amount": 10.0, "city": "faro"}
    first = space.compute(values, 1000.0, store)
    assert first["card_n_10m"] == 0.0 and "card_since" not in first and "user_mean_1h" not in first
    space.update(values, 1000.0, store)
    second = space.compute(values, 1060.0, store)
    assert second["card_n_10m"] == 1.0
    assert second["card_since"] == 60.0
    assert second["user_last_amount"] == 10.0
    assert second["amount_vs_mean"] == pytest.approx(10.0 / 11.0)


def test_std_and_rate(small_config):
    space = FeatureSpace(small_config.features, small_config.event)
    store = space.new_store()
    for i, amount in enumerate([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]):
        space.update({"user": "u", "card": "c", "amount": amount, "city": "x"}, 100.0 + i, store)
    x = space.compute({"user": "u", "card": "c", "amount": 1.0, "city": "x"}, 120.0, store)
    assert x["user_std_1h"] == pytest.approx(2.0)
    assert x["card_rate_1h"] == pytest.approx(8.0)


def test_update_replaces_state_instead_of_mutating_it(small_config):
    space = FeatureSpace(small_config.features, small_config.event)
    store = space.new_store()
    values = {"user": "u", "card": "c", "amount": 10.0, "city": "x"}
    space.update(values, 1000.0, store)
    before = store["card"]["c"]
    snapshot = (before[0][:], before[1])
    space.update(values, 1010.0, store)
    assert store["card"]["c"] is not before
    assert before[0] == snapshot[0] and before[1] == snapshot[1]


def test_old_buckets_fall_out_of_the_window(small_config):
    space = FeatureSpace(small_config.features, small_config.event)
    store = space.new_store()
    values = {"user": "u", "card": "c", "amount": 10.0, "city": "x"}
    space.update(values, 0.0, store)
    assert space.compute(values, 3600.0 * 2, store)["card_n_10m"] == 0.0
    assert "user_mean_1h" not in space.compute(values, 3600.0 * 2, store)


def test_categorical_hashing_is_stable_across_processes(small_config):
    space = FeatureSpace(small_config.features, small_config.event)
    # MurmurHash3, not Python's per-process salted hash(): the same value maps to the same column forever.
    assert space.hashed_name("city", "lisbon") == space.hashed_name("city", "lisbon")
    assert space.hashed_name("city", "lisbon") == f"city#{__import__('mmh3').hash('lisbon', 0, False) % 8}"


def test_out_of_order_event_sees_no_later_buckets():
    schema = EventSchema(keys=("card",), numeric=("amount",))
    spec = AggregateSpec("n", "card", "count", 600.0)
    space = FeatureSpace(FeatureConfig(aggregates=(spec,), buckets_per_window=6), schema)
    store = space.new_store()
    space.update({"card": "c", "amount": 1.0}, 10_000.0, store)
    # An event 5 minutes older than what the card has seen: the later bucket is in its future.
    assert space.compute({"card": "c", "amount": 1.0}, 9_700.0, store)["n"] == 0.0


def test_random_streams_match_brute_force_for_count():
    rng = random.Random(11)
    schema = EventSchema(keys=("card",), numeric=("amount",))
    spec = AggregateSpec("n", "card", "count", 300.0)
    space = FeatureSpace(FeatureConfig(aggregates=(spec,), buckets_per_window=5), schema)
    store = space.new_store()
    seen: list[dict] = []
    t = 0.0
    for _ in range(2000):
        t += rng.expovariate(1 / 20)
        event = {"card": f"c{rng.randrange(4)}", "amount": 1.0, "ts": t}
        got = space.compute(event, t, store)["n"]
        assert got == brute_force(seen, spec, 5, t, event["card"])
        space.update(event, t, store)
        seen.append(event)
