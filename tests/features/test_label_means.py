"""Label means per entity key (`[features] label_means`): only labels learned before an event was
scored count, for the key values it had then; they survive a checkpoint; the export gives what was
logged; `appliance init` writes the key."""

from __future__ import annotations

import json
import math
import random
import sqlite3

import orjson
import pytest
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.config.file import config_from_dict, load_config
from appliance.engine.core import Engine
from appliance.features.label_means import PRIOR_LABELS
from appliance.storage.rows import decode_vector, read_names
from tests.conftest import items, logged_features, run

T0 = 1_767_225_600.0
USERS = [f"u{i}" for i in range(12)]
FILMS = [f"m{i}" for i in range(30)]


def stream(n: int = 700, seed: int = 11, task: str = "regression") -> list[dict]:
    """Ratings: each user and film has its own level; some labels inline, most later, some never; a
    few events lack a film. Label events arrive out of the events' order."""
    rng = random.Random(seed)
    level = {name: rng.gauss(0, 1) for name in USERS + FILMS}
    merged = []
    t = T0
    for i in range(n):
        t += rng.uniform(1, 60)
        user, film = rng.choice(USERS), rng.choice(FILMS)
        score = level[user] + level[film] + rng.gauss(0, 0.5)
        y = int(score > 0) if task == "classification" else round(score + 3, 3)
        event = {"type": "rating", "event_id": f"e{i}", "ts": t, "user": user, "amount": rng.uniform(0, 1)}
        if i % 13:
            event["film"] = film
        if i % 7 == 0:
            merged.append((t, 0, {**event, "label": y}))
        else:
            merged.append((t, 0, event))
            if i % 11:
                merged.append((t + rng.uniform(5, 3000), 1, {"type": "label", "event_id": f"e{i}", "label": y}))
    merged.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in merged]


def config(task: str = "regression", means: bool = True):
    return config_from_dict({
        "event": {"keys": ["user", "film"], "numeric": ["amount"], "optional": ["film"]},
        "labels": {"horizon": "1d", "default": "drop"},
        "model": {"task": task},
        "features": {"label_means": means},
    })


def logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def brute_force(records: list[dict], task: str) -> dict[str, dict[str, float]]:
    """For each event, each key's smoothed mean from the labels learned before it was scored."""
    learned: list[tuple[dict, float]] = []  # (the event, its label) in the order labels were learned
    scored: dict[str, dict] = {}
    out = {}
    for record in records:
        if record["type"] == "label":
            learned.append((scored[record["event_id"]], float(record["label"])))
            continue
        scored[record["event_id"]] = record
        x = {}
        if learned:
            prior = sum(y for _, y in learned) / len(learned)
            for key in ("user", "film"):
                mine = [y for event, y in learned if key in record and event.get(key) == record[key]]
                if mine:
                    smoothed = (sum(mine) + PRIOR_LABELS * prior) / (len(mine) + PRIOR_LABELS)
                    x[f"{key}_label_mean"] = (smoothed - prior if task == "regression"
                                              else logit(smoothed) - logit(prior))
        out[record["event_id"]] = x
        if "label" in record:  # inline: learned right after its own prediction
            learned.append((record, float(record["label"])))
    return out


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_label_means_use_only_labels_learned_before_the_event_was_scored(task, seed):
    cfg, records = config(task), stream(seed=seed, task=task)
    rows = run(Engine(cfg), items(cfg, records))
    logged = {row["event_id"]: decode_vector(row["features"]) for row in rows["predictions"]}
    expected = brute_force(records, task)
    assert len(logged) == len(expected) == 700
    for event_id, want in expected.items():
        got = {name: value for name, value in logged[event_id].items() if name.endswith("_label_mean")}
        assert got.keys() == want.keys(), event_id
        for name, value in want.items():
            assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-9), (event_id, name)
    assert sum("film_label_mean" in x for x in expected.values()) > 500  # the check saw the feature


def test_label_means_are_off_unless_configured_and_named_among_the_features():
    cfg = config(means=False)
    rows = run(Engine(cfg), items(cfg, stream(200)))
    assert rows["predictions"]
    assert not any("_label_mean" in name for row in rows["predictions"] for name in decode_vector(row["features"]))
    assert Engine(config()).space.names[-2:] == ["user_label_mean", "film_label_mean"]
    assert "label_means" not in repr(cfg.features)  # a store from before the key keeps its fingerprint
    from appliance.runtime.store_files import fingerprint

    assert fingerprint(cfg) != fingerprint(config())


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_label_means_survive_a_checkpoint(task):
    """Stop halfway (labels still pending carry their key values), resume: the same features after."""
    cfg, records = config(task), stream(task=task)
    half = len(records) // 2
    whole = Engine(cfg)
    whole_rows = run(whole, items(cfg, records))
    first = Engine(cfg)
    run(first, items(cfg, records[:half]))
    saved = first.checkpoint()
    pending = [(event_id, p.ts, p.packed) for event_id, p in first.join.pending.items()]
    assert pending  # labels of events scored before the stop are learned after it
    resumed = Engine(cfg)
    resumed.restore(saved["engine"], saved["entities"], pending)
    rows = run(resumed, items(cfg, records[half:]))
    after = {row["event_id"]: row["features"] for row in rows["predictions"]}
    straight = {row["event_id"]: row["features"] for row in whole_rows["predictions"] if row["event_id"] in after}
    assert after and after == straight
    assert resumed.space.label_means.by_key == whole.space.label_means.by_key
    assert resumed.space.label_means.n == whole.space.label_means.n


def test_the_export_gives_the_label_means_logged_at_scoring(tmp_path, monkeypatch):
    """A real replay, then `export training-set`: each row equals the vector logged at prediction time."""
    monkeypatch.chdir(tmp_path)
    records = stream(400)
    with open("events.jsonl", "wb") as out:
        for record in records:
            out.write(orjson.dumps(record) + b"\n")
    (tmp_path / "appliance.toml").write_text(
        '[source]\nspec = "events.jsonl"\nspeed = 0\n'
        '[event]\nkeys = ["user", "film"]\nnumeric = ["amount"]\noptional = ["film"]\n'
        '[labels]\nhorizon = "1d"\ndefault = "drop"\n[model]\ntask = "regression"\n'
        '[features]\nlabel_means = true\n')
    runner = CliRunner()
    result = runner.invoke(main, ["replay", "--config", "appliance.toml", "--json"])
    assert result.exit_code == 0, result.output
    learned = json.loads(result.output)["model"]["examples_learned"]
    result = runner.invoke(main, ["export", "training-set", "--out", "train.jsonl", "--config", "appliance.toml"])
    assert result.exit_code == 0, result.output
    exported = [orjson.loads(line) for line in open("train.jsonl")]
    assert len(exported) == learned
    conn = sqlite3.connect("appliance.db")
    names = read_names(conn)
    logged = logged_features(conn)
    for row in exported:
        event_id = row.pop("event_id")
        row.pop("ts"), row.pop("label")
        assert row == decode_vector(logged[event_id], names)
    assert sum("user_label_mean" in row for row in exported) > len(exported) / 2


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_init_turns_label_means_on_for_its_keys_in_regression(tmp_path, task):
    from appliance.init.starter import write_starter

    labels = {r["event_id"]: r["label"] for r in stream(600, task=task) if "label" in r}
    rows = [{**r, "label": labels[r["event_id"]]} for r in stream(600, task=task)
            if r["type"] == "rating" and r["event_id"] in labels]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in rows))
    text = write_starter(str(path), str(tmp_path / "appliance.toml"))
    loaded = load_config(tmp_path / "appliance.toml")
    assert loaded.model.task == task and "user" in loaded.event.keys
    if task == "classification":  # not yet measured against the classification defaults: off
        assert not loaded.features.label_means and "label_means = false" in text
        assert "user_label_mean" not in Engine(loaded).space.names
        return
    assert loaded.features.label_means and "label_means = true" in text
    assert "user_label_mean" in Engine(loaded).space.names
