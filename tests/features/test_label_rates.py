"""Label rates as features (`[features] label_rates`): only labels learned before an event was scored
count, the served path sees them, and they survive a checkpoint."""

from __future__ import annotations

import math
import pickle
import random

import orjson

from appliance.config.file import config_from_dict
from appliance.engine.core import Engine
from appliance.features.label_rates import PRIOR_LABELS, RECENT_WEIGHT
from tests.conftest import items, run

T0 = 1_767_225_600.0
CITIES = ("lisbon", "porto", "faro", "braga")
RISK = {"lisbon": 0.1, "porto": 0.5, "faro": 0.8, "braga": 0.3}


def stream(n: int = 600, seed: int = 5) -> list[dict]:
    """Rides in four cities with very different late-payment rates; some labels inline, most later."""
    rng = random.Random(seed)
    merged = []
    t = T0
    for i in range(n):
        t += rng.uniform(1, 60)
        city = rng.choice(CITIES)
        y = int(rng.random() < RISK[city])
        event = {"type": "ride", "event_id": f"e{i}", "ts": t, "city": city, "amount": rng.uniform(5, 50)}
        if i % 7 == 0:
            merged.append((t, 0, {**event, "label": y}))
        else:
            merged.append((t, 0, event))
            merged.append((t + rng.uniform(5, 900), 1, {"type": "label", "event_id": f"e{i}", "label": y}))
    merged.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in merged]


def config(rates: bool = True):
    return config_from_dict({
        "event": {"numeric": ["amount"], "categorical": ["city"]},
        "labels": {"horizon": "1d", "default": "drop"},
        "model": {"task": "classification"},
        "features": {"hash_buckets": 64, "label_rates": rates},
    })


def logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def expected_rates(records: list[dict]) -> dict[str, dict[str, float]]:
    """By brute force: for each event, the rates from the labels that arrived before it was scored."""
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
                x["city_label_rate"] = logit((sum(mine) + PRIOR_LABELS * prior) / (len(mine) + PRIOR_LABELS)) - logit(prior)
            weights = [(1 - RECENT_WEIGHT) ** age for age in range(len(learned))]
            recent = sum(w * y for w, (_, y) in zip(weights, reversed(learned))) / sum(weights)
            x["label_rate_recent"] = logit(recent) - logit(prior)
        out[record["event_id"]] = x
        if "label" in record:  # inline: learned right after its own prediction
            learned.append((record["city"], record["label"]))
    return out


def test_label_rates_count_only_labels_learned_before_the_event_was_scored():
    cfg, records = config(), stream()
    engine = Engine(cfg)
    rows = run(engine, items(cfg, records))
    expected = expected_rates(records)
    logged = {row["event_id"]: orjson.loads(row["features"]) for row in rows["predictions"]}
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
    assert not any("label_rate" in row["features"] for row in rows["predictions"])
    assert Engine(config()).space.names[-2:] == ["city_label_rate", "label_rate_recent"]


def test_label_rates_survive_a_checkpoint():
    cfg, records = config(), stream()
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
    from appliance.runtime.app import fingerprint

    off, on = config(rates=False), config()
    assert "label_rates" not in repr(off.features)  # a store from before the key keeps its fingerprint
    assert fingerprint(off) != fingerprint(on)
