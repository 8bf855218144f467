"""Measurements behind `appliance bench`: what the numbers in docs/benchmarks.md come from.

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

from .client import Client


def machine() -> dict[str, Any]:
    """What the numbers ran on."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def predict_latency(socket_path: str, requests: int = 5000, warmup: int = 500, seed: int = 1) -> dict[str, Any]:
    """Round trip of sequential `predict` requests (one in flight) over the Unix socket, in µs.

    The events look like the sample's payments; `ingest` is false so the measurement does not add
    events to the stream it is measuring alongside.
    """
    rng = random.Random(seed)
    cities = ["lisbon", "porto", "madrid", "barcelona", "paris", "lyon", "berlin", "milan"]
    lines = []
    for i in range(requests + warmup):
        event = {"user_id": f"u{rng.randrange(5000):05d}", "card_id": f"c{rng.randrange(6500):06d}",
                 "driver_id": f"d{rng.choice(cities)[:3]}{rng.randrange(160):04d}",
                 "device_id": f"dv{rng.randrange(5000):06d}", "city": rng.choice(cities),
                 "amount": round(rng.uniform(3, 60), 2), "payment_method": "card", "ride_km": round(rng.uniform(1, 20), 1)}
        lines.append(orjson.dumps({"op": "predict", "id": i, "event": event, "ingest": False}) + b"\n")
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


def _q(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)
