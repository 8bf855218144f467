"""The bundled sample: deterministic, current, and telling the story it claims (fraud, delay, drift, mess).

Everything is measured from the lines themselves, as the appliance sees them, not from the generator's
own bookkeeping.
"""

from __future__ import annotations

import csv
import gzip
from collections import Counter, defaultdict

import pytest

import sample_data
from appliance.config.file import load_config
from appliance.errors import InvalidEvent
from appliance.ingest.events import Event, Label, parse_event
from sample_data.generate import DRIFT_DAY, START, driver_table, generate, main, write

HOUR = 3600.0
DRIFT = START + DRIFT_DAY * 86400


@pytest.fixture(scope="module")
def lines():
    return list(generate())


@pytest.fixture(scope="module")
def parsed(lines):
    """Each line through the appliance's own parser with the sample's config."""
    config = load_config(sample_data.CONFIG)
    payments, labels, malformed = [], [], []
    for index, line in enumerate(lines):
        try:
            item = parse_event(line, config.event, config.model.task)
        except InvalidEvent as exc:
            malformed.append((index, line, exc.reason))
            continue
        if isinstance(item, Label):
            labels.append((index, item))
        else:
            assert isinstance(item, Event) and item.raw["type"] == "payment", line
            payments.append((index, item))
    return payments, labels, malformed


@pytest.fixture(scope="module")
def story(parsed):
    """Payments as dicts with their ts and whether a chargeback names them, by phase and by truth."""
    payments, labels, _ = parsed
    fraud = {label.event_id for _, label in labels}
    rows = [dict(p.raw, t=p.ts, fraud=p.event_id in fraud) for _, p in payments]
    rows.sort(key=lambda r: r["t"])
    return rows


def test_the_committed_file_is_what_the_generator_makes(lines):
    with gzip.open(sample_data.EVENTS, "rt", encoding="utf-8") as handle:
        committed = handle.read().splitlines()
    assert committed == lines, "sample_data/payments.jsonl.gz is stale: run python -m sample_data.generate"
    assert sample_data.EVENTS.stat().st_size <= 5 * 1024 * 1024


def test_same_seed_same_lines_other_seed_other_lines(lines):
    assert list(generate(seed=7)) == lines
    short = list(generate(seed=7, days=2))
    assert short == list(generate(seed=7, days=2))
    assert short != list(generate(seed=8, days=2))


def test_write_gives_the_same_bytes_and_main_takes_its_options(tmp_path):
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    summary = write(first, seed=3, days=1)
    write(second, seed=3, days=1)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime
    assert summary["payments"] > 1000 and summary["bytes"] == first.stat().st_size
    main(["--seed", "3", "--days", "1", "--out", str(tmp_path / "c.jsonl.gz"), "--drivers", str(tmp_path / "d.csv")])
    assert (tmp_path / "c.jsonl.gz").read_bytes() == first.read_bytes()
    assert (tmp_path / "d.csv").read_text() == driver_table(3) != driver_table(7)


def test_the_drivers_table_is_fresh_and_covers_every_driver(parsed):
    committed = sample_data.DRIVERS.read_text(encoding="utf-8")
    assert committed == driver_table(7), "sample_data/drivers.csv is stale: run python -m sample_data.generate"
    rows = list(csv.DictReader(committed.splitlines()))
    known = {row["driver_id"] for row in rows}
    assert len(known) == len(rows) > 1000
    payments, _, _ = parsed
    assert {p.values["driver_id"] for _, p in payments} <= known
    assert all(1.0 <= float(row["rating"]) <= 5.0 and float(row["years_active"]) >= 0 for row in rows)


def test_payments_carry_every_field_the_config_reads(parsed):
    payments, labels, _ = parsed
    assert 90_000 <= len(payments) <= 120_000
    config = load_config(sample_data.CONFIG)
    wanted = set(config.event.keys) | set(config.event.numeric) | set(config.event.categorical)
    for _, payment in payments:
        assert set(payment.values) == wanted
    assert {p.raw["payment_method"] for _, p in payments} == {"card", "wallet"}
    assert len({p.raw["city"] for _, p in payments}) == 8
    assert 1000 <= len({p.raw["driver_id"] for _, p in payments}) <= 2000
    assert 4500 <= len({p.raw["user_id"] for _, p in payments}) <= 6000
    assert all(label.value is True for _, label in labels)


def test_malformed_lines_are_all_rejected_and_only_they(parsed):
    _, _, malformed = parsed
    assert 10 <= len(malformed) <= 40
    reasons = " | ".join(reason for _, _, reason in malformed)
    for expected in ("not valid JSON", "must be a JSON object", 'missing time field "ts"', 'field "amount" must be',
                     'field "amount" = -12 is outside', "is not binary", 'missing entity key "user_id"'):
        assert expected in reasons
    spread = [index for index, _, _ in malformed]
    assert spread[0] < 5_000 and spread[-1] > 95_000  # scattered through the stream, not bunched


def test_fraud_rate_and_chargeback_delays(parsed, story):
    payments, labels, _ = parsed
    assert 0.01 <= len(labels) / len(payments) <= 0.02
    for phase in ([r for r in story if r["t"] < DRIFT], [r for r in story if r["t"] >= DRIFT]):
        assert 0.01 <= sum(r["fraud"] for r in phase) / len(phase) <= 0.02
    where = {p.event_id: (index, p.ts) for index, p in payments}
    delays = []
    for index, label in labels:
        assert label.event_id in where, "a chargeback names a payment that is not in the stream"
        payment_index, payment_ts = where[label.event_id]
        assert payment_index < index, "a chargeback comes before its payment in the file"
        delays.append(label.ts - payment_ts)
    assert len(set(label.event_id for _, label in labels)) == len(labels)
    assert min(delays) >= 20 * 60
    late = sum(1 for d in delays if d > 48 * HOUR)
    assert 0.005 <= late / len(delays) <= 0.04  # ~2% arrive after the config's 2-day horizon
    assert max(delays) <= 72 * HOUR
    assert sum(1 for d in delays if d <= 36 * HOUR) / len(delays) >= 0.95


def test_the_fraud_pattern_drifts_on_day_14(story):
    last_use: dict[str, float] = {}
    device_first: dict[str, float] = {}
    card_users, device_users = defaultdict(set), defaultdict(set)
    card_home = defaultdict(Counter)  # the city where a card is used for rides nobody disputes
    for r in story:
        r["quick"] = r["t"] - last_use.get(r["card_id"], -1e18) < 15 * 60  # same card < 15 min ago
        r["new_device"] = r["t"] - device_first.setdefault(r["device_id"], r["t"]) < HOUR
        last_use[r["card_id"]] = r["t"]
        card_users[r["card_id"]].add(r["user_id"])
        device_users[r["device_id"]].add(r["user_id"])
        if not r["fraud"]:
            card_home[r["card_id"]][r["city"]] += 1
    groups = {
        "legit": [r for r in story if not r["fraud"] and r["t"] >= START + 2 * 86400],
        "phase1": [r for r in story if r["fraud"] and r["t"] < DRIFT],
        "phase2": [r for r in story if r["fraud"] and r["t"] >= DRIFT],
    }
    assert all(len(rows) > 300 for rows in groups.values())

    def share(group, test):
        rows = [r for r in groups[group] if test(r) is not None]
        return sum(1 for r in rows if test(r)) / len(rows)

    def away(r):
        home = card_home[r["card_id"]]
        return None if not home else r["city"] != home.most_common(1)[0][0]

    signature = {
        "quick": lambda r: r["quick"], "new_device": lambda r: r["new_device"], "away": away,
        "card_shared": lambda r: len(card_users[r["card_id"]]) >= 3,
        "device_shared": lambda r: len(device_users[r["device_id"]]) >= 3,
    }
    got = {name: {g: round(share(g, test), 3) for g in groups} for name, test in signature.items()}
    # Phase 1, stolen cards: rapid rides from a phone never seen before, mostly away from the card's city.
    assert got["quick"]["phase1"] > 0.6 and got["new_device"]["phase1"] > 0.8 and got["away"]["phase1"] > 0.5, got
    # Phase 2, fraud rings: cards and phones shared by many accounts, hours apart, in the card's own city.
    assert got["card_shared"]["phase2"] > 0.7 and got["device_shared"]["phase2"] > 0.7, got
    assert got["quick"]["phase2"] < 0.2 and got["away"]["phase2"] < 0.1, got
    assert got["card_shared"]["phase1"] < 0.2 and got["device_shared"]["phase1"] < 0.1, got
    for name in signature:  # legitimate rides show none of it
        assert got[name]["legit"] < 0.1, got

    def mean(group):
        return sum(r["amount"] for r in groups[group]) / len(groups[group])

    assert mean("phase1") > 1.8 * mean("legit") and 0.7 < mean("phase2") / mean("legit") < 1.3


def test_the_mess_out_of_order_within_the_allowed_lateness(parsed, lines):
    payments, labels, _ = parsed
    items = sorted(payments + labels, key=lambda pair: pair[0])  # file order
    newest, behind, worst = float("-inf"), 0, 0.0
    for _, item in items:
        if item.ts < newest:
            behind += isinstance(item, Event)
            worst = max(worst, newest - item.ts)
        newest = max(newest, item.ts)
    assert 0.002 <= behind / len(payments) <= 0.01
    allowed = load_config(sample_data.CONFIG).event.allowed_lateness
    assert worst <= min(120.0, allowed)  # only payments lag, by at most two minutes
