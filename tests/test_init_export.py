"""`appliance init` on a user's CSV, a real replay with the config it writes, then the export."""

from __future__ import annotations

import csv
import json

import orjson
import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.starter import read_sample, starter_config
from appliance.timeutil import format_timestamp

from .conftest import make_stream


def write_csv(path, n=1500):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["type", "event_id", "ts", "user_id", "card_id", "amount",
                                                    "city", "label"])
        writer.writeheader()
        for raw in make_stream(n):
            row = dict(raw, ts=format_timestamp(raw["ts"]))
            if "user" in row:
                row["user_id"], row["card_id"] = row.pop("user"), row.pop("card")
            writer.writerow(row)


def test_init_reads_a_csv_and_writes_a_config_that_replays_and_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv("events.csv")
    runner = CliRunner()
    result = runner.invoke(main, ["init", "events.csv"])
    assert result.exit_code == 0, result.output
    config = load_config("appliance.toml")
    assert config.event.id_field == "event_id" and config.event.time_field == "ts"
    assert config.event.keys == ("user_id", "card_id")
    assert config.event.numeric == ("amount",) and config.event.categorical == ("city",)
    assert config.model.task == "classification"
    assert len(config.features.aggregates) >= 10

    result = runner.invoke(main, ["replay", "--config", "appliance.toml", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["counts"]["events"] == 1500
    assert stats["model"]["examples_learned"] > 0

    result = runner.invoke(main, ["export", "training-set", "--out", "train.jsonl", "--config", "appliance.toml"])
    assert result.exit_code == 0, result.output
    exported = [orjson.loads(line) for line in open("train.jsonl")]
    assert len(exported) == stats["model"]["examples_learned"]
    import sqlite3

    conn = sqlite3.connect("appliance.db")
    logged = dict(conn.execute("SELECT event_id, features FROM predictions").fetchall())
    for row in exported:
        event_id = row.pop("event_id")
        row.pop("ts"), row.pop("label")
        assert row == orjson.loads(logged[event_id])

    result = runner.invoke(main, ["export", "training-set", "--out", "train.csv", "--from", "2026-01-01T06:00:00Z",
                                  "--to", "2026-01-01T12:00:00Z", "--config", "appliance.toml"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open("train.csv")))
    assert rows and all(1767247200 <= float(r["ts"]) < 1767268800 for r in rows)


def test_init_refuses_to_overwrite_and_explains_missing_fields(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv("events.csv", n=50)
    runner = CliRunner()
    assert runner.invoke(main, ["init", "events.csv"]).exit_code == 0
    again = runner.invoke(main, ["init", "events.csv"])
    assert again.exit_code == 1 and "already exists" in again.output
    (tmp_path / "notime.jsonl").write_text('{"event_id": "a", "user_id": "u", "amount": 1}\n')
    with pytest.raises(ConfigError, match="no timestamp field"):
        starter_config("notime.jsonl", read_sample("notime.jsonl"))


def test_export_needs_a_known_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv("events.csv", n=200)
    runner = CliRunner()
    runner.invoke(main, ["init", "events.csv"])
    runner.invoke(main, ["replay", "--config", "appliance.toml", "--json"])
    result = runner.invoke(main, ["export", "training-set", "--out", "train.xlsx", "--config", "appliance.toml"])
    assert result.exit_code == 1 and "cannot tell the format" in result.output
