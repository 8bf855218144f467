"""Generate the bundled sample: 28 days of ride-hailing payments with fraud, chargebacks and a drift.

    python -m sample_data.generate            # rewrites sample_data/payments.jsonl.gz
    python -m sample_data.generate --seed 8 --days 7 --out /tmp/other.jsonl.gz

The story (see sample_data/README.md):
  * ~5,000 riders in 8 cities, each with a home city, one or two cards, a phone, a usual ride length
    and spending level; ~1,500 drivers. Rides follow the local daily commute and the weekly rhythm.
    Some riders join during the month, change phones, travel, or share a card with their household,
    so no single oddity is proof of fraud.
  * Days 0-13, stolen cards: a real rider's card is used for 3-8 rides within an hour or so, from a
    new phone, usually in another city than its owner's, for long, expensive rides.
  * Days 14-27, the pattern drifts to fraud rings: a few stolen cards and shared phones spread over
    many fresh accounts, ordinary amounts, rides hours apart, all in the card owners' city. A model
    that learned the first pattern misses this one until it re-learns.
  * Chargebacks (label 1) arrive 20 minutes to 36 hours after the ride, ~2% of them 50-70 hours late
    (after the config's 2-day horizon). Legitimate rides get no label: the config's default says so.
  * Mess: ~0.5% of payments are written up to two minutes late (out of order), and 22 lines are
    malformed (bad JSON, missing or bad fields) for the dead-letter table.

Only `random.Random(seed)` is used, and gzip is written with mtime 0: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import itertools
import json
import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sample_data import DRIVERS, EVENTS

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday
DAY = 86_400.0
HOUR = 3_600.0
DRIFT_DAY = 14  # phase 2 (fraud rings) starts at 2026-01-15T00:00:00Z
CITIES = {  # name: (share of riders and drivers, UTC offset in January, base fare, price per km)
    "lisbon": (0.16, 0, 1.8, 0.95), "porto": (0.10, 0, 1.7, 0.90),
    "madrid": (0.17, 1, 2.0, 1.05), "barcelona": (0.14, 1, 2.1, 1.10),
    "paris": (0.15, 1, 3.0, 1.60), "lyon": (0.07, 1, 2.5, 1.35),
    "berlin": (0.13, 1, 3.5, 1.45), "milan": (0.08, 1, 3.0, 1.30),
}
NAMES = list(CITIES)
SHARES = [CITIES[c][0] for c in NAMES]
N_USERS = 5_000
N_DRIVERS = 1_500
RIDES_PER_DAY = 3_500.0
# Relative ride rate by local hour: quiet nights, commute peaks at 8 and 18.
HOURLY = [0.35, 0.22, 0.14, 0.1, 0.1, 0.22, 0.55, 1.25, 1.7, 1.2, 0.9, 0.9,
          1.0, 1.0, 0.9, 0.95, 1.1, 1.5, 1.75, 1.4, 1.1, 0.95, 0.8, 0.55]
HOURLY_MEAN = sum(HOURLY) / 24
WEEKDAY = [0.95, 0.97, 1.0, 1.02, 1.15, 1.1, 0.85]  # Monday .. Sunday
PEAK = 1.4  # hours at least this busy may surge
OUT_OF_ORDER = 0.006  # share of payments written 5-120 s late
LATE_LABELS = 0.02  # share of chargebacks that arrive 50-70 h after the ride


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds.

    >>> iso(START + 192.345)
    '2026-01-01T00:03:12.345Z'
    """
    moment = datetime.fromtimestamp(round(ts, 3), tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Ids:
    """Distinct random ids like u04217: no id hints at when, or why, its entity was made."""

    def __init__(self, rng: random.Random, prefix: str, digits: int) -> None:
        self.rng, self.prefix, self.digits, self.used = rng, prefix, digits, set()

    def __call__(self) -> str:
        while True:
            n = self.rng.randrange(10 ** self.digits)
            if n not in self.used:
                self.used.add(n)
                return f"{self.prefix}{n:0{self.digits}d}"


class Weighted:
    """Pick items in proportion to their weights."""

    def __init__(self, items: list, weights: list[float]) -> None:
        self.items = items
        self.cumulative = list(itertools.accumulate(weights))

    def pick(self, rng: random.Random):
        return self.items[bisect.bisect(self.cumulative, rng.random() * self.cumulative[-1])]


class User:
    __slots__ = ("user_id", "city", "cards", "device", "new_device", "switch_at", "level", "km",
                 "method", "joined")


class World:
    """Riders, cards, phones and drivers, built once from the seed."""

    def __init__(self, rng: random.Random, end: float) -> None:
        self.rng = rng
        self.user_ids, self.card_ids, self.device_ids = Ids(rng, "u", 5), Ids(rng, "c", 6), Ids(rng, "dv", 6)
        self.users: list[User] = []
        for _ in range(N_USERS):
            u = User()
            u.user_id, u.city = self.user_ids(), rng.choices(NAMES, SHARES)[0]
            u.cards = [self.card_ids() for _ in range(1 if rng.random() < 0.7 else 2)]
            u.device = self.device_ids()
            u.new_device, u.switch_at = None, math.inf
            if rng.random() < 0.04:  # a new phone some time this month
                u.new_device, u.switch_at = self.device_ids(), rng.uniform(START, end)
            u.level = rng.lognormvariate(0, 0.25)  # premium car, tips, detours
            u.km = rng.lognormvariate(1.35, 0.4)  # usual ride length, median ~3.9 km
            u.method = "card" if rng.random() < 0.65 else "wallet"
            u.joined = START - 1.0 if rng.random() < 0.92 else rng.uniform(START, end - 2 * DAY)
            self.users.append(u)
        by_city: dict[str, list[User]] = {c: [] for c in NAMES}
        for u in self.users:
            by_city[u.city].append(u)
        for u in self.users:  # households: ~3% of riders also pay with a partner's card
            if rng.random() < 0.03:
                partner = rng.choice(by_city[u.city])
                if partner is not u and partner.cards[0] not in u.cards:
                    u.cards.append(partner.cards[0])
        self.by_city = by_city
        self.riders = {c: Weighted(us, [min(5.0, rng.lognormvariate(0, 0.7)) for _ in us]) for c, us in by_city.items()}
        self.drivers = {}
        for c, share in zip(NAMES, SHARES):
            ids = [f"d{c[:3]}{j:04d}" for j in range(1, round(N_DRIVERS * share) + 1)]
            self.drivers[c] = Weighted(ids, [rng.lognormvariate(0, 0.6) for _ in ids])

    def rider(self, city: str, ts: float) -> User:
        """An active rider, usually of `city`; a visitor from elsewhere now and then."""
        while True:
            home = city if self.rng.random() < 0.96 else self.rng.choices(NAMES, SHARES)[0]
            user = self.riders[home].pick(self.rng)
            if user.joined <= ts:
                return user

    def victim(self, city: str | None = None) -> User:
        """A rider whose card gets stolen (of `city` if given)."""
        while True:
            user = self.rng.choice(self.by_city[city] if city else self.users)
            if user.joined < START:
                return user


def _payment(ts: float, user_id: str, card: str, device: str, city: str, driver: str, amount: float,
             method: str, km: float, fraud: bool) -> dict:
    return {"ts": ts, "user_id": user_id, "card_id": card, "driver_id": driver, "device_id": device,
            "city": city, "amount": round(max(amount, 3.0), 2), "payment_method": method,
            "ride_km": round(km, 1), "fraud": fraud}


def _fare(rng: random.Random, city: str, km: float, level: float) -> float:
    _, _, base, per_km = CITIES[city]
    return (base + per_km * km) * level * rng.lognormvariate(0, 0.08)


def _legit(rng: random.Random, world: World, city: str, ts: float, local_hour: int) -> dict:
    user = world.rider(city, ts)
    km = min(80.0, max(0.6, user.km * rng.lognormvariate(0, 0.5)))
    surge = rng.uniform(1.1, 1.9) if HOURLY[local_hour] >= PEAK and rng.random() < 0.35 else 1.0
    card = user.cards[0] if len(user.cards) == 1 or rng.random() < 0.75 else rng.choice(user.cards[1:])
    device = user.device if ts < user.switch_at else user.new_device
    method = user.method if rng.random() < 0.9 else ("wallet" if user.method == "card" else "card")
    return _payment(ts, user.user_id, card, device, city, world.drivers[city].pick(rng),
                    _fare(rng, city, km, user.level * surge), method, km, False)


def _stolen_card_burst(rng: random.Random, world: World, ts: float) -> list[dict]:
    """Phase 1: one stolen card, 3-8 rides within an hour or so, new phone, far from home, pricey."""
    victim = world.victim()
    card = rng.choice(victim.cards)
    device = world.device_ids()
    user_id = victim.user_id if rng.random() < 0.35 else world.user_ids()  # account takeover or new account
    city = victim.city
    if rng.random() < 0.75:
        while city == victim.city:
            city = rng.choices(NAMES, SHARES)[0]
    method = "card" if rng.random() < 0.75 else "wallet"
    rides = []
    for _ in range(rng.randint(3, 8)):
        km = min(80.0, max(2.0, rng.lognormvariate(2.3, 0.45)))
        rides.append(_payment(ts, user_id, card, device, city, world.drivers[city].pick(rng),
                              _fare(rng, city, km, rng.uniform(1.2, 2.0)), method, km, True))
        ts += 45.0 + rng.expovariate(1 / 400.0)
    return rides


def _fraud_ring(rng: random.Random, world: World, start: float, end: float) -> list[dict]:
    """Phase 2: a few stolen cards and shared phones over many fresh accounts in one city,
    ordinary rides hours apart, sometimes with a colluding driver."""
    city = rng.choices(NAMES, SHARES)[0]
    cards = [rng.choice(world.victim(city).cards) for _ in range(rng.randint(1, 3))]
    devices = [world.device_ids() for _ in range(rng.randint(1, 2))]
    accounts = [world.user_ids() for _ in range(rng.randint(4, 9))]
    accomplice = world.drivers[city].pick(rng) if rng.random() < 0.5 else None
    rides = []
    ts = start
    for _ in range(rng.randint(15, 40)):
        ts += 300.0 + rng.expovariate(1 / 7200.0)
        if ts >= end:
            break
        km = min(60.0, max(0.8, rng.lognormvariate(1.45, 0.45)))
        driver = accomplice if accomplice and rng.random() < 0.6 else world.drivers[city].pick(rng)
        rides.append(_payment(ts, rng.choice(accounts), rng.choice(cards), rng.choice(devices), city,
                              driver, _fare(rng, city, km, rng.uniform(0.9, 1.3)),
                              rng.choice(["card", "wallet"]), km, True))
    return rides


# Lines the appliance must dead-letter. "TS" becomes a real timestamp, "N" the copy's number.
MALFORMED = [
    '{"type": "payment", "event_id": "bad-N-1", "ts": "2026-01-0',  # truncated JSON
    '{"type": "payment", "event_id": "bad-N-2", "user_id": "u00001", "card_id": "c000001", "amount": 9.5}',
    '{"type": "payment", "event_id": "bad-N-3", "ts": "2026-13-45T99:00:00Z", "user_id": "u00002"}',
    '[1, 2]',
    '{}',
    '"just a string"',
    'not json at all',
    '{"type": "payment", "event_id": "bad-N-4", "ts": "TS", "user_id": "u00003", "card_id": "c000004", '
    '"driver_id": "dlis0001", "device_id": "dv000004", "city": "lisbon", "amount": "abc", '
    '"payment_method": "card", "ride_km": 3.1}',
    '{"type": "payment", "event_id": "bad-N-5", "ts": "TS", "user_id": "u00004", "card_id": "c000005", '
    '"driver_id": "dlis0002", "device_id": "dv000005", "city": "lisbon", "amount": -12.0, '
    '"payment_method": "card", "ride_km": 3.1}',
    '{"type": "payment", "event_id": "bad-N-6", "ts": "TS", "card_id": "c000006", "driver_id": "dpor0003", '
    '"device_id": "dv000006", "city": "porto", "amount": 8.0, "payment_method": "card", "ride_km": 2.0}',
    '{"type": "label", "event_id": "p0000003", "ts": "TS", "label": "maybe"}',
]
MALFORMED_COPIES = 2


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:  # normal approximation, rounded
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _rides(rng: random.Random, world: World, end: float, rides_per_day: float) -> list[dict]:
    rides: list[dict] = []
    for hour in range(int((end - START) // HOUR)):
        t0 = START + hour * HOUR
        for city, share in zip(NAMES, SHARES):
            local = hour + CITIES[city][1]
            weekday = (3 + local // 24) % 7
            night_out = 1.8 if (weekday in (4, 5) and local % 24 >= 22) or \
                (weekday in (5, 6) and local % 24 < 4) else 1.0
            rate = rides_per_day * share / 24 * HOURLY[local % 24] / HOURLY_MEAN * WEEKDAY[weekday] * night_out
            for _ in range(_poisson(rng, rate)):
                rides.append(_legit(rng, world, city, t0 + rng.random() * HOUR, local % 24))
    drift = min(START + DRIFT_DAY * DAY, end)
    t = START + HOUR
    while t < drift:  # phase 1: a stolen-card burst every ~2 hours
        rides += [r for r in _stolen_card_burst(rng, world, t) if r["ts"] < drift]
        t += rng.uniform(0.4, 1.6) * 7800.0
    t = drift
    while t < end:  # phase 2: a new ring every ~11 hours, each active for up to 3 days
        rides += _fraud_ring(rng, world, t, min(end, t + 3 * DAY))
        t += rng.uniform(0.5, 1.5) * 37000.0
    rides.sort(key=lambda r: r["ts"])
    return rides


def _chargeback_delay(rng: random.Random) -> tuple[float, bool]:
    if rng.random() < LATE_LABELS:
        return rng.uniform(50, 70) * HOUR, True
    while True:  # most disputes within hours, a tail to a day and a half
        delay = 1200.0 + rng.expovariate(1 / (8 * HOUR))
        if delay <= 36 * HOUR:
            return delay, False


def _build(seed: int = 7, days: int = 28, rides_per_day: float = RIDES_PER_DAY) -> tuple[list[str], dict]:
    """The lines in file order and a summary of what they hold."""
    rng = random.Random(seed)
    end = START + days * DAY
    world = World(rng, end)
    rides = _rides(rng, world, end, rides_per_day)
    drift = START + DRIFT_DAY * DAY
    stats = {"seed": seed, "days": days, "payments": len(rides), "riders": N_USERS,
             "fraud_payments": 0, "fraud_phase1": 0, "fraud_phase2": 0, "payments_phase1": 0,
             "payments_phase2": 0, "labels": 0, "late_labels": 0, "labels_after_end": 0}
    lines: list[tuple[float, int, str]] = []
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for n, ride in enumerate(rides, start=1):
        event_id = f"p{n:07d}"
        ts, fraud = ride["ts"], ride["fraud"]
        phase = "phase1" if ts < drift else "phase2"
        stats["payments_" + phase] += 1
        line = {"type": "payment", "event_id": event_id, "ts": iso(ts)}
        line.update((k, v) for k, v in ride.items() if k not in ("ts", "fraud"))
        written = ts + (rng.uniform(5, 120) if rng.random() < OUT_OF_ORDER else 0.0)
        lines.append((written, 0, dumps(line)))
        if fraud:
            stats["fraud_payments"] += 1
            stats["fraud_" + phase] += 1
            delay, late = _chargeback_delay(rng)
            if ts + delay >= end:
                stats["labels_after_end"] += 1
                continue
            stats["labels"] += 1
            stats["late_labels"] += late
            label = {"type": "label", "event_id": event_id, "ts": iso(ts + delay), "label": 1}
            lines.append((ts + delay, 1, dumps(label)))
    count = len(MALFORMED) * MALFORMED_COPIES
    for i, bad in enumerate(MALFORMED * MALFORMED_COPIES):
        at = START + (i + rng.uniform(0.2, 0.8)) * (end - START) / count
        bad = bad.replace('"TS"', json.dumps(iso(at))).replace("bad-N-", f"bad-{i // len(MALFORMED) + 1}-")
        lines.append((at, 2, bad))
    lines.sort(key=lambda item: (item[0], item[1]))
    out = [line for _, _, line in lines]
    newest, behind = "", 0
    for line in out:
        if line.startswith('{"type":"payment"'):
            ts_text = line[line.index('"ts":"') + 6:][:24]
            behind += ts_text < newest
            newest = max(newest, ts_text)
    stats.update(
        malformed=count, out_of_order=behind, lines=len(out),
        fraud_rate=round(stats["fraud_payments"] / max(1, len(rides)), 4),
        fraud_rate_phase1=round(stats["fraud_phase1"] / max(1, stats["payments_phase1"]), 4),
        fraud_rate_phase2=round(stats["fraud_phase2"] / max(1, stats["payments_phase2"]), 4),
        out_of_order_rate=round(behind / max(1, len(rides)), 4),
    )
    return out, stats


def generate(seed: int = 7, days: int = 28, rides_per_day: float = RIDES_PER_DAY) -> Iterator[str]:
    """Yield the sample's lines (JSON text, no newline) in file order."""
    lines, _ = _build(seed, days, rides_per_day)
    yield from lines


def write(path: str | Path = EVENTS, seed: int = 7, days: int = 28) -> dict:
    """Write the sample to `path` (gzip, mtime 0) and return a summary of what it holds."""
    started = time.perf_counter()
    lines, stats = _build(seed, days)
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out:
        out.write(data)
    stats.update(path=str(path), bytes=Path(path).stat().st_size,
                 seconds=round(time.perf_counter() - started, 1))
    return stats


VEHICLES = ["standard", "comfort", "van", "electric"]


def driver_table(seed: int = 7) -> str:
    """The drivers' static attributes as CSV text: rating, years on the platform, vehicle class.

    Drawn from their own seed so the payments do not depend on them; the sample config joins this
    table on `driver_id` to show attribute features (a driver's record is not a fraud signal here).
    """
    rng = random.Random(seed * 7919 + 1)
    rows = ["driver_id,city,rating,years_active,vehicle"]
    for city, share in zip(NAMES, SHARES):
        for j in range(1, round(N_DRIVERS * share) + 1):
            rating = round(min(5.0, rng.gauss(4.75, 0.15)), 2)
            years = round(rng.expovariate(1 / 2.5), 1)
            rows.append(f"d{city[:3]}{j:04d},{city},{rating},{years},{rng.choices(VEHICLES, [6, 2, 1, 1])[0]}")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--out", default=str(EVENTS))
    parser.add_argument("--drivers", default=str(DRIVERS), help="where to write the drivers' attributes CSV")
    args = parser.parse_args(argv)
    print(json.dumps(write(args.out, args.seed, args.days), indent=1))
    Path(args.drivers).write_text(driver_table(args.seed), encoding="utf-8")


if __name__ == "__main__":
    main()
