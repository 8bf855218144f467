"""Config parsing on its own: each section's defaults, every way a file is refused (naming the key),
and round trips of the bundled sample and of what `appliance init` writes."""

from __future__ import annotations

import copy
import dataclasses
import random
import re
from pathlib import Path

import orjson
import pytest

from appliance.config.file import (
    Config,
    ConfigFile,
    EventSchema,
    FeatureConfig,
    LabelPolicy,
    ModelConfig,
    Retention,
    config_from_dict,
    config_to_dict,
    load_config,
)
from appliance.config.lifecycle import Lifecycle
from appliance.config.schema import document_keys, document_tables, table_keys
from appliance.errors import ConfigError
from appliance.init.starter import write_starter

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "appliance.toml"
DAY = 86400.0
EVENT = {"keys": ["user", "card"], "numeric": ["amount"], "categorical": ["city"]}


def with_tables(**tables) -> dict:
    data = {"event": copy.deepcopy(EVENT)}
    for name, table in tables.items():
        data[name] = {**data.get(name, {}), **table} if isinstance(table, dict) else table
    return data


def test_an_empty_file_is_the_dataclasses_defaults(tmp_path):
    assert config_from_dict({}) == Config()
    (tmp_path / "appliance.toml").write_text("")
    assert load_config(tmp_path / "appliance.toml") == Config(path=str(tmp_path / "appliance.toml"))


@pytest.mark.parametrize(("table", "expected"), [
    ("source", {"source": "sample", "speed": 0.0}),
    ("serve", {"socket": "appliance.sock", "db": "appliance.db"}),
    ("checkpoint", {"checkpoint_seconds": 5.0}),
])
def test_the_flat_sections_default_to_what_the_appliance_ran_with_before(table, expected):
    config = config_from_dict({table: {}})
    assert {name: getattr(config, name) for name in expected} == expected


def test_each_sections_defaults_are_its_dataclass_defaults_and_pinned_values():
    config = config_from_dict({"event": {}, "features": {}, "labels": {}, "model": {}, "retention": {},
                               "lifecycle": {}})
    assert (config.event, config.features, config.labels, config.model, config.retention, config.lifecycle) == (
        EventSchema(), FeatureConfig(), LabelPolicy(), ModelConfig(), Retention(), Lifecycle())
    event = config.event
    assert (event.id_field, event.time_field, event.type_field, event.label_type, event.label_field) == (
        "event_id", "ts", "type", "label", "label")
    assert (event.label_id_field, event.label_time_field, event.label_by) == ("event_id", "ts", "type")
    assert (event.allowed_lateness, event.max_future_skew, event.bounds) == (300.0, DAY, {})
    features = config.features
    assert (features.hash_buckets, features.buckets_per_window, features.time_of_day) == (128, 6, False)
    assert (config.labels.horizon, config.labels.default) == (None, None)
    model = config.model
    assert (model.task, model.spec, model.publish_every, model.publish_interval, model.publish_margin,
            model.first_publish, model.gate_metric, model.metric_window) == (
        "classification", None, 25, None, 0.01, 1, None, 1000)
    assert config.retention.as_dict() == {"events": 90 * DAY, "predictions": 90 * DAY, "labels": 90 * DAY,
                                          "dead_letters": 90 * DAY}
    lifecycle = config.lifecycle
    assert (lifecycle.auto_promote, lifecycle.promote_margin, lifecycle.promote_after, lifecycle.drift_detector,
            lifecycle.on_concept_drift, lifecycle.warm_start, lifecycle.warm_start_from, lifecycle.alert_cooldown,
            lifecycle.drift_warmup, lifecycle.max_challengers) == (
        True, 0.02, 1000, "drift.ADWIN()", "alert", 2000, "last", DAY, 1000, 4)


def test_features_default_to_the_event_fields_unless_listed():
    assert config_from_dict({"event": EVENT}).features.numeric == ("amount",)
    config = config_from_dict({"event": EVENT, "features": {"numeric": [], "categorical": ["user"]}})
    assert (config.features.numeric, config.features.categorical) == ((), ("user",))


def test_durations_keep_and_forever_drop_and_aliases_are_read_as_the_file_spells_them(tmp_path):
    config = config_from_dict(with_tables(
        event={"id": "eid", "time": "at", "type": "", "label_id": "ref", "label_by": "label_id",
               "allowed_lateness": "2m", "bounds": {"amount": ["-inf", 10]}},
        features={"ttl": {"user": "7d"}, "aggregate": [{"name": "n", "key": "user", "op": "count", "window": "1h"}],
                  "attributes": [{"name": "shop", "key": "card", "path": "shops.csv", "numeric": ["size"]}]},
        labels={"horizon": "2d", "default": "drop"},
        model={"publish_interval": "10m", "challenger": [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]},
        retention={"keep": "30d", "labels": "forever", "metrics": "10d"},
        checkpoint={"every": "1m"}), base_dir=tmp_path)
    event = config.event
    assert (event.id_field, event.time_field, event.type_field, event.label_id_field, event.label_time_field) == (
        "eid", "at", None, "ref", "at")
    assert (event.allowed_lateness, event.bounds) == (120.0, {"amount": (None, 10.0)})
    assert config.features.ttl == {"user": 7 * DAY} and config.features.aggregates[0].window == 3600.0
    attributes = config.features.attributes[0]
    assert (attributes.key_column, attributes.path) == ("card", str(tmp_path / "shops.csv"))
    assert (config.labels.horizon, config.labels.default, config.model.publish_interval) == (2 * DAY, None, 600.0)
    assert config.model.challengers[0].name == "tree" and config.checkpoint_seconds == 60.0
    assert config.retention == Retention(events=30 * DAY, predictions=30 * DAY, labels=None, dead_letters=30 * DAY,
                                         metrics=10 * DAY)


AGGREGATE = {"name": "a", "key": "user", "op": "sum", "field": "amount", "window": "1h"}
CHALLENGER = {"name": "t", "spec": "tree.HoeffdingTreeClassifier()"}
ATTRIBUTES = {"name": "d", "key": "user", "path": "d.csv", "numeric": ["rating"]}

REFUSED = [
    ({"nope": {}}, r'unknown key "nope" in \[top level\]; known keys: checkpoint, event, features'),
    ({"event": 3}, r'"event" must be a table \(\[event\]\)'),
    ({"event": {"idx": "i"}}, r'unknown key "idx" in \[event\]; known keys: allowed_lateness, bounds'),
    ({"retention": {"event": "1d"}}, r'unknown key "event" in \[retention\]; known keys: dead_letters, disk_reserve, events, keep'),
    ({"event": {"allowed_lateness": "soon"}}, r'\[event\] allowed_lateness is not a duration: duration "soon"'),
    ({"event": {"keys": "user"}}, r"\[event\] keys must be a list of names"),
    ({"event": {"keys": [1]}}, r"\[event\] keys must be a list of names"),
    ({"event": {"id": ""}}, r"\[event\] id must be a field name \(a non-empty string\), got ''"),
    ({"event": {"label_type": 1}}, r"\[event\] label_type: input should be a valid string, got 1"),
    ({"event": {"bounds": {"amount": [1]}}}, r'\[event\] bounds "amount" must be \[min, max\]'),
    ({"event": {"bounds": {"amount": [0, "x"]}}}, r"\[event\] bounds bound 'x' must be a number or \"inf\""),
    ({"event": {"label_by": "presence"}}, r'\[event\] label_by "presence" must be "type"'),
    (with_tables(features={"hash_buckets": 0}), r"\[features\] hash_buckets must be between 1 and 4096"),
    (with_tables(features={"buckets_per_window": 65}), r"\[features\] buckets_per_window must be between 1 and 64"),
    (with_tables(features={"time_of_day": "yes"}), r"\[features\] time_of_day must be true or false"),
    (with_tables(features={"numeric": ["nope"]}), r'\[features\] numeric "nope" is not in \[event\] numeric'),
    (with_tables(features={"ttl": {"user": "0s"}}), r'\[features.ttl\] user must be a positive duration'),
    (with_tables(features={"ttl": {"nobody": "1d"}}), r'\[features.ttl\] "nobody" is not in \[event\] keys'),
    (with_tables(features={"aggregate": {"name": "a"}}), r"\[features\] aggregate must be an array of tables"),
    (with_tables(features={"aggregate": [{**AGGREGATE, "op": "median"}]}),
     r"\[features.aggregate\[0\]\] op must be one of count, sum, .*, not 'median'"),
    (with_tables(features={"aggregate": [{**AGGREGATE, "field": None}]}), r'op "sum" needs a "field"'),
    (with_tables(features={"aggregate": [{k: v for k, v in AGGREGATE.items() if k != "window"}]}),
     r'\[features.aggregate\[0\]\] op "sum" needs a "window"'),
    (with_tables(features={"aggregate": [{k: v for k, v in AGGREGATE.items() if k != "name"}]}),
     r'\[features.aggregate\[0\]\] needs "name"'),
    (with_tables(features={"aggregate": [AGGREGATE, {**AGGREGATE, "window": "2h"}]}),
     'feature "a" is declared twice'),
    (with_tables(features={"aggregate": [{**AGGREGATE, "key": "amount"}]}), 'key "amount" is not in \\[event\\] keys'),
    (with_tables(features={"aggregate": [{**AGGREGATE, "x": 1}]}),
     r'unknown key "x" in \[features.aggregate\[0\]\]; known keys: field, key, name, op, window'),
    (with_tables(features={"expression": [{"name": "e"}]}), r'\[features.expression\[0\]\] needs "expr"'),
    (with_tables(features={"custom": [{"name": "c"}]}), r'\[features.custom\[0\]\] needs "function"'),
    (with_tables(features={"model": [{"name": "m"}]}), r'\[features.model\[0\]\] needs "path"'),
    (with_tables(features={"attributes": [{**ATTRIBUTES, "name": "1x"}]}),
     r'\[features.attributes\[0\]\] name must be a plain identifier such as "driver", not "1x"'),
    (with_tables(features={"attributes": [{**ATTRIBUTES, "numeric": []}]}), r"declares no columns"),
    (with_tables(features={"attributes": [{k: v for k, v in ATTRIBUTES.items() if k != "path"}]}),
     r"\[features.attributes\[0\]\] path is required"),
    (with_tables(features={"attributes": [ATTRIBUTES, ATTRIBUTES]}), r'feature "d_rating" is declared twice'),
    (with_tables(labels={"default": "zero"}), r'\[labels\] default must be a number or "drop"'),
    (with_tables(model={"publish_every": 0}), r"\[model\] publish_every must be at least 1"),
    (with_tables(model={"first_publish": 0}), r"\[model\] first_publish must be at least 1"),
    (with_tables(model={"metric_window": "big"}), r"\[model\] metric_window: input should be a valid integer"),
    (with_tables(model={"task": "ranking"}), r'\[model\] task "ranking" must be one of classification, regression'),
    (with_tables(model={"gate_metric": "mae"}), r'\[model\] gate_metric "mae" is not a classification metric'),
    (with_tables(lifecycle={"promote_metric": "rmse"}),
     r'\[lifecycle\] promote_metric "rmse" is not a classification metric'),
    (with_tables(model={"challenger": [{"name": "main", "spec": CHALLENGER["spec"]}]}),
     r'\[model.challenger\[0\]\] name "main" is taken \(the champion is "main"'),
    (with_tables(model={"challenger": [CHALLENGER, CHALLENGER]}), r'\[model.challenger\[1\]\] name "t" is taken'),
    (with_tables(model={"challenger": [{"name": "t"}]}), r'\[model.challenger\[0\]\] needs "spec"'),
    (with_tables(model={"challenger": [{**CHALLENGER, "spec": "tree.NoSuchTree()"}]}),
     r'\[\[model.challenger\]\] "t": '),
    (with_tables(lifecycle={"auto_promote": 1}), r"\[lifecycle\] auto_promote must be true or false"),
    (with_tables(lifecycle={"promote_after": 0}), r"\[lifecycle\] promote_after must be a positive whole number"),
    (with_tables(lifecycle={"warm_start": -1}), r"\[lifecycle\] warm_start must be a positive whole number"),
    (with_tables(lifecycle={"rollback_margin": -1}), r"\[lifecycle\] rollback_margin must be a number >= 0"),
    (with_tables(lifecycle={"on_concept_drift": "panic"}),
     r"\[lifecycle\] on_concept_drift must be one of alert, challenger, not 'panic'"),
    (with_tables(lifecycle={"drift_detector": "linear_model.LogisticRegression()"}),
     r'\[lifecycle\] drift_detector must be a River drift detector'),
    (with_tables(lifecycle={"drift_features": "amount"}), r"\[lifecycle\] drift_features must be a list of names"),
    (with_tables(lifecycle={"challenger_spec": "tree.NoSuchTree()"}), r"\[lifecycle\] challenger_spec: "),
    (with_tables(retention={"events": "0s"}), r'\[retention\] events must be a positive duration such as "30d"'),
    (with_tables(retention={"keep": "soon"}), r"\[retention\] events is not a duration"),
    (with_tables(source={"speed": -1}), r"\[source\] speed must be a number >= 0"),
    (with_tables(checkpoint={"every": "x"}), r"\[checkpoint\] every is not a duration"),
    (with_tables(serve={"db": 3}), r"\[serve\] db: input should be a valid string, got 3"),
    (with_tables(event={**EVENT, "allowed_lateness": "30d"}, features={"aggregate": [AGGREGATE]}),
     r'"a" \(key "user"'),
]


@pytest.mark.parametrize(("data", "message"), REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_a_wrong_file_is_refused_naming_the_table_and_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


TABLES = list(document_tables(ConfigFile))


@pytest.mark.parametrize(("name", "cls", "array"), TABLES, ids=[name for name, _, _ in TABLES])
def test_every_table_refuses_a_key_its_dataclass_lacks_and_lists_the_known_ones(name, cls, array):
    data: dict = {"bogus": 1}
    arrays = {table: is_array for table, _, is_array in TABLES}
    parts = name.split(".")
    for depth in range(len(parts), 0, -1):
        data = {parts[depth - 1]: [data] if arrays[".".join(parts[:depth])] else data}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    shown = "".join(f".{part}[0]" if arrays[".".join(parts[:i + 1])] else f".{part}" for i, part in enumerate(parts))
    known = ", ".join(sorted(table_keys(cls) + (("keep",) if cls is Retention else ())))
    expected = f'unknown key "bogus" in [{shown[1:]}]; known keys: {known}'
    assert re.fullmatch(re.escape(expected) + r"( \(and \d+ more\))?", str(caught.value)), str(caught.value)
    assert array == (name in ("features.aggregate", "features.expression", "features.attributes", "features.custom",
                              "features.model", "model.challenger"))


@pytest.mark.parametrize("path", [p for p in document_keys(ConfigFile) if p.count(".") == 1],
                         ids=lambda value: str(value))
def test_a_value_of_the_wrong_type_names_its_key(path):
    table, key = path.split(".")
    with pytest.raises(ConfigError) as caught:
        config_from_dict({table: {key: [[1]]}})
    message = str(caught.value)
    assert key in message and table in message, message


def test_the_bundled_sample_loads_to_its_documented_values_and_round_trips():
    config = load_config(SAMPLE)
    assert (config.speed, config.model.publish_every, config.features.hash_buckets, config.labels.horizon) == (
        12000.0, 50, 64, 2 * DAY)
    assert config.retention.events == 90 * DAY and config.features.attributes[0].path.endswith("drivers.csv")
    written = config_to_dict(config)
    again = config_from_dict(orjson.loads(orjson.dumps(written)))
    assert dataclasses.replace(again, path=config.path) == config
    assert config_to_dict(again) == written  # the fields out of equality (paths, max_future_skew) too


def test_what_appliance_init_writes_loads_and_round_trips(tmp_path):
    rng = random.Random(7)
    users, shops = [f"u{i}" for i in range(60)], [f"s{i}" for i in range(25)]
    ts = 1_767_225_600.0
    lines = []
    for i in range(3000):
        ts += rng.expovariate(1 / 30)
        lines.append(orjson.dumps({"event_id": f"e{i}", "ts": ts, "user": rng.choice(users), "shop": rng.choice(shops),
                                   "amount": round(rng.lognormvariate(3, 1), 2),
                                   "channel": rng.choice(["web", "app", "phone"])}))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    write_starter(str(events), str(tmp_path / "appliance.toml"))
    config = load_config(tmp_path / "appliance.toml")
    assert config.source == str(events) and config.features.aggregates and "user" in config.event.keys
    written = config_to_dict(config)
    again = config_from_dict(orjson.loads(orjson.dumps(written)))
    assert dataclasses.replace(again, path=config.path) == config and config_to_dict(again) == written
