"""Generate the bundled sample: 28 days of ride-hailing payments with fraud, chargebacks and a drift.

    python -m sample_data.generate            # rewrites sample_data/payments.jsonl.gz
    python -m sample_data.generate --seed 8 --days 7 --out /tmp/other.jsonl.gz

The story (see sample_data/README.md):
  * ~5,000 riders in 8 cities, each with a home city, one or two cards, a phone, and a spending level;
    rides follow the daily commute and the weekly rhythm.
  * Days 0-13, stolen cards: a card is taken over and used for 3-8 rides within an hour or so, from a
    new phone, usually in another city than its owner's, for long, expensive rides.
  * Days 14-27, the pattern drifts to fraud rings: a few stolen cards and shared phones spread over
    many fresh accounts, ordinary amounts, rides hours apart, all in the ring's city. A model that
    learned the first pattern misses this one until it re-learns.
  * Chargebacks (label 1) arrive 20 minutes to 36 hours after the ride, ~2% of them 50-70 hours late
    (after the config's 2-day horizon). Legitimate rides get no label: the config's default says so.
  * Mess: ~0.5% of payments are written up to two minutes late (out of order), and ~20 lines are
    malformed (bad JSON, missing or bad fields) for the dead-letter table.

Only `random.Random(seed)` is used, and gzip is written with mtime 0: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import math
import random
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from sample_data import EVENTS

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0
CITIES = {  # name: (share of riders, price per km)
    "lisbon": (0.16, 0.95), "porto": (0.10, 0.90), "madrid": (0.17, 1.05), "barcelona": (0.14, 1.10),
    "paris": (0.15, 1.60), "lyon": (0.07, 1.35), "berlin": (0.13, 1.45), "milan": (0.08, 1.30),
}
METHODS = (("card", 0.6), ("wallet", 0.3), ("paypal", 0.1))
HOURLY = [0.25, 0.15, 0.1, 0.08, 0.1, 0.25, 0.6, 1.3, 1.7, 1.2, 0.9, 0.9,
          1.0, 1.0, 0.9, 0.95, 1.1, 1.5, 1.7, 1.4, 1.1, 0.9, 0.7, 0.45]
WEEKDAY = [1.0, 1.0, 1.02, 1.05, 1.2, 1.15, 0.85]  # Thursday 2026-01-01 is index 3
DRIFT_DAY = 14


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-01-01T00:03:12.345Z."""
    return datetime.fromtimestamp(round(ts, 3), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class World:
    """Riders, cards, phones and drivers, built once from the seed."""

    def __init__(self, rng: random.Random, n_users: int = 5000, drivers_per_city: int = 160) -> None:
        self.rng = rng
        names = list(CITIES)
        shares = [CITIES[c][0] for c in names]
        self.users = []
        card_no = device_no = 0
        for i in range(n_users):
            cards = []
            for _ in range(1 if rng.random() < 0.7 else 2):
                card_no += 1
                cards.append(f"c{card_no:06d}")
            device_no += 1
            self.users.append({
                "user_id": f"u{i:05d}", "city": rng.choices(names, shares)[0], "cards": cards,
                "device": f"dv{device_no:06d}", "level": rng.lognormvariate(0, 0.25),
                "method": rng.choices([m for m, _ in METHODS], [w for _, w in METHODS])[0],
                "km": rng.lognormvariate(1.3, 0.35),
            })
        weights = [rng.lognormvariate(0, 0.9) for _ in self.users]
        self.cumulative = []
        total = 0.0
        for w in weights:
            total += w
            self.cumulative.append(total)
        self.drivers = {c: [f"d{c[:3]}{j:04d}" for j in range(drivers_per_city)] for c in names}
        self.next_device = device_no
        self.next_user = n_users

    def pick_user(self) -> dict:
        return self.users[bisect.bisect(self.cumulative, self.rng.random() * self.cumulative[-1])]

    def new_device(self) -> str:
        self.next_device += 1
        return f"dv{self.next_device:06d}"

    def new_user(self) -> str:
        self.next_user += 1
        return f"u{self.next_user:05d}"


def _ride(rng: random.Random, world: World, ts: float, user_id: str, card: str, device: str, city: str,
          method: str, km: float, level: float) -> dict:
    price = CITIES[city][1]
    amount = 2.5 + km * price * level * rng.uniform(0.9, 1.15)
    return {"type": "payment", "ts": ts, "user_id": user_id, "card_id": card, "driver_id": rng.choice(world.drivers[city]),
            "device_id": device, "city": city, "amount": round(amount, 2), "payment_method": method,
            "ride_km": round(km, 1), "fraud": False}


def _legit(rng: random.Random, world: World, ts: float) -> dict:
    user = world.pick_user()
    city = user["city"] if rng.random() < 0.96 else rng.choice(list(CITIES))
    km = min(60.0, max(0.5, user["km"] * rng.lognormvariate(0, 0.45)))
    method = user["method"] if rng.random() < 0.9 else rng.choice([m for m, _ in METHODS])
    return _ride(rng, world, ts, user["user_id"], rng.choice(user["cards"]), user["device"], city, method, km,
                 user["level"])


def _stolen_card_burst(rng: random.Random, world: World, ts: float) -> list[dict]:
    """Phase 1: one taken-over card, 3-8 rides in quick succession, new phone, far from home, pricey."""
    victim = world.pick_user()
    card = rng.choice(victim["cards"])
    device = world.new_device()
    user_id = victim["user_id"] if rng.random() < 0.5 else world.new_user()
    others = [c for c in CITIES if c != victim["city"]]
    city = rng.choice(others) if rng.random() < 0.75 else victim["city"]
    rides = []
    for _ in range(rng.randint(3, 8)):
        km = min(60.0, max(2.0, rng.lognormvariate(2.3, 0.4)))
        ride = _ride(rng, world, ts, user_id, card, device, city, "card", km, rng.uniform(1.2, 2.0))
        ride["fraud"] = True
        rides.append(ride)
        ts += rng.expovariate(1 / 420.0) + 60.0
    return rides


def _fraud_ring(rng: random.Random, world: World, start: float, end: float) -> list[dict]:
    """Phase 2: stolen cards and shared phones over many fresh accounts, ordinary rides, hours apart."""
    city = rng.choice(list(CITIES))
    cards = [rng.choice(world.pick_user()["cards"]) for _ in range(rng.randint(1, 3))]
    devices = [world.new_device() for _ in range(rng.randint(1, 2))]
    accounts = [world.new_user() for _ in range(rng.randint(4, 9))]
    rides = []
    ts = start
    for _ in range(rng.randint(15, 40)):
        ts += rng.expovariate(1 / 7200.0) + 300.0
        if ts >= end:
            break
        km = min(60.0, max(0.5, rng.lognormvariate(1.4, 0.4)))
        ride = _ride(rng, world, ts, rng.choice(accounts), rng.choice(cards), rng.choice(devices), city,
                     rng.choice(["card", "wallet"]), km, rng.uniform(0.9, 1.2))
        ride["fraud"] = True
        rides.append(ride)
    return rides


MALFORMED = [
    '{"type": "payment", "event_id": "bad-1", "ts": "2026-01-0',  # truncated JSON
    '{"type": "payment", "event_id": "bad-2", "user_id": "u00001", "card_id": "c000001", "amount": 9.5}',
    '{"type": "payment", "event_id": "bad-3", "ts": "2026-13-45T99:00:00Z", "user_id": "u00002"}',
    '[1, 2, 3]',
    '{}',
    '"just a string"',
    'not json at all',
    '{"type": "payment", "event_id": "bad-4", "ts": "TS", "user_id": "u00003", "card_id": "c000004", '
    '"driver_id": "dlis0001", "device_id": "dv000004", "city": "lisbon", "amount": "abc", '
    '"payment_method": "card", "ride_km": 3.1}',
    '{"type": "payment", "event_id": "bad-5", "ts": "TS", "user_id": "u00004", "card_id": "c000005", '
    '"driver_id": "dlis0002", "device_id": "dv000005", "city": "lisbon", "amount": -12.0, '
    '"payment_method": "card", "ride_km": 3.1}',
    '{"type": "payment", "event_id": "bad-6", "ts": "TS", "card_id": "c000006", "driver_id": "dlis0003", '
    '"device_id": "dv000006", "city": "porto", "amount": 8.0, "payment_method": "card", "ride_km": 2.0}',
    '{"type": "label", "event_id": "p0000003", "ts": "TS", "label": "maybe"}',
]


def generate(seed: int = 7, days: int = 28, rides_per_day: float = 3500.0) -> Iterator[str]:
    """Yield the sample's lines in file order."""
    rng = random.Random(seed)
    world = World(rng)
    end = START + days * DAY
    rides: list[dict] = []
    hour = 0
    while START + hour * 3600 < end:
        t0 = START + hour * 3600
        day = int(hour // 24)
        rate = rides_per_day / 24.0 * HOURLY[hour % 24] / (sum(HOURLY) / 24) * WEEKDAY[(day + 3) % 7]
        for _ in range(_poisson(rng, rate)):
            rides.append(_legit(rng, world, t0 + rng.random() * 3600))
        hour += 1
    drift = START + min(DRIFT_DAY, days) * DAY
    t = START + 3600.0
    while t < min(drift, end):  # phase 1: a burst every ~2 hours
        rides += [r for r in _stolen_card_burst(rng, world, t) if r["ts"] < end]
        t += rng.expovariate(1 / 7800.0)
    t = drift
    while t < end:  # phase 2: a new ring every ~11 hours, each active for up to 3 days
        rides += _fraud_ring(rng, world, t, min(end, t + 3 * DAY))
        t += rng.expovariate(1 / 40000.0)
    rides.sort(key=lambda r: r["ts"])
    lines: list[tuple[float, int, str]] = []
    for n, ride in enumerate(rides, start=1):
        event_id = f"p{n:07d}"
        fraud = ride.pop("fraud")
        ride = {"type": "payment", "event_id": event_id, "ts": iso(ride["ts"]), **{k: v for k, v in ride.items()
                                                                                  if k not in ("type", "ts")}}
        ts = rides[n - 1]["ts"]
        written = ts + (rng.uniform(5, 120) if rng.random() < 0.005 else 0.0)  # out of order in the file
        lines.append((written, 0, json.dumps(ride, separators=(",", ":"))))
        if fraud:
            late = rng.random() < 0.02
            delay = rng.uniform(50, 70) * 3600 if late else min(36 * 3600, 1200 + rng.expovariate(1 / 30000.0))
            label = {"type": "label", "event_id": event_id, "ts": iso(ts + delay), "label": 1}
            if ts + delay < end:
                lines.append((ts + delay, 1, json.dumps(label, separators=(",", ":"))))
    for i, bad in enumerate(MALFORMED * 2):
        at = START + (i + 0.5) * (end - START) / (2 * len(MALFORMED))
        lines.append((at, 2, bad.replace('"TS"', json.dumps(iso(at)))))
    lines.sort(key=lambda item: (item[0], item[1]))
    for _, _, line in lines:
        yield line


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:  # normal approximation, rounded
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def write(path: str | Path = EVENTS, seed: int = 7, days: int = 28) -> dict:
    """Write the sample to `path` (gzip, mtime 0) and return a summary of what it holds."""
    started = time.perf_counter()
    payments = labels = malformed = 0
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out:
        for line in generate(seed, days):
            out.write(line.encode() + b"\n")
            if line.startswith('{"type":"payment"'):
                payments += 1
            elif line.startswith('{"type":"label"'):
                labels += 1
            else:
                malformed += 1
    return {"path": str(path), "payments": payments, "labels": labels, "malformed": malformed,
            "bytes": Path(path).stat().st_size, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--out", default=str(EVENTS))
    args = parser.parse_args()
    print(json.dumps(write(args.out, args.seed, args.days)))


if __name__ == "__main__":
    main()
