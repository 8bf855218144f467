"""The online store under load: a replica's predict while the flow publishes, and its staleness.

One process replays the first N lines of the bundled sample through the real dataflow
(`bytewax.testing.run_main`, the sample config, the engine publishing to LMDB after every batch);
another process is a serving replica (`serving.replica.Replica`) scoring requests for entities of
the sample as fast as it can, for as long as the replay runs. Printed (JSON):

- the replica's score time (one LMDB read transaction, entity states decoded, `FeatureSpace.compute`,
  the served model) p50/p99, beside the same request computed in the engine's process at the end;
- staleness: for each batch the replica saw, the time from the writer starting its commit to the
  replica's first request that saw it (wall clocks of one machine), p50/p99/max;
- how many published versions reached the replica, and the replay's publish cost per batch (CPU
  time of the flow's thread, so that other load on the machine does not count).

    python -m appliance.bench.online_store [LINES]
"""

from __future__ import annotations

import gzip
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson


def _config(db: str) -> Any:
    import sample_data
    from appliance.config.file import load_config

    config = load_config(str(Path(sample_data.__file__).parent / "appliance.toml"))
    from dataclasses import replace

    return replace(config, db=db)


def _requests(config: Any, lines: list[bytes], n: int) -> list[tuple[dict, float]]:
    """Payments of the replayed lines as predict requests (their parsed fields, a minute later)."""
    from appliance.errors import InvalidEvent
    from appliance.ingest.events import Event, decode, parse_event

    rng = random.Random(1)
    out = []
    for line in rng.sample(lines, min(n, len(lines))):
        try:
            event = parse_event(decode(line), config.event, config.model.task)
        except InvalidEvent:
            continue
        if isinstance(event, Event):
            out.append((event.values, event.ts + 60.0))
    return out


def _replica(db: str, path: str, requests: list, started: Any, done: Any, queue: Any) -> None:
    from appliance.serving.replica import Replica
    from appliance.storage.online_store import OnlineReader

    replica = Replica(_config(db), OnlineReader(path))
    latencies, stale, versions = [], [], set()
    last_seq = 0
    started.set()
    i = 0
    while not done.is_set():
        values, ts = requests[i % len(requests)]
        i += 1
        begun = time.perf_counter_ns()
        score = replica.score(values, ts)
        latencies.append(time.perf_counter_ns() - begun)
        if score.meta.seq != last_seq and last_seq:  # (not the rebuild's batch, committed before this start)
            stale.append(time.time() - score.meta.wall_ts)
        last_seq = score.meta.seq
        versions.add(score.version)
    queue.put({"latency_ns": latencies, "stale_s": stale, "versions": len(versions)})


def run(lines_wanted: int = 20_000) -> dict[str, Any]:
    from bytewax.testing import TestingSink, TestingSource, run_main

    import sample_data
    from appliance.engine.core import Engine
    from appliance.engine.online import OnlinePublisher
    from appliance.storage.online_store import OnlineWriter, online_path
    from dataflows.appliance_flow import build_flow

    base = Path(tempfile.mkdtemp(prefix="apl-online-"))
    db = str(base / "a.db")
    lines = []
    with gzip.open(sample_data.EVENTS, "rb") as source:
        for line in source:
            if len(lines) >= lines_wanted:
                break
            lines.append(line.rstrip(b"\n"))
    config = _config(db)
    engine = Engine(config)
    publisher = OnlinePublisher(OnlineWriter(online_path(db)), engine)
    publisher.rebuild()
    requests = _requests(config, lines, 2000)
    ctx = mp.get_context("spawn")
    started, done, queue = ctx.Event(), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_replica, args=(db, str(online_path(db)), requests, started, done, queue))
    reader.start()
    started.wait(120)
    costs: list[int] = []

    def after_batch(engine: Engine, force: bool) -> bool:
        begun = time.thread_time_ns()
        publisher.publish()
        costs.append(time.thread_time_ns() - begun)
        return True

    items = [("file", i, line) for i, line in enumerate(lines, start=1)]
    run_main(build_flow(TestingSource(items, batch_size=64), TestingSink([]), engine, checkpoint_seconds=3600,
                        after_batch=after_batch))
    done.set()
    seen = queue.get(timeout=120)
    reader.join(60)
    in_process = []
    for values, ts in requests[:500]:
        begun = time.perf_counter_ns()
        x = engine.space.compute(values, ts, engine.entities)
        engine.model.predict(engine.model.served.model, x)
        in_process.append(time.perf_counter_ns() - begun)
    return {"lines": len(lines), "batches": len(costs), "publish_cpu_per_batch_us": _quantiles(costs, 1e3),
            "publish_cpu_total_s": round(sum(costs) / 1e9, 3),
            "replica_requests": len(seen["latency_ns"]), "replica_score_us": _quantiles(seen["latency_ns"], 1e3),
            "in_process_score_us": _quantiles(in_process, 1e3),
            "staleness_ms": {**_quantiles(seen["stale_s"], 1e-3), "max": round(max(seen["stale_s"]) * 1e3, 2)},
            "versions_seen": seen["versions"], "batches_seen": len(seen["stale_s"])}


def _quantiles(values: list, unit: float) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(ordered[len(ordered) // 2] / unit, 2), "p99": round(ordered[int(len(ordered) * 0.99)] / unit, 2)}


if __name__ == "__main__":
    print(orjson.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)).decode())
