"""Static entity attributes from CSV and custom Python features: served, learned and exported alike."""

from __future__ import annotations

import csv
import json

import orjson
import pytest
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.config.file import config_from_dict, load_config
from appliance.errors import ConfigError
from appliance.offline import export
from appliance.offline.export import training_set
from appliance.runtime.app import Appliance, RunOptions
from appliance.serving.client import Client
from appliance.storage.rows import decode_vector, read_names
from appliance.storage.store import open_db
from tests.conftest import SMALL_CONFIG, logged_features, make_stream, serving

CUSTOM_MODULE = '''
import math

def log_amount(event, features):
    if event["amount"] > 190:
        raise ValueError("too big for this test")
    return math.log1p(event["amount"])

def not_a_number(event, features):
    return "high" if event["amount"] > 100 else None
'''


def write_cards(path, limits, tiers=None):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["card_number", "limit", "tier"])
        for i, limit in enumerate(limits):
            writer.writerow([f"c{i}", "" if limit is None else limit, (tiers or {}).get(i, "gold")])


def write_events(path, stream):
    path.write_bytes(b"".join(orjson.dumps(raw) + b"\n" for raw in stream))


def setup_dir(tmp_path, stream):
    (tmp_path / "myfeatures.py").write_text(CUSTOM_MODULE)
    write_cards(tmp_path / "cards.csv", [100 * (i + 1) for i in range(10)])  # c10..c14 are unknown
    write_events(tmp_path / "events.jsonl", stream)
    features = dict(SMALL_CONFIG["features"])
    features["attributes"] = [{"name": "card", "key": "card", "column": "card_number", "path": "cards.csv",
                               "numeric": ["limit"], "categorical": ["tier"]}]
    features["custom"] = [{"name": "log_amount", "function": "myfeatures:log_amount"},
                          {"name": "odd", "function": "myfeatures:not_a_number"}]
    features["expression"] = [*features["expression"], {"name": "amount_vs_limit", "expr": "amount / card_limit"}]
    text = _toml(dict(SMALL_CONFIG, features=features, source={"spec": "events.jsonl"},
                      serve={"db": "a.db", "socket": "a.sock"}))
    (tmp_path / "appliance.toml").write_text(text)
    return load_config(tmp_path / "appliance.toml")


def _toml(data: dict) -> str:
    """A tiny TOML writer for the test configs (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, (dict, list)) or
                   (isinstance(v, list) and not (v and isinstance(v[0], dict)))}
        for key, value in scalars.items():
            lines.append(f"{key} = {json.dumps(value)}")
        for key, value in table.items():
            if isinstance(value, dict):
                lines.append(f"[{prefix}{key}]")
                emit(f"{prefix}{key}.", value)
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                for item in value:
                    lines.append(f"[[{prefix}{key}]]")
                    emit(f"{prefix}{key}.", item)

    emit("", data)
    return "\n".join(lines) + "\n"


def logged(db):
    names = read_names(db.conn)
    return {event_id: decode_vector(features, names) for event_id, features in logged_features(db.conn).items()}


def test_attributes_and_custom_features_are_served_learned_and_exported_alike(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stream = make_stream(400)
    config = setup_dir(tmp_path, stream)
    appliance = Appliance(config, RunOptions(serve=False))
    appliance.run()
    db = open_db(config.db)
    vectors = logged(db)
    payments = {e["event_id"]: e for e in stream if e["type"] == "payment"}
    for event_id, x in vectors.items():
        event = payments[event_id]
        number = int(event["card"][1:])
        if number < 10:
            assert x["card_limit"] == 100.0 * (number + 1)
            assert x["amount_vs_limit"] == pytest.approx(event["amount"] / x["card_limit"])
            assert sum(1 for name in x if name.startswith("card_tier#")) == 1
        else:
            assert "card_limit" not in x and "amount_vs_limit" not in x
        assert ("log_amount" in x) == (event["amount"] <= 190)
        assert "odd" not in x
    stats = appliance.engine.stats()
    custom = stats["custom_features"]
    assert custom["log_amount"]["errors"] == sum(1 for e in payments.values() if e["amount"] > 190) > 0
    assert custom["log_amount"]["last_error"] == "ValueError: too big for this test"
    assert custom["odd"]["errors"] == sum(1 for e in payments.values() if e["amount"] > 100)
    assert stats["attributes"] == {"card": {"version": 1, "rows": 10}}
    exported = {row["event_id"]: row for row in training_set(config.db, config)}
    assert exported
    for event_id, row in exported.items():
        assert {k: v for k, v in row.items() if k not in ("event_id", "ts", "label")} == vectors[event_id]


def test_a_refresh_applies_between_events_and_export_follows_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stream = make_stream(600)
    first, second = stream[:300], stream[300:]
    config = setup_dir(tmp_path, first)
    Appliance(config, RunOptions(serve=False)).run()
    write_cards(tmp_path / "cards.csv", [7.0] * 12)  # new limits, and c10, c11 become known
    result = CliRunner().invoke(main, ["attributes", "refresh"])
    assert result.exit_code == 0, result.output
    assert "card: version 2" in result.output and "apply when it next starts" in result.output
    unchanged = CliRunner().invoke(main, ["attributes", "refresh"])
    assert "card: version 2 (unchanged)" in unchanged.output
    write_events(tmp_path / "events.jsonl", stream)  # the file grows; the replay resumes at its offset
    appliance = Appliance(config, RunOptions(serve=False))
    assert appliance.resumed
    appliance.run()
    db = open_db(config.db)
    vectors = logged(db)
    for event in second:
        if event["type"] == "payment" and int(event["card"][1:]) < 12:
            assert vectors[event["event_id"]]["card_limit"] == 7.0
    for event in first:
        if event["type"] == "payment" and int(event["card"][1:]) < 10:
            assert vectors[event["event_id"]]["card_limit"] != 7.0
    switches = list(db.query("SELECT seq, name, version FROM attribute_switches ORDER BY seq"))
    n_first = sum(1 for e in first if e["type"] == "payment")
    assert switches == [{"seq": 0, "name": "card", "version": 1}, {"seq": n_first, "name": "card", "version": 2}]
    for row in training_set(config.db, config):
        assert {k: v for k, v in row.items() if k not in ("event_id", "ts", "label")} == vectors[row["event_id"]]
    # entity state in 2 worker processes, 50 events a batch: the switch lands inside the batches in flight
    monkeypatch.setattr(export, "BATCH", 50)
    partitioned = [list(row.items()) for row in training_set(config.db, config, workers=2)]
    assert partitioned == [list(row.items()) for row in training_set(config.db, config)]
    shown = CliRunner().invoke(main, ["attributes", "show"])
    assert "card v1: 10 rows" in shown.output and f"from event #{n_first + 1}" in shown.output


def test_a_running_appliance_switches_on_the_refresh_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = setup_dir(tmp_path, [])
    with serving(config) as appliance:
        event = {"event_id": "x1", "ts": 1_767_225_600.0, "user": "u1", "card": "c3", "amount": 20.0,
                 "city": "faro"}
        with Client(config.socket) as client:
            before = client.request("predict", event=event, ingest=False, explain=True)
            assert before["features"]["card_limit"] == 400.0
            write_cards(tmp_path / "cards.csv", [5.0] * 10)
            result = CliRunner().invoke(main, ["attributes", "refresh", "--socket", config.socket])
            assert "switches to the new versions" in result.output, result.output
            # the switch happens in the engine, in order with the stream: wait for it to be applied
            for _ in range(2000):
                if client.request("stats")["attributes"]["card"]["version"] == 2:
                    break
                appliance.stop_event.wait(0.005)
            after = client.request("predict", event=dict(event, event_id="x2"), ingest=False, explain=True)
            assert after["features"]["card_limit"] == 5.0


def test_bad_attribute_files_and_functions_are_clear_errors(tmp_path):
    (tmp_path / "cards.csv").write_text("card_number,limit\nc1,abc\n")
    features = dict(SMALL_CONFIG["features"], attributes=[
        {"name": "card", "key": "card", "column": "card_number", "path": "cards.csv", "numeric": ["limit"]}])
    config = config_from_dict(dict(SMALL_CONFIG, features=features, serve={"db": str(tmp_path / "a.db")}),
                              base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"line 2: limit = 'abc' is not a number"):
        Appliance(config, RunOptions(serve=False, read_source=False))
    (tmp_path / "cards.csv").write_text("card,limit\nc1,3\n")
    with pytest.raises(ConfigError, match='has no column "card_number"'):
        Appliance(config, RunOptions(serve=False, read_source=False))
    features = dict(SMALL_CONFIG["features"], custom=[{"name": "f", "function": "no_such_module_here:f"}])
    config = config_from_dict(dict(SMALL_CONFIG, features=features, serve={"db": str(tmp_path / "b.db")}))
    with pytest.raises(ConfigError, match='custom feature function "no_such_module_here:f": cannot import'):
        Appliance(config, RunOptions(serve=False, read_source=False))
    features = dict(SMALL_CONFIG["features"], attributes=[
        {"name": "card", "key": "nope", "path": "cards.csv", "numeric": ["limit"]}])
    with pytest.raises(ConfigError, match='key "nope" is not an \\[event\\] field'):
        config_from_dict(dict(SMALL_CONFIG, features=features))
