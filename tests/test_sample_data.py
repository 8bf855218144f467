"""The bundled sample: deterministic, current, and telling the story it claims (fraud, delay, drift, mess)."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict

import pytest

import sample_data
from sample_data.generate import DRIFT_DAY, START, generate
from appliance.timeutil import parse_timestamp


@pytest.fixture(scope="module")
def lines():
    return list(generate())


@pytest.fixture(scope="module")
def parsed(lines):
    payments, labels, malformed = [], [], []
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            malformed.append(line)
            continue
        if isinstance(value, dict) and value.get("type") == "payment" and "ts" in value and "user_id" in value \
                and isinstance(value.get("amount"), float) and value["amount"] >= 0 and value["ts"].endswith("Z") \
                and not value["event_id"].startswith("bad"):
            payments.append(value)
        elif isinstance(value, dict) and value.get("type") == "label" and value.get("label") == 1:
            labels.append(value)
        else:
            malformed.append(line)
    return payments, labels, malformed


def test_the_committed_file_is_what_the_generator_makes(lines):
    with gzip.open(sample_data.EVENTS, "rt", encoding="utf-8") as handle:
        committed = handle.read().splitlines()
    assert committed == lines, "sample_data/payments.jsonl.gz is stale: run python -m sample_data.generate"
    assert sample_data.EVENTS.stat().st_size <= 5 * 1024 * 1024


def test_same_seed_same_lines_other_seed_other_lines(lines):
    short = list(generate(seed=7, days=2))
    assert short == list(generate(seed=7, days=2))
    assert short != list(generate(seed=8, days=2))


def test_fraud_rate_and_chargeback_delays(parsed):
    payments, labels, _ = parsed
    assert 90_000 <= len(payments) <= 120_000
    by_id = {p["event_id"]: p for p in payments}
    assert 0.01 <= len(labels) / len(payments) <= 0.02
    delays = []
    for label in labels:
        payment = by_id[label["event_id"]]
        delays.append(parse_timestamp(label["ts"]) - parse_timestamp(payment["ts"]))
    assert min(delays) >= 20 * 60
    late = sum(1 for d in delays if d > 48 * 3600)
    assert 0.005 <= late / len(delays) <= 0.04  # ~2% arrive after the config's 2-day horizon
    assert sum(1 for d in delays if d <= 36 * 3600) / len(delays) >= 0.95


def test_the_fraud_pattern_drifts_on_day_14(parsed):
    payments, labels, _ = parsed
    fraud = {label["event_id"] for label in labels}
    drift = START + DRIFT_DAY * 86400
    phase1 = [p for p in payments if p["event_id"] in fraud and parse_timestamp(p["ts"]) < drift]
    phase2 = [p for p in payments if p["event_id"] in fraud and parse_timestamp(p["ts"]) >= drift]
    assert phase1 and phase2
    last_use: dict[str, float] = {}
    quick = set()
    for p in payments:  # rides on the same card less than 15 minutes apart
        ts = parse_timestamp(p["ts"])
        if ts - last_use.get(p["card_id"], -1e18) < 900:
            quick.add(p["event_id"])
        last_use[p["card_id"]] = ts
    burst1 = sum(1 for p in phase1 if p["event_id"] in quick) / len(phase1)
    burst2 = sum(1 for p in phase2 if p["event_id"] in quick) / len(phase2)
    assert burst1 > 0.6 and burst2 < 0.2, (burst1, burst2)  # phase 1: rapid-fire rides on one card
    users_per_card = defaultdict(set)
    for p in phase2:
        users_per_card[p["card_id"]].add(p["user_id"])
    shared = sum(1 for p in phase2 if len(users_per_card[p["card_id"]]) >= 3) / len(phase2)
    assert shared > 0.7  # phase 2: one card on many accounts
    mean = lambda rows: sum(p["amount"] for p in rows) / len(rows)  # noqa: E731
    legit = [p for p in payments if p["event_id"] not in fraud]
    assert mean(phase1) > 1.8 * mean(legit) and mean(phase2) < 1.5 * mean(legit)


def test_the_mess_out_of_order_and_malformed(parsed, lines):
    payments, _, malformed = parsed
    assert 10 <= len(malformed) <= 40
    newest, behind = "", 0
    for p in payments:
        if p["ts"] < newest:
            behind += 1
        newest = max(newest, p["ts"])
    assert 0.002 <= behind / len(payments) <= 0.01
