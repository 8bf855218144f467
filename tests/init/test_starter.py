"""`appliance init` on seeded, realistic streams: keys from recurrence not names, high cardinality
kept, windows from the data's pace, label rows and their delay, relative paths, and a config that
loads and replays."""

from __future__ import annotations

import csv
import json
import math
import random
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.config.file import load_config
from appliance.init.starter import LADDER, starter_config, write_starter
from appliance.timeutil import parse_duration

T0 = 1_767_225_600.0  # 2026-01-01


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def zipf_choice(rng: random.Random, values: list, s: float = 1.1):
    weights = [1 / (i + 1) ** s for i in range(len(values))]
    return rng.choices(values, weights)[0]


def orders(n: int = 6000, seed: int = 1, pace: float = 60.0, shops: int = 40) -> list[dict]:
    """Deliveries: a shop (string), a courier (an integer code), a basket amount, a channel, a note
    that never repeats, all without an id-like name; events about `pace` seconds apart."""
    rng = random.Random(seed)
    shop_names = [f"{rng.choice(['bakery', 'deli', 'grill', 'sushi'])}-{i}" for i in range(shops)]
    couriers = rng.sample(range(100, 9999), 60)
    rows, t = [], T0
    for i in range(n):
        t += rng.expovariate(1 / pace)
        rows.append({"order_ref": f"o-{i:06d}", "placed": iso(t), "shop": zipf_choice(rng, shop_names),
                     "courier": zipf_choice(rng, couriers), "basket": round(rng.lognormvariate(3, 0.6), 2),
                     "channel": rng.choice(["app", "web", "phone"]), "note": f"ring twice {rng.random():.9f}",
                     "delivered_late": int(rng.random() < 0.2)})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    names = list(dict.fromkeys(k for row in rows for k in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def init(tmp_path: Path, rows: list[dict], name: str = "events.csv") -> tuple[str, dict]:
    events = write_csv(tmp_path / name, rows)
    text = starter_config(str(events), config_dir=tmp_path)
    return text, tomllib.loads(text)


def windows_of(config: dict, key: str) -> set[float]:
    return {parse_duration(a["window"]) for a in config["features"]["aggregate"] if a["key"] == key and "window" in a}


def test_keys_come_from_recurrence_not_names(tmp_path):
    text, config = init(tmp_path, orders())
    event = config["event"]
    assert event["id"] == "order_ref" and event["time"] == "placed" and event["label"] == "delivered_late"
    assert event["keys"] == ["shop", "courier"]  # a string and an integer code, neither named like an id
    assert event["numeric"] == ["basket"] and event["categorical"] == ["channel"]
    assert "note" not in text.split("# Field by field")[0]  # a never-repeating text is no key nor category...
    assert re.search(r"#\s+note\s+ignored: .*never seen before", text)  # ...and the file says why
    assert re.search(r"#\s+courier\s+key: an integer code", text)


def test_high_cardinality_keys_are_also_hashed_and_buckets_follow_the_widest_one_hot(tmp_path):
    rng = random.Random(2)
    rows = orders(n=30_000, shops=150, seed=2)
    for row in rows:
        row["device"] = f"d{int(rng.paretovariate(0.8)) % 5000}"  # thousands of values, recurring
        row["session"] = f"s{rng.randrange(10_000)}"  # ~9,500 values seen about three times each
    text, config = init(tmp_path, rows)
    assert {"device", "session"} <= set(config["event"]["keys"])
    assert "device" in config["features"]["categorical"]  # a weight and a label rate per device
    assert "session" not in config["features"]["categorical"]  # more than 8,192 values: most would share a bucket
    assert "shop" in config["event"]["keys"] and "shop" in config["features"]["categorical"]
    devices = len({row["device"] for row in rows})
    assert config["features"]["hash_buckets"] == min(4096, 2 ** math.ceil(math.log2(10 * devices))) == 4096
    report = re.search(r"# values expected to share a bucket with another: (.*) \(", text).group(1)
    shares = dict(item.rsplit(" ", 1) for item in report.split(", "))
    assert shares["channel"] == "0%" and shares["device"] == f"{1 - (1 - 1 / 4096) ** (devices - 1):.0%}"
    few = orders(n=3000, shops=12, seed=4)
    _, small = init(tmp_path / "small", few)
    widest = max(len({row[name] for row in few}) for name in small["features"]["categorical"])
    assert small["features"]["hash_buckets"] == 2 ** math.ceil(math.log2(10 * widest)) < 4096


def count_windows(config: dict, key: str) -> list[float]:
    return sorted(parse_duration(a["window"]) for a in config["features"]["aggregate"]
                  if a["key"] == key and a["op"] == "count")


def test_windows_follow_the_pace_of_the_data(tmp_path):
    _, fast = init(tmp_path / "fast", orders(pace=6.0, seed=5))
    _, slow = init(tmp_path / "slow", orders(pace=600.0, seed=5))
    fast_w, slow_w = windows_of(fast, "shop"), windows_of(slow, "shop")
    assert fast_w <= set(LADDER) and slow_w <= set(LADDER)
    assert max(slow_w) >= 30 * max(fast_w)  # 100x slower: windows ~100x longer (on the ladder)...
    assert min(slow_w) >= 5 * min(fast_w)
    lateness = parse_duration(fast["event"]["allowed_lateness"])
    assert min(fast_w) == lateness  # ...but never shorter than the allowed lateness
    span = 6000 * 600.0
    assert max(slow_w) <= span / 4  # a window must fill within the file
    for config in (fast, slow):  # a count at every window; orders come at random (Poisson): no burst
        # window, though busy and quiet shops mixed make many gaps far below the median
        assert set(count_windows(config, "shop")) == windows_of(config, "shop")
        assert len(count_windows(config, "shop")) == 2


def visits(bursts: bool, seed: int = 11, members: int = 60, period: float = 8 * 3600.0) -> list[dict]:
    """Members who come back about every `period` (jittered); with `bursts`, 4% of visits start a run
    of two or three more visits a minute or a few apart, far quicker than the member's usual gap."""
    rng = random.Random(seed)
    timed: list[tuple[float, str, float]] = []
    for m in range(members):
        t = T0 + rng.uniform(0, period)
        while t < T0 + 30 * 86400:
            timed.append((t, f"m{m:03d}", round(rng.lognormvariate(3, 0.5), 2)))
            if bursts and rng.random() < 0.04:
                u = t
                for _ in range(rng.choice((2, 3))):
                    u += rng.uniform(60, 240)
                    timed.append((u, f"m{m:03d}", round(rng.lognormvariate(4, 0.5), 2)))
            t += period * rng.uniform(0.8, 1.2)
    timed.sort()
    return [{"visit": f"v{i}", "at": iso(t), "member": m, "spend": spend, "flagged": int(rng.random() < 0.1)}
            for i, (t, m, spend) in enumerate(timed)]


def test_windows_see_bursts_quicker_than_an_entitys_usual_gap(tmp_path):
    text, steady = init(tmp_path / "steady", visits(bursts=False))
    _, bursty = init(tmp_path / "bursty", visits(bursts=True))
    steady_w, bursty_w = count_windows(steady, "member"), count_windows(bursty, "member")
    # a steady member: one window at the 8h pace, one of about ten visits (80h); no burst scale
    assert steady_w == [_ceil(8 * 3600), _ceil(80 * 3600)]
    assert re.search(r"# member: .*\(not under half random arrivals' 1.0%: no burst window\)", text)
    # the same pace with runs of visits minutes apart: a burst window of minutes below those
    assert len(bursty_w) == 3 and bursty_w[1:] == steady_w
    assert 300.0 <= bursty_w[0] <= 1800.0  # the runs span 2-12 minutes; never below the 5m lateness
    ops = {(a["op"], parse_duration(a.get("window", "0s"))) for a in bursty["features"]["aggregate"]
           if a["key"] == "member"}
    assert ("sum", bursty_w[0]) in ops and ("mean", bursty_w[-1]) in ops and ("since", 0.0) in ops


def _ceil(seconds: float) -> float:
    return next(s for s in LADDER if s >= seconds)


def payments_with_chargebacks(n: int = 4000, seed: int = 7) -> tuple[list[dict], list[float]]:
    """Payments and, for the frauds, chargeback rows naming the payment in their own field, later."""
    rng = random.Random(seed)
    rows: list[tuple[float, dict]] = []
    delays, t = [], T0
    for i in range(n):
        t += rng.expovariate(1 / 120)
        card = f"c{rng.randrange(300)}"
        rows.append((t, {"kind": "payment", "pid": f"p{i}", "at": iso(t), "card": card,
                         "amount": round(rng.uniform(2, 90), 2)}))
        if rng.random() < 0.08:
            delay = rng.lognormvariate(math.log(6 * 3600), 0.8)
            delays.append(delay)
            rows.append((t + delay, {"kind": "chargeback", "payment_ref": f"p{i}", "reported": iso(t + delay),
                                     "fraud": 1}))
    rows.sort(key=lambda item: item[0])
    return [row for _, row in rows], delays


def test_label_rows_their_field_mapping_and_delay_are_detected(tmp_path):
    rows, delays = payments_with_chargebacks()
    text, config = init(tmp_path, rows)
    event = config["event"]
    assert (event["type"], event["label_type"]) == ("kind", "chargeback")
    assert (event["label_id"], event["label_time"], event["label"]) == ("payment_ref", "reported", "fraud")
    ordered = sorted(delays)
    p99 = ordered[int(0.99 * len(ordered))]
    horizon = parse_duration(config["labels"]["horizon"])
    assert horizon == min(s for s in LADDER if s >= p99)
    assert config["labels"]["default"] == 0  # only frauds are ever reported
    assert config["model"]["task"] == "classification"
    assert "delay p50" in text


def test_label_rows_without_a_type_field_are_recognised_by_their_own_id_field(tmp_path):
    rows, _ = payments_with_chargebacks(seed=8)
    for row in rows:
        if row.pop("kind") == "chargeback":
            row["chargeback_for"] = row.pop("payment_ref")
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    config = tomllib.loads(starter_config(str(tmp_path / "events.jsonl"), config_dir=tmp_path))
    event = config["event"]
    assert (event["type"], event["label_by"], event["label_id"]) == ("", "label_id", "chargeback_for")


def test_paths_are_relative_to_the_config_and_the_config_loads_and_replays(tmp_path, monkeypatch):
    rows, delays = payments_with_chargebacks(n=1500, seed=9)
    write_csv(tmp_path / "data" / "payments.csv", rows)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["init", "data/payments.csv", "--out", "configs/appliance.toml"])
    assert result.exit_code == 1 and "configs" in result.output  # no such folder yet: a clear error
    (tmp_path / "configs").mkdir()
    result = runner.invoke(main, ["init", "data/payments.csv", "--out", "configs/appliance.toml"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads((tmp_path / "configs" / "appliance.toml").read_text())["source"]["spec"] == \
        "../data/payments.csv"
    config = load_config("configs/appliance.toml")
    assert Path(config.source) == (tmp_path / "data" / "payments.csv").resolve()
    result = runner.invoke(main, ["replay", "--config", "configs/appliance.toml", "--db", "r.db", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)["counts"]
    assert counts["dead_letters"] == 0
    assert counts["events"] == sum(1 for r in rows if r["kind"] == "payment")
    assert counts["labels"] == len(delays)
    assert counts["labels_joined"] + counts["labels_late"] == len(delays)  # late: past the horizon (p99)
    assert counts["labels_joined"] >= 0.97 * len(delays)


def test_write_starter_refuses_to_overwrite(tmp_path):
    events = write_csv(tmp_path / "events.csv", orders(n=200))
    write_starter(str(events), str(tmp_path / "a.toml"))
    with pytest.raises(Exception, match="already exists"):
        write_starter(str(events), str(tmp_path / "a.toml"))


def test_a_field_that_decides_the_inline_label_alone_is_left_out_and_said_why(tmp_path):
    rng = random.Random(11)
    rows = orders(n=3000, seed=11)
    for row in rows:
        row["minutes_late"] = round(rng.uniform(16, 90) if row["delivered_late"] else rng.uniform(-10, 15), 1)
    text, config = init(tmp_path, rows)
    assert "minutes_late" not in config["event"]["numeric"] and "basket" in config["event"]["numeric"]
    assert re.search(r"#\s+minutes_late\s+ignored: it nearly decides the label on its own \(ROC AUC 1.000\)", text)


def test_what_cannot_replay_as_it_is_is_a_warning_in_the_file_and_on_stderr(tmp_path, monkeypatch):
    rows = orders(n=2000, seed=12)
    rng = random.Random(12)
    rng.shuffle(rows)  # not in time order
    for row in rows:
        del row["delivered_late"]
        row["label"] = rng.choice(["on time", "late", "lost"])  # not binary
    write_csv(tmp_path / "events.csv", rows)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["init", "events.csv"])
    assert result.exit_code == 0, result.output
    assert "WARNING: the file is not in time order" in result.stderr
    assert "WARNING: LABEL NOT BINARY" in result.stderr
    text = (tmp_path / "appliance.toml").read_text()
    assert "# WARNING: the file is not in time order" in text and "SORT THE FILE BY TIME" in text


def test_events_with_many_missing_fields_are_not_taken_for_label_rows(tmp_path):
    rows = orders(n=2000, seed=13)
    for row in rows[::7]:
        for name in ("shop", "courier", "basket", "channel", "note"):
            del row[name]
    text, config = init(tmp_path, rows)
    assert config["event"]["type"] == "type" and "label_by" not in config["event"]  # no label rows
    assert config["event"]["label"] == "delivered_late" and "WARNING" not in text
    assert set(config["event"]["optional"]) == {"shop", "courier", "basket", "channel"}


def test_past_six_keys_the_rest_are_one_hot_or_left_out_and_the_config_loads(tmp_path):
    rng = random.Random(14)
    rows = orders(n=3000, seed=14)
    for row in rows:
        for k in range(6):
            row[f"team{k}"] = f"t{zipf_choice(rng, list(range(40)))}"
    events = write_csv(tmp_path / "events.csv", rows)
    write_starter(str(events), str(tmp_path / "appliance.toml"))
    config = load_config(tmp_path / "appliance.toml")
    assert config.event.keys == ("shop", "courier", "team0", "team1", "team2", "team3")
    assert {"team4", "team5"} <= set(config.event.categorical)
    assert "6 keys already" in (tmp_path / "appliance.toml").read_text()


def test_aggregates_stay_within_the_budget_dropping_burst_distincts_then_middle_counts_first():
    from appliance.init.guess import Guess, Windows
    from appliance.init.layout import Layout
    from appliance.init.profile import FieldProfile, StreamProfile
    from appliance.init.render import MAX_AGGREGATES, plan_aggregates

    keys = [f"k{i}" for i in range(6)]
    fields = {k: FieldProfile(counts={v: 1 for v in range(10 * (i + 1))}) for i, k in enumerate(keys)}
    guess = Guess(profile=StreamProfile(layout=Layout("id", "ts"), fields=fields), keys=keys,
                  amount=("amount", "named"))
    guess.windows = {k: Windows((600.0, 86400.0, 7 * 86400.0), "bursty") for k in keys}
    planned = plan_aggregates(guess)
    assert len(planned) == MAX_AGGREGATES < 6 * 9  # 9 each unbudgeted
    kept = {k: {(a.op, a.window) for a in planned if a.key == k} for k in keys}
    essential = {("count", 600.0), ("count", 7 * 86400.0), ("since", None), ("sum", 600.0), ("mean", 7 * 86400.0)}
    assert all(kept[k] >= essential for k in keys)  # every key keeps its burst and long counts, since, sum, mean
    assert not any(("distinct", 600.0) in kept[k] or ("count", 86400.0) in kept[k] for k in keys)  # first to go
    assert [("distinct", 7 * 86400.0) in kept[k] for k in keys] == [True, True, False, False, False, False]
    assert len({a.name for a in planned}) == len(planned)


def test_whole_number_json_floats_are_not_taken_for_integer_codes(tmp_path):
    """A JSON 1400.0 is a float: the event parser refuses it as an entity key, so init must not make it one."""
    rows = orders(n=3000, seed=5)
    for row in rows:
        row["courier"] = float(row["courier"])  # e.g. a distance exported by a tool that writes floats
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tomllib.loads(starter_config(str(events), config_dir=tmp_path))
    assert "courier" not in config["event"].get("keys", [])
    assert "courier" in config["event"].get("numeric", [])
