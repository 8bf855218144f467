"""`appliance init` on a user's CSV, a real replay with the config it writes, then the export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.config.file import load_config
from appliance.errors import ConfigError
from appliance.init.starter import read_sample, starter_config
from tests.conftest import logged_features, write_csv


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
    assert config.features.label_rates  # moved by labels: the export below must give the logged values

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

    from appliance.storage.rows import decode_vector, read_names

    conn = sqlite3.connect("appliance.db")
    names = read_names(conn)
    logged = logged_features(conn)
    for row in exported:
        event_id = row.pop("event_id")
        row.pop("ts"), row.pop("label")
        assert row == decode_vector(logged[event_id], names)
    assert sum("city_label_rate" in row for row in exported) > len(exported) / 2

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


def test_parquet_and_jsonl_exports_hold_exactly_the_csv_values(tmp_path, monkeypatch):
    """Same store, three formats: the Parquet file read back (and the sparse JSONL), written through the
    CSV writer, is the CSV export byte for byte; a suffix that contradicts --format is refused."""
    pq = pytest.importorskip("pyarrow.parquet")
    from appliance.offline.export import write_training_set

    monkeypatch.setattr("appliance.offline.export.PARQUET_ROWS", 100)  # several row groups
    monkeypatch.chdir(tmp_path)
    write_csv("events.csv", n=1500)
    runner = CliRunner()
    assert runner.invoke(main, ["init", "events.csv"]).exit_code == 0
    toml = Path("appliance.toml")
    assert "hash_buckets" in toml.read_text()
    toml.write_text(toml.read_text().replace("hash_buckets = ", "hash_buckets = 512 # "))
    assert runner.invoke(main, ["replay", "--config", "appliance.toml", "--json"]).exit_code == 0
    for out in ("train.csv", "train.parquet", "train.jsonl"):
        result = runner.invoke(main, ["export", "training-set", "--out", out, "--config", "appliance.toml"])
        assert result.exit_code == 0, result.output
    config = load_config("appliance.toml")
    from appliance.features.space import FeatureSpace

    names = FeatureSpace.for_config(config).names
    assert len(names) > 512
    table = pq.read_table("train.parquet")
    assert table.column_names == ["event_id", "ts", "label", *names]
    assert pq.ParquetFile("train.parquet").num_row_groups == -(-table.num_rows // 100) > 1
    from_parquet = [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]
    from_jsonl = [orjson.loads(line) for line in Path("train.jsonl").read_text().splitlines()]
    for rows, name in ((from_parquet, "parquet.csv"), (from_jsonl, "jsonl.csv")):
        assert write_training_set(iter(rows), name, names) == table.num_rows
        assert Path(name).read_bytes() == Path("train.csv").read_bytes(), name
    assert any(row["label"] == 1 for row in from_parquet)
    assert [type(row["label"]) for row in from_parquet] == [type(row["label"]) for row in from_jsonl]

    result = runner.invoke(main, ["export", "training-set", "--out", "train.csv", "--format", "parquet",
                                  "--config", "appliance.toml"])
    assert result.exit_code == 1 and "names csv but --format is parquet" in result.output
    result = runner.invoke(main, ["export", "training-set", "--out", "train.data", "--format", "parquet",
                                  "--config", "appliance.toml"])
    assert result.exit_code == 0 and pq.read_table("train.data").equals(table)
