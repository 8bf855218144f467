"""Label rates as features (`[features] label_rates`): only labels learned before an event was scored
count, the served path sees them, and they survive a checkpoint."""

from __future__ import annotations

import math
import pickle
import random

import orjson
import pytest

from appliance.config.file import config_from_dict
from appliance.engine.core import Engine
from appliance.features.label_rates import PRIOR_LABELS, RECENT_WEIGHT
from appliance.storage.rows import decode_vector
from tests.conftest import items, run

T0 = 1_767_225_600.0
CITIES = ("lisbon", "porto", "faro", "braga")
RISK = {"lisbon": 0.1, "porto": 0.5, "faro": 0.8, "braga": 0.3}


MEAN_DELAY = {"lisbon": 2.0, "porto": 9.0, "faro": 20.0, "braga": 5.0}


def stream(n: int = 600, seed: int = 5, task: str = "classification") -> list[dict]:
    """Rides in four cities with very different late-payment rates (or, for regression, mean minutes
    late); some labels inline, most later."""
    rng = random.Random(seed)
    merged = []
    t = T0
    for i in range(n):
        t += rng.uniform(1, 60)
        city = rng.choice(CITIES)
        y = int(rng.random() < RISK[city]) if task == "classification" else round(rng.expovariate(1 / MEAN_DELAY[city]), 3)
        event = {"type": "ride", "event_id": f"e{i}", "ts": t, "city": city, "amount": rng.uniform(5, 50)}
        if i % 7 == 0:
            merged.append((t, 0, {**event, "label": y}))
        else:
            merged.append((t, 0, event))
            merged.append((t + rng.uniform(5, 900), 1, {"type": "label", "event_id": f"e{i}", "label": y}))
    merged.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in merged]


def config(rates: bool = True, task: str = "classification"):
    return config_from_dict({
        "event": {"numeric": ["amount"], "categorical": ["city"]},
        "labels": {"horizon": "1d", "default": "drop"},
        "model": {"task": task},
        "features": {"hash_buckets": 64, "label_rates": rates},
    })


def logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def expected_rates(records: list[dict], task: str = "classification") -> dict[str, dict[str, float]]:
    """By brute force: for each event, the rates (regression: means) from the labels that arrived before
    it was scored."""
    versus = (lambda value, prior: logit(value) - logit(prior)) if task == "classification" else (
        lambda value, prior: value - prior)
    learned: list[tuple[str, int]] = []  # (city, y) in the order labels arrived
    city_of: dict[str, str] = {}
    out = {}
    for record in records:
        if record["type"] == "label":
            learned.append((city_of[record["event_id"]], record["label"]))
            continue
        city_of[record["event_id"]] = record["city"]
        x = {}
        if learned:
            prior = sum(y for _, y in learned) / len(learned)
            mine = [y for city, y in learned if city == record["city"]]
            if mine:
                x["city_label_rate"] = versus((sum(mine) + PRIOR_LABELS * prior) / (len(mine) + PRIOR_LABELS), prior)
            weights = [(1 - RECENT_WEIGHT) ** age for age in range(len(learned))]
            recent = sum(w * y for w, (_, y) in zip(weights, reversed(learned))) / sum(weights)
            x["label_rate_recent"] = versus(recent, prior)
        out[record["event_id"]] = x
        if "label" in record:  # inline: learned right after its own prediction
            learned.append((record["city"], record["label"]))
    return out


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_label_rates_count_only_labels_learned_before_the_event_was_scored(task):
    cfg, records = config(task=task), stream(task=task)
    engine = Engine(cfg)
    rows = run(engine, items(cfg, records))
    expected = expected_rates(records, task)
    logged = {row["event_id"]: decode_vector(row["features"]) for row in rows["predictions"]}
    assert len(logged) == len(expected) == 600
    for event_id, want in expected.items():
        got = {name: value for name, value in logged[event_id].items() if "label_rate" in name}
        assert got.keys() == want.keys(), event_id
        for name, value in want.items():
            assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-9), (event_id, name)
    # the rates say what the cities are: the riskiest city's rate is above the safest one's at the end
    last = {record["city"]: logged[record["event_id"]]["city_label_rate"]
            for record in records if record["type"] == "ride" and "city_label_rate" in logged[record["event_id"]]}
    assert last["faro"] > 0 > last["lisbon"]


def test_label_rates_are_off_unless_configured_and_named_among_the_features():
    cfg = config(rates=False)
    rows = run(Engine(cfg), items(cfg, stream(100)))
    assert not any("label_rate" in name for row in rows["predictions"] for name in decode_vector(row["features"]))
    assert any(decode_vector(row["features"]) for row in rows["predictions"])
    assert Engine(config()).space.names[-2:] == ["city_label_rate", "label_rate_recent"]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_label_rates_survive_a_checkpoint(task):
    cfg, records = config(task=task), stream(task=task)
    half = len(records) // 2
    whole = Engine(cfg)
    whole_rows = run(whole, items(cfg, records))
    first = Engine(cfg)
    run(first, items(cfg, records[:half]))
    saved = first.checkpoint()
    resumed = Engine(cfg)
    resumed.restore(saved["engine"], saved["entities"], [(k, ts, blob) for k, ts, blob in _pending(first)])
    rows = run(resumed, items(cfg, records[half:]))
    after = {row["event_id"]: row["features"] for row in rows["predictions"]}
    straight = {row["event_id"]: row["features"] for row in whole_rows["predictions"] if row["event_id"] in after}
    assert after and after == straight
    assert pickle.loads(pickle.dumps(resumed.space.label_rates)).by_name == whole.space.label_rates.by_name


def _pending(engine: Engine):
    return [(event_id, pending.ts, pending.packed) for event_id, pending in engine.join.pending.items()]


def test_label_rates_change_the_store_fingerprint_only_when_on():
    from appliance.runtime.store_files import fingerprint

    off, on = config(rates=False), config()
    assert "label_rates" not in repr(off.features)  # a store from before the key keeps its fingerprint
    assert fingerprint(off) != fingerprint(on)


def test_label_means_for_regression_on_a_hand_computed_stream():
    """Regression: a value's mean label shrunk toward the overall mean as if that were 20 labels, minus
    the overall mean; the recent mean (each older label weighs 0.99 of the next) minus the overall mean."""
    cfg = config(task="regression")
    records = [
        {"type": "ride", "event_id": "e0", "ts": T0, "city": "lisbon", "amount": 10.0, "label": 10.0},
        {"type": "ride", "event_id": "e1", "ts": T0 + 1, "city": "porto", "amount": 10.0, "label": 4.0},
        {"type": "ride", "event_id": "e2", "ts": T0 + 2, "city": "lisbon", "amount": 10.0},
        {"type": "ride", "event_id": "e3", "ts": T0 + 3, "city": "faro", "amount": 10.0},
        {"type": "label", "event_id": "e2", "label": 1.0},  # after e2 was scored: not in e2's features
        {"type": "ride", "event_id": "e4", "ts": T0 + 4, "city": "lisbon", "amount": 10.0},
    ]
    engine = Engine(cfg)
    rows = run(engine, items(cfg, records))
    logged = {row["event_id"]: decode_vector(row["features"]) for row in rows["predictions"]}
    onehot = {event_id: next(name for name in x if name.startswith("city#")) for event_id, x in logged.items()}
    assert len({onehot["e0"], onehot["e1"], onehot["e3"]}) == 3  # three buckets: no value shares one
    rate = {event_id: {name: value for name, value in x.items() if "label_rate" in name}
            for event_id, x in logged.items()}
    # e0: no label yet. e1: lisbon's 10 is in (inline, after e0 was scored); porto has none.
    assert rate["e0"] == {}
    assert rate["e1"] == {"label_rate_recent": 0.0}
    # e2, e3: labels 10 (lisbon), 4 (porto); mean 7. Lisbon (10 + 20 * 7) / 21 - 7 = 1/7; faro unseen.
    # recent: (4 + 0.99 * 10) / 1.99 - 7
    recent = (4 + 0.99 * 10) / 1.99 - 7
    assert rate["e2"] == pytest.approx({"city_label_rate": 1 / 7, "label_rate_recent": recent}, abs=1e-12)
    assert rate["e3"] == pytest.approx({"label_rate_recent": recent}, abs=1e-12)
    # e4: e2's label 1 is in now; mean 5. Lisbon (10 + 1 + 20 * 5) / 22 - 5 = 1/22;
    # recent: (1 + 0.99 * 4 + 0.99 ** 2 * 10) / (1 + 0.99 + 0.99 ** 2) - 5
    assert rate["e4"] == pytest.approx({
        "city_label_rate": 1 / 22,
        "label_rate_recent": (1 + 0.99 * 4 + 0.99 ** 2 * 10) / (1 + 0.99 + 0.99 ** 2) - 5}, abs=1e-12)
    assert RECENT_WEIGHT == 0.01 and PRIOR_LABELS == 20.0  # the hand figures above assume these


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_init_turns_label_rates_on_for_classification_only(tmp_path, task):
    """Label means made movielens worse as init's default (docs/lifecycle.md): off for regression."""
    from appliance.config.file import load_config
    from appliance.init.starter import write_starter

    path = tmp_path / "events.jsonl"
    labels = {r["event_id"]: r["label"] for r in stream(400, task=task) if "label" in r}
    rides = [{**r, "label": labels[r["event_id"]]} for r in stream(400, task=task) if r["type"] == "ride"]
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in rides))  # the labels inline
    write_starter(str(path), str(tmp_path / "appliance.toml"))
    loaded = load_config(tmp_path / "appliance.toml")
    assert loaded.model.task == task and loaded.features.label_rates == (task == "classification")
    assert "city" in loaded.features.categorical
