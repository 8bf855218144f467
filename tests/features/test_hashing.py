"""Hashed categoricals: a hash that spreads short codes, a cached and stable name, a collision report
that says how many buckets would do, and a default pipeline that does not zero the one-hots."""

from __future__ import annotations

import copy
import hashlib
import itertools
import string
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import replace

import mmh3
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from river import checks, preprocessing

from appliance.config.file import config_from_dict
from appliance.config.model_spec import DEFAULT_MODELS, build_model, zeroing_warning
from appliance.features.category_stats import CategoryStats, buckets_for
from appliance.features.space import FeatureSpace, bucket_of
from appliance.learning.scaling import ScaleNumeric
from appliance.runtime.store_files import fingerprint, warn_zeroing
from appliance.storage.snapshot import FORMAT_VERSION, ROWS_FORMAT, dump_object, load_object

AIRPORTS = ("EWR", "JFK", "LGA")
CARRIERS = ("9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV")
THREE_LETTERS = ["".join(t) for t in itertools.product(string.ascii_uppercase, repeat=3)]


def colliding_pairs(codes, bucket) -> int:
    return sum(n * (n - 1) // 2 for n in Counter(bucket(c) for c in codes).values())


def test_short_codes_collide_no_more_than_a_random_hash_would_at_a_power_of_two():
    # A pair that shares a bucket mod 2**16 shares it at every smaller power of two: a fixed pattern.
    # Uniform hashing expects C(17576, 2) / 65536 = 2357 such pairs among all three-letter codes.
    expected = len(THREE_LETTERS) * (len(THREE_LETTERS) - 1) / 2 / 2**16
    murmur = colliding_pairs(THREE_LETTERS, lambda c: bucket_of(c, 2**16))
    crc = colliding_pairs(THREE_LETTERS, lambda c: zlib.crc32(c.encode()) % 2**16)
    assert abs(murmur - expected) < 0.1 * expected
    assert crc > 1.5 * expected  # what the appliance used before: codes paired at every power of two


def test_airports_and_carriers_share_no_bucket_at_every_power_of_two():
    for codes in (AIRPORTS, CARRIERS):
        for a, b in itertools.combinations(codes, 2):
            assert any(bucket_of(a, 2**k) != bucket_of(b, 2**k) for k in range(4, 17)), (a, b)
    # crc32 put EWR and LGA in one bucket from 16 to 2,048 buckets
    assert all(zlib.crc32(b"EWR") % 2**k == zlib.crc32(b"LGA") % 2**k for k in range(4, 12))
    assert len({bucket_of(code, 128) for code in AIRPORTS}) == 3


def test_bucket_is_murmur3_so_names_are_stable_across_processes():
    here = bucket_of("lisbon", 1024)
    code = "from appliance.features.space import bucket_of; print(bucket_of('lisbon', 1024))"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert here == int(there.stdout) == mmh3.hash("lisbon", 0, False) % 1024


def test_hashed_name_is_cached_and_the_cache_is_bounded(small_config, monkeypatch):
    from appliance.features import space as features

    monkeypatch.setattr(features, "HASH_CACHE", 4)
    space = FeatureSpace(small_config.features, small_config.event)
    names = [space.hashed_name("city", f"c{i}") for i in range(10)]
    assert names == [f"city#{bucket_of(f'c{i}', 8)}" for i in range(10)]
    assert len(space._hashed["city"]) <= 4
    assert [space.hashed_name("city", f"c{i}") for i in range(10)] == names


def test_collision_report_says_the_share_of_values_that_share_a_bucket_and_what_would_do(small_config):
    space = FeatureSpace(small_config.features, small_config.event)  # 8 buckets
    stats = CategoryStats(space)
    cities = [f"city{i}" for i in range(12)]
    for city in cities:
        stats.observe({"city": city})
    occupancy = Counter(bucket_of(c, 8) for c in cities)
    sharing = sum(n for n in occupancy.values() if n > 1)
    report = stats.summary()["city"]
    assert report["distinct"] == 12 and report["buckets"] == 8
    assert report["collision_rate"] == round(sharing / 12, 4) > 0
    assert report["buckets_for_10pct"] == buckets_for(12) == 128


def test_buckets_for_keeps_the_expected_share_under_ten_percent():
    for distinct in (2, 3, 16, 105, 1000):
        b = buckets_for(distinct)
        assert 1 - (1 - 1 / b) ** (distinct - 1) < 0.10 <= 1 - (1 - 2 / b) ** (distinct - 1)


def test_river_standard_scaler_zeroes_a_one_hot_and_scale_numeric_keeps_it():
    standard, ours = preprocessing.StandardScaler(), ScaleNumeric()
    for i in range(20):
        x = {"amount": float(i), **({"city#3": 1.0} if i % 3 == 0 else {})}
        standard.learn_one(x)
        ours.learn_one(x)
    assert standard.transform_one({"amount": 5.0, "city#3": 1.0})["city#3"] == 0.0
    scaled = ours.transform_one({"amount": 5.0, "city#3": 1.0})
    assert scaled["city#3"] == 1.0 and scaled["amount"] == standard.transform_one({"amount": 5.0})["amount"]


def test_default_pipeline_learns_a_weight_for_each_category():
    def weights(spec):
        model = build_model(spec, "classification")
        for i in range(300):
            city = ("north", "south")[i % 2]
            model.learn_one({"amount": float(i % 7), f"city#{city}": 1.0}, city == "north")
        return list(model.steps.values())[-1].weights

    default = weights(DEFAULT_MODELS["classification"])
    zeroing = weights("preprocessing.StandardScaler() | linear_model.LogisticRegression()")
    assert default["city#north"] > 0.5 > -0.5 > default["city#south"]
    assert zeroing["city#north"] == zeroing["city#south"] == 0.0


def test_scale_numeric_passes_river_estimator_checks():
    checks.check_estimator(ScaleNumeric())


def test_a_standard_scaler_on_hashed_features_is_warned_about_once_per_start(small_config, caplog):
    assert zeroing_warning(DEFAULT_MODELS["classification"], "classification") is None
    assert zeroing_warning("preprocessing.MaxAbsScaler() | linear_model.LogisticRegression()", "classification") is None
    assert zeroing_warning("compose.Select('amount') | preprocessing.StandardScaler() | "
                           "linear_model.LogisticRegression()", "classification") is None
    config = replace(small_config, model=replace(
        small_config.model, spec="preprocessing.StandardScaler() | linear_model.LogisticRegression()"))
    with caplog.at_level("WARNING"):
        warnings = warn_zeroing(config)
    assert len(warnings) == 1 and "StandardScaler maps hashed categorical features" in warnings[0]
    assert '"appliance.ScaleNumeric()"' in warnings[0] and caplog.text.count("StandardScaler maps") == 1
    numeric_only = config_from_dict({"event": {"numeric": ["amount"]}, "model": {
        "spec": "preprocessing.StandardScaler() | linear_model.LogisticRegression()"}})
    assert warn_zeroing(numeric_only) == []


def test_the_hash_is_part_of_the_store_fingerprint_only_with_categoricals(small_config):
    text = repr((small_config.event, small_config.features, small_config.model.task, small_config.model.spec))
    text += f" format {FORMAT_VERSION} rows {ROWS_FORMAT}"
    old = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert fingerprint(small_config) != old  # a store hashed with crc32 is refused, not misread
    numeric_only = config_from_dict({"event": {"numeric": ["amount"]}})
    text = repr((numeric_only.event, numeric_only.features, numeric_only.model.task, numeric_only.model.spec))
    text += f" format {FORMAT_VERSION} rows {ROWS_FORMAT}"
    assert fingerprint(numeric_only) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_replay_shows_the_warning_once_and_the_default_spec_none(tmp_path):
    from tests.conftest import make_stream, write_config

    events = tmp_path / "events.jsonl"
    events.write_text("".join(orjson.dumps(e).decode() + "\n" for e in make_stream(60)))
    config = write_config(tmp_path, str(events))

    def replay(*model):
        return subprocess.run([sys.executable, "-m", "appliance", "replay", "--config", str(config), "--db",
                               str(tmp_path / f"a{len(model)}.db"), "--json", *model],
                              check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    zeroing = replay("--model", "preprocessing.StandardScaler() | linear_model.LogisticRegression()")
    assert zeroing.returncode == 0, zeroing.stderr
    assert zeroing.stderr.count("StandardScaler maps hashed categorical features") == 1
    default = replay()
    assert default.returncode == 0 and "maps hashed categorical" not in default.stderr


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.dictionaries(st.sampled_from(["a", "b", "c", "city#1"]),
                                                               st.floats(-1e6, 1e6), min_size=1)),
                      min_size=1, max_size=60))
def test_scale_numeric_scales_as_river_to_the_last_bit_through_learning_copies_and_storage(steps):
    """Its kept scales agree with River's StandardScaler on the numeric features after any mix of
    learning and scaling, through a deep copy and a stored model, and learn River's state to the last bit."""
    river_scaler, ours = preprocessing.StandardScaler(), ScaleNumeric(clip=None)
    for n, (learn, x) in enumerate(steps):
        numeric = {k: v for k, v in x.items() if "#" not in k}
        if learn:
            river_scaler.learn_one(numeric)
            ours.learn_one(x)
        if n % 7 == 3:
            ours = copy.deepcopy(ours)
        if n % 11 == 5:
            ours = load_object(dump_object(ours))
        scaled = ours.transform_one(x)
        assert {k: v for k, v in scaled.items() if "#" not in k} == river_scaler.transform_one(numeric)
        assert all(scaled[k] == x[k] for k in x if "#" in k)
    assert dict(ours.scaler.counts) == dict(river_scaler.counts)
    assert all(ours.scaler.means[k] == river_scaler.means[k] and ours.scaler.vars[k] == river_scaler.vars[k]
               for k in river_scaler.counts)
