"""Property tests: served features equal a brute-force recomputation from the event log, and the
exported training set equals the feature vectors logged at prediction time.

Hypothesis draws streams with jittered, out-of-order and too-late events, idle gaps long enough to
expire and evict entities, missing optional values, labels and events that are only scored
(not ingested). The engine runs them for real and writes a real SQLite store; the brute force knows
nothing of buckets rings, TTL sweeps or copy-on-write state, only the documented semantics.
"""

from __future__ import annotations

import math
import random

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from appliance.config.file import config_from_dict
from appliance.engine.core import Engine
from appliance.engine.items import EventItem, LabelItem
from appliance.errors import ConfigError
from appliance.features.space import FeatureSpace
from appliance.ingest.events import Event, parse_event
from appliance.offline.export import training_set
from appliance.storage.rows import decode_vector
from appliance.storage.writer import StoreWriter
from tests.conftest import settle_with

WINDOWS = {"2m": 120.0, "10m": 600.0}
CONFIG = {
    "event": {"keys": ["user", "card"], "numeric": ["amount"], "categorical": ["city"],
              "optional": ["amount", "card"], "allowed_lateness": "90s"},
    "labels": {"horizon": "20m", "default": 0},
    "model": {"task": "classification", "publish_every": 10, "metric_window": 20},
    "features": {
        "buckets_per_window": 4,
        "ttl": {"user": "15m"},
        "aggregate": [
            {"name": "card_n_2m", "key": "card", "op": "count", "window": "2m"},
            {"name": "card_rate_10m", "key": "card", "op": "rate", "window": "10m"},
            {"name": "card_sum_10m", "key": "card", "op": "sum", "field": "amount", "window": "10m"},
            {"name": "card_users_10m", "key": "card", "op": "distinct", "field": "user", "window": "10m"},
            {"name": "card_since", "key": "card", "op": "since"},
            {"name": "user_mean_2m", "key": "user", "op": "mean", "field": "amount", "window": "2m"},
            {"name": "user_min_10m", "key": "user", "op": "min", "field": "amount", "window": "10m"},
            {"name": "user_max_10m", "key": "user", "op": "max", "field": "amount", "window": "10m"},
            {"name": "user_std_10m", "key": "user", "op": "std", "field": "amount", "window": "10m"},
            {"name": "user_cities_10m", "key": "user", "op": "distinct", "field": "city", "window": "10m"},
            {"name": "user_last_amount", "key": "user", "op": "last", "field": "amount"},
        ],
        "expression": [{"name": "amount_vs_mean", "expr": "amount / (user_mean_2m + 1)"}],
    },
}
TTL = {"user": 900.0, "card": 600.0}  # user: declared; card: its longest window
BUCKETS = 4


SHIFTS = (0.0, 0.0, 0.0, -20.0, -85.0, -150.0, -700.0)  # in order, out of order, or too late (90s)
# allowed_lateness of 5 minutes: longer than the 2m window (10 of its hops) and than 2 hops of the 10m one
LATE_CONFIG = {**CONFIG, "event": {**CONFIG["event"], "allowed_lateness": "5m"}}
LATE_SHIFTS = (0.0, 0.0, -20.0, -100.0, -170.0, -230.0, -299.0, -420.0)


@st.composite
def streams(draw, shifts=SHIFTS):
    """Payments on 4 users and 4 cards with jitter, disorder, idle gaps, and labels; some score-only."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    n = draw(st.integers(5, 120))
    t = 1_767_225_600.0
    out = []
    for i in range(n):
        t += rng.choice([0.0, 1.0, 7.5, 30.0, 61.0, 200.0, 1000.0, 4000.0])
        shift = rng.choice(shifts)
        event = {"type": "payment", "event_id": f"e{i}", "ts": t + shift, "user": f"u{rng.randrange(4)}",
                 "city": rng.choice("abc")}
        card = rng.randrange(5)
        if card < 4:
            event["card"] = f"c{card}"
        if rng.random() < 0.8:
            event["amount"] = rng.randrange(501) / 4
        if rng.randrange(10) == 0:
            event["_score_only"] = True
        out.append(event)
        if rng.randrange(3) == 0:
            out.append({"type": "label", "event_id": f"e{i}", "ts": t + rng.choice([1.0, 100.0, 2000.0]),
                        "label": rng.randrange(2)})
    return out


def to_items(config, stream):
    items = []
    for offset, raw in enumerate(stream, start=1):
        raw = dict(raw)
        ingest = not raw.pop("_score_only", False)
        parsed = parse_event(raw, config.event, config.model.task)
        if isinstance(parsed, Event):
            items.append(EventItem("test", offset, parsed, None, ingest))
        else:
            items.append(LabelItem("test", offset, parsed))
    return items


def brute_force(config, stream):
    """Features of every accepted event from the documented semantics, by scanning history."""
    lateness = config.event.allowed_lateness
    watermark = -math.inf
    history: list[dict] = []  # accepted, ingested events, in arrival order
    seen: set[str] = set()
    out = {}
    for raw in stream:
        if raw["type"] == "label":
            watermark = max(watermark, raw["ts"])
            continue
        t = raw["ts"]
        score_only = raw.get("_score_only", False)  # scored here, not over the socket: it can be late,
        if t < watermark - lateness or raw["event_id"] in seen:  # but it never moves event time
            continue
        seen.add(raw["event_id"])
        x = {}
        if "amount" in raw:
            x["amount"] = float(raw["amount"])
        for agg in config.features.aggregates:
            prev = _epoch(history, agg.key, raw.get(agg.key))
            if not prev or max(e["ts"] for e in prev) < t - TTL[agg.key]:
                prev = []
            value = _aggregate(agg, prev, t)
            if value is not None:
                x[agg.name] = value
        if "user_mean_2m" in x and "amount" in x:
            x["amount_vs_mean"] = x["amount"] / (x["user_mean_2m"] + 1)
        out[raw["event_id"]] = x
        if not score_only:
            history.append(raw)
            watermark = max(watermark, t)
    return out


def _epoch(history, key, entity):
    """The entity's events since it last started afresh (an event after a gap longer than the TTL)."""
    if entity is None:
        return []
    epoch: list[dict] = []
    for e in history:
        if e.get(key) == entity:
            if epoch and max(p["ts"] for p in epoch) < e["ts"] - TTL[key]:
                epoch = []
            epoch.append(e)
    return epoch


def _aggregate(agg, prev, t):
    if agg.op == "since":
        return max(0.0, t - max(e["ts"] for e in prev)) if prev else None
    if agg.op == "last":
        last_ts, last_value = -math.inf, None
        for e in prev:  # the newest event by event time that carried the field
            if e["ts"] >= last_ts:
                last_ts = e["ts"]
                if agg.field in e:
                    last_value = float(e[agg.field])
        return last_value
    hop = agg.window / BUCKETS
    current = math.floor(t / hop)
    window = [e for e in prev if current - BUCKETS < math.floor(e["ts"] / hop) <= current]
    if agg.op == "count":
        return float(len(window))
    if agg.op == "rate":
        return len(window) * 3600.0 / agg.window
    if agg.op == "distinct":
        return float(len({e[agg.field] for e in window if agg.field in e}))
    values = [float(e[agg.field]) for e in window if agg.field in e]
    if not values:
        return 0.0 if agg.op == "sum" else None
    mean = sum(values) / len(values)
    return {"sum": sum(values), "mean": mean, "min": min(values), "max": max(values),
            "std": math.sqrt(max(0.0, sum(v * v for v in values) / len(values) - mean * mean))}[agg.op]


def assert_close(got: dict, want: dict, where: str) -> None:
    assert set(got) - {"hour_sin", "hour_cos"} - {k for k in got if "#" in k} == set(want), where
    for name, value in want.items():
        assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-6), f"{where}: {name} {got[name]} != {value}"


def assert_served_equal_brute_force(config, stream, pool=None):
    """Every logged feature vector of a run over `stream` equals the brute force's, event by event.
    With `pool` (`engine.partitions`), entity state is in its worker processes, fed batches of 5 items."""
    engine = Engine(config)
    parsed = to_items(config, stream)
    if pool is None:
        for item in parsed:
            engine.process(item)
    else:
        engine.partitioned = True
        pool.load([], engine.sweep_ticks)
        for first in range(0, len(parsed), 5):
            settle_with(pool, engine, parsed[first:first + 5])
    logged = {row["event_id"]: decode_vector(row["features"]) for row in engine.take_rows()["predictions"]}
    expected = brute_force(config, stream)
    assert set(logged) == set(expected)
    for event_id, want in expected.items():
        assert_close(logged[event_id], want, event_id)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams())
def test_served_features_equal_a_brute_force_recomputation(stream):
    assert_served_equal_brute_force(config_from_dict(CONFIG), stream)


@pytest.fixture(scope="module", params=[2, 4])
def entity_workers(request):
    """Entity state in 2 or 4 worker processes, reloaded (emptied) for each stream."""
    from appliance.engine.partitions import EntityPartitions

    config = config_from_dict(CONFIG)
    with EntityPartitions(config, FeatureSpace.for_config(config), request.param) as pool:
        yield pool


@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(stream=streams())
def test_features_from_entity_workers_equal_a_brute_force_recomputation(stream, entity_workers):
    assert_served_equal_brute_force(config_from_dict(CONFIG), stream, entity_workers)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(LATE_SHIFTS))
def test_events_later_than_a_whole_window_still_see_their_whole_window(stream):
    """allowed_lateness longer than a window and than many of its hops: a late event's window is
    still whole (no ring position reused by a newer bucket it needs)."""
    assert_served_equal_brute_force(config_from_dict(LATE_CONFIG), stream)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(stream=streams())
@example(stream=[  # a scored-only event far ahead must not move the export's event time (it never moves the engine's)
    {"type": "payment", "event_id": "e0", "ts": 1_767_225_600.0, "user": "u0", "card": "c0", "amount": 10.0, "city": "a"},
    {"type": "payment", "event_id": "e1", "ts": 1_767_229_600.0, "user": "u1", "card": "c1", "amount": 5.0, "city": "b",
     "_score_only": True},
    {"type": "payment", "event_id": "e2", "ts": 1_767_225_630.0, "user": "u0", "card": "c0", "amount": 20.0, "city": "a"},
    {"type": "label", "event_id": "e2", "ts": 1_767_225_631.0, "label": 1}])
def test_exported_training_set_equals_the_vectors_logged_at_prediction_time(stream, store_dir):
    config = config_from_dict(CONFIG)
    db_path = store_dir / f"export-{abs(hash(orjson.dumps(stream)))}.db"
    writer = StoreWriter(db_path).start()
    engine = Engine(config)
    for item in to_items(config, stream):
        engine.process(item)
    rows = engine.take_rows()
    writer.put_rows(rows)
    writer.close()
    learned = {r["event_id"] for r in rows["labels"]}  # every label row is learned (late ones are apart)
    logged = {r["event_id"]: decode_vector(r["features"]) for r in rows["predictions"] if r["event_id"] in learned}
    serial = list(training_set(str(db_path), config))
    partitioned = list(training_set(str(db_path), config, workers=2))  # entity state in 2 worker processes
    assert [list(row.items()) for row in partitioned] == [list(row.items()) for row in serial]
    exported = {row.pop("event_id"): row for row in serial}
    assert set(exported) == set(logged)
    for event_id, row in exported.items():
        row.pop("ts"), row.pop("label")
        assert row == logged[event_id], event_id


def test_a_lateness_whose_rings_would_exceed_the_cap_is_refused_at_load_naming_the_aggregates():
    late = {**CONFIG, "event": {**CONFIG["event"], "allowed_lateness": "1d"}}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(late)
    message = str(caught.value)
    assert '"card_n_2m" (key "card"' in message and '"user_mean_2m" (key "user"' in message
    assert "10m" not in message and "card_sum_10m" not in message  # 10m windows fit: hop 150s, 581 buckets
    config_from_dict({**CONFIG, "event": {**CONFIG["event"], "allowed_lateness": "1h"}})  # 2m rings: 125


def test_a_checkpointed_state_with_another_ring_length_is_refused_on_restore():
    config = config_from_dict(CONFIG)
    engine = Engine(config)
    for item in to_items(config, [{"type": "payment", "event_id": "e1", "ts": 1_767_225_600.0, "user": "u1",
                                    "city": "a", "card": "c1", "amount": 3.0}]):
        engine.process(item)
    saved = engine.checkpoint()
    longer = config_from_dict(LATE_CONFIG)  # same features, longer lateness: longer 2m rings
    with pytest.raises(ConfigError, match="another layout"):
        Engine(longer).restore(saved["engine"], saved["entities"])
    Engine(config).restore(saved["engine"], saved["entities"])  # the same layout restores
