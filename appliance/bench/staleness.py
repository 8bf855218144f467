"""How stale the features a serving process reads are, while the sample is ingested.

A fresh `appliance up --serve-processes N` (the real entry point; N at least 2, so the online store is
published) replays the first `lines` of the sample at `speed` times event time (12,000x: the issue's
figure). Beside it, this process reads the online store (`<db>-online`) as a serving child does at
every request: one read transaction, the meta record. For each batch it sees, the staleness is the
time from the flow publishing the batch (its meta's `wall_ts`, set as the commit begins) to the first
read that saw it; reads every `POLL` seconds, so the figures carry that resolution. Printed per
batch: p50, p99, max, over the batches seen until the source ended.

    python -m appliance.bench.staleness [LINES] [SPEED]
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from appliance.bench import ingest, lifecycle

POLL = 0.001  # seconds between two reads of the online store's meta record


@dataclass
class StalenessPlan:
    lines: int = 30_000
    speed: float = 12_000.0
    processes: int = 2
    timeout: float = 600.0  # seconds the replay may take


def measure(plan: StalenessPlan, scratch: Path, config: str, log: Any = lambda _: None) -> dict[str, Any]:
    from appliance.storage.online_store import OnlineReader, OnlineStoreError, online_path

    source = scratch / "staleness.jsonl"
    ingest.sample_subset(plan.lines, source)
    log(f"staleness: {plan.lines:,} lines at {plan.speed:g}x, {plan.processes} serving processes")
    app = lifecycle.launch(scratch, config, str(source), plan.speed, name="stale",
                           extra=("--serve-processes", str(max(2, plan.processes))))
    stale: list[float] = []
    try:
        reader = OnlineReader(online_path(app.db))
        last = None
        deadline = time.monotonic() + plan.timeout
        next_check = time.monotonic() + 0.5
        try:
            while time.monotonic() < deadline:
                with reader.view() as view:
                    try:
                        meta = view.meta()
                    except OnlineStoreError:
                        meta = None
                seen = time.time()
                if meta is not None and meta.seq != last:
                    if last is not None:  # not the batch published before this reader started
                        stale.append(seen - meta.wall_ts)
                    last = meta.seq
                elif time.monotonic() >= next_check:  # asking `stats` every poll would load the primary
                    if _source_done(app):
                        break
                    next_check = time.monotonic() + 0.5
                time.sleep(POLL)  # the resolution of the measurement, not a synchronisation
        finally:
            reader.close()
        events = app.stats()["counts"]["events"]
    finally:
        app.stop()
        for path in scratch.glob("stale.db*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not stale:
        raise RuntimeError("no batch was published while the sample was ingested")
    ordered = sorted(stale)
    return {"lines": plan.lines, "speed": plan.speed, "processes": max(2, plan.processes), "events": events,
            "batches_seen": len(ordered), "p50_ms": round(ordered[len(ordered) // 2] * 1e3, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 2),
            "max_ms": round(ordered[-1] * 1e3, 2), "poll_ms": POLL * 1e3}


def _source_done(app: lifecycle.Launched) -> bool:
    stats = app.stats()
    return (stats.get("source") or {}).get("ended_at") is not None and not stats["inbox_lag_bytes"]


if __name__ == "__main__":  # pragma: no cover - a measuring tool
    import tempfile

    import sample_data

    plan = StalenessPlan(*(int(sys.argv[1]),) if len(sys.argv) > 1 else ())
    if len(sys.argv) > 2:
        plan.speed = float(sys.argv[2])
    with tempfile.TemporaryDirectory(prefix="apl-stale-") as scratch:
        figures = measure(plan, Path(scratch), sample_data.CONFIG, log=print)
    sys.stdout.buffer.write(orjson.dumps(figures) + b"\n")
