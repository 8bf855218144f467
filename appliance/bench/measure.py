"""Single measurements: the predict round trip of a running appliance, feature state per entity,
ONNX scoring per row (`appliance bench predict|memory|offline`).

Speed is measured here, never asserted in tests. Each function returns plain figures; the CLI
prints them with the machine they ran on.
"""

from __future__ import annotations

import os
import platform
import random
import time
from typing import Any

import orjson

from appliance.serving.client import Client


def machine() -> dict[str, Any]:
    """What the numbers ran on."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def predict_latency(socket_path: str, requests: int = 5000, warmup: int = 500, seed: int = 1) -> dict[str, Any]:
    """Round trip of sequential `predict` requests (one in flight) over the Unix socket, in µs.

    The events look like the sample's payments; `ingest` is false so the measurement does not add
    events to the stream it is measuring alongside.
    """
    lines = [predict_line(event, i) for i, event in enumerate(payments_like_sample(requests + warmup, seed))]
    timings = []
    errors = 0
    with Client(socket_path) as client:
        for i, line in enumerate(lines):
            started = time.perf_counter_ns()
            reply = client.send_line(line)
            elapsed = time.perf_counter_ns() - started
            if i >= warmup:
                timings.append(elapsed / 1000.0)
                errors += not reply.get("ok")
    timings.sort()
    return {"requests": len(timings), "errors": errors, "p50_us": _q(timings, 0.5), "p90_us": _q(timings, 0.9),
            "p99_us": _q(timings, 0.99), "max_us": round(timings[-1], 1),
            "per_second": round(len(timings) / (sum(timings) / 1e6), 1)}


def payments_like_sample(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """`count` payment events with the sample's fields and entity id formats (no id, no time: the
    appliance fills them in), drawn from a seeded generator."""
    rng = random.Random(seed)
    cities = ["lisbon", "porto", "madrid", "barcelona", "paris", "lyon", "berlin", "milan"]
    events = []
    for _ in range(count):
        events.append({"user_id": f"u{rng.randrange(5000):05d}", "card_id": f"c{rng.randrange(6500):06d}",
                       "driver_id": f"d{rng.choice(cities)[:3]}{rng.randrange(160):04d}",
                       "device_id": f"dv{rng.randrange(5000):06d}", "city": rng.choice(cities),
                       "amount": round(rng.uniform(3, 60), 2), "payment_method": "card",
                       "ride_km": round(rng.uniform(1, 20), 1)})
    return events


def predict_line(event: dict[str, Any], request_id: int = 1) -> bytes:
    """One `predict` request line that scores `event` without adding it to the stream."""
    return orjson.dumps({"op": "predict", "id": request_id, "event": event, "ingest": False}) + b"\n"


def entity_memory(config: Any, entities: int, events_per_entity: int = 3, seed: int = 1) -> dict[str, Any]:
    """Resident bytes per entity of `config`'s feature state, for `entities` entities over all keys.

    Each entity gets `events_per_entity` events spread over its longest window (so every bucket
    ring and distinct set holds something). Measured as growth of the process's resident memory
    around building the store, which counts what Python allocates for the dicts, tuples and arrays.
    """
    import gc

    from appliance.features.space import FeatureSpace

    space = FeatureSpace.for_config(config)
    rng = random.Random(seed)
    keys = list(space.layouts)
    longest = max((a.window for a in config.features.aggregates), default=3600.0) or 3600.0
    gc.collect()
    before = _rss()
    store = space.new_store()
    started = time.perf_counter()
    t0 = 1_767_225_600.0
    per_key = entities // max(1, len(keys))
    for i in range(per_key):
        for j in range(events_per_entity):
            values = {key: f"{key[:2]}{i:08d}" for key in keys}
            for name in config.event.numeric:
                values[name] = round(rng.uniform(1, 100), 2)
            for name in config.event.categorical:
                values[name] = f"v{rng.randrange(8)}"
            space.update(values, t0 + i * 0.001 + j * longest / events_per_entity * 0.9, store)
    elapsed = time.perf_counter() - started
    gc.collect()
    grown = _rss() - before
    count = space.entity_count(store)
    by_key = {key: round(sum(_state_size(entity, state) for entity, state in list(store[key].items())[:1000])
                         / min(1000, len(store[key])), 1) for key in keys if store[key]}
    return {"entities": count, "keys": len(keys), "events_per_entity": events_per_entity,
            "rss_bytes": grown, "bytes_per_entity": round(grown / count, 1), "state_bytes_by_key": by_key,
            "updates_per_second": round(per_key * events_per_entity / elapsed)}


def _state_size(entity: str, state: tuple) -> int:
    """Bytes of one entity's state by `sys.getsizeof`: key string, state tuple, array, the distinct
    counts' tuple and each one's array of (hash, bucket) pairs."""
    import sys

    arr, distinct = state
    return (sys.getsizeof(entity) + sys.getsizeof(state) + sys.getsizeof(arr) + sys.getsizeof(distinct)
            + sum(sys.getsizeof(pairs) for pairs in distinct))


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _q(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def offline_latency(model_path: str, db_path: str, rows: int = 5000) -> dict[str, Any]:
    """Per-row scoring time of an ONNX model (as the predict path calls it: a feature dict in, one
    score out) on feature vectors the engine logged, in µs; and the same rows as one batch."""
    import statistics

    import numpy as np

    from appliance.learning.onnx_model import load_onnx_file
    from appliance.storage.body import read_codecs, split_body
    from appliance.storage.rows import decode_vector
    from appliance.storage.store import open_db

    model = load_onnx_file(model_path, None, None)
    db = open_db(db_path)
    try:
        names = read_codecs(db.conn)
        logged = db.execute("SELECT body FROM events WHERE origin IS NOT NULL LIMIT ?", [rows])
        vectors = [decode_vector(split_body(row[0]).features, names) for row in logged]
    finally:
        db.conn.close()
    if not vectors:
        raise ValueError(f"no logged feature vectors in {db_path}")
    for x in vectors[:200]:
        model.predict_proba_one(x)  # warm-up: the session is built on first use
    times = []
    for x in vectors:
        started = time.perf_counter_ns()
        model.predict_proba_one(x)
        times.append((time.perf_counter_ns() - started) / 1000)
    matrix = np.array([[float(x.get(n) or 0.0) for n in model.features] for x in vectors], dtype=np.float32)
    started = time.perf_counter()
    model.score_many(matrix)
    batch = (time.perf_counter() - started) / len(vectors) * 1e6
    times.sort()
    return {"model": model.description, "features": len(model.features), "rows": len(vectors),
            "per_row_us": {"p50": round(statistics.median(times), 1), "p99": round(times[int(len(times) * 0.99)], 1),
                           "mean": round(statistics.fmean(times), 1)},
            "batch_us_per_row": round(batch, 2)}
