"""Shared fixtures: short socket paths, small configs and event streams."""

from __future__ import annotations

import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.config import config_from_dict


@pytest.fixture
def short_dir():
    """A short temporary directory: AF_UNIX socket paths must stay under ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="apl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


SMALL_CONFIG = {
    "event": {"keys": ["user", "card"], "numeric": ["amount"], "categorical": ["city"],
              "allowed_lateness": "10m", "bounds": {"amount": [0, 1e6]}},
    "labels": {"horizon": "1h", "default": 0},
    "model": {"task": "classification", "publish_every": 20, "metric_window": 50},
    "features": {
        "hash_buckets": 8,
        "aggregate": [
            {"name": "card_n_10m", "key": "card", "op": "count", "window": "10m"},
            {"name": "card_sum_1h", "key": "card", "op": "sum", "field": "amount", "window": "1h"},
            {"name": "user_mean_1h", "key": "user", "op": "mean", "field": "amount", "window": "1h"},
            {"name": "user_max_1h", "key": "user", "op": "max", "field": "amount", "window": "1h"},
            {"name": "user_min_1h", "key": "user", "op": "min", "field": "amount", "window": "1h"},
            {"name": "user_std_1h", "key": "user", "op": "std", "field": "amount", "window": "1h"},
            {"name": "card_users_1h", "key": "card", "op": "distinct", "field": "user", "window": "1h"},
            {"name": "card_since", "key": "card", "op": "since"},
            {"name": "user_last_amount", "key": "user", "op": "last", "field": "amount"},
            {"name": "card_rate_1h", "key": "card", "op": "rate", "window": "1h"},
        ],
        "expression": [{"name": "amount_vs_mean", "expr": "amount / (user_mean_1h + 1)"}],
    },
}


@pytest.fixture
def small_config():
    return config_from_dict(SMALL_CONFIG)


def make_stream(n: int = 400, seed: int = 3, fraud_every: int = 9) -> list[dict]:
    """Payments on a few cards and users, with labels for some of them arriving later."""
    import random

    rng = random.Random(seed)
    events: list[dict] = []
    labels: list[tuple[float, dict]] = []
    t = 1_767_225_600.0
    for i in range(n):
        t += rng.uniform(1, 90)
        fraud = i % fraud_every == 0
        event = {"type": "payment", "event_id": f"e{i}", "ts": t, "user": f"u{rng.randrange(12)}",
                 "card": f"c{rng.randrange(15)}", "amount": round(rng.uniform(50, 200) if fraud else rng.uniform(5, 40), 2),
                 "city": rng.choice(["lisbon", "porto", "faro"])}
        events.append(event)
        if fraud or rng.random() < 0.5:
            labels.append((t + rng.uniform(10, 1800), {"type": "label", "event_id": f"e{i}", "label": int(fraud)}))
    for ts, label in labels:
        label["ts"] = ts
    merged = [(e["ts"], 0, e) for e in events] + [(ts, 1, lab) for ts, lab in labels]
    merged.sort(key=lambda item: (item[0], item[1]))
    return [item[2] for item in merged]


@contextmanager
def serving(config, **options):
    """A real appliance serving `config` in this process (inbox and socket only: no source file)."""
    from appliance.runtime import Appliance, RunOptions

    ready = threading.Event()
    appliance = Appliance(config, RunOptions(serve=True, read_source=False, on_ready=ready.set, **options))
    thread = threading.Thread(target=appliance.run)
    thread.start()
    try:
        assert ready.wait(30), "the appliance never became ready"
        yield appliance
    finally:
        appliance.stop()
        thread.join(60)
