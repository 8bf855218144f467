"""Serving processes (`appliance up --serve-processes N`): what more processes buy and cost.

For each N of `ProcessesPlan.counts`, a fresh `appliance up --serve-processes N` (the real entry
point, in its own process tree):

- while it ingests the sample at a steady event-time speed (N in `latency_counts`): predict round
  trips of one sequential client (p50/p99; one connection, so one process answers all of them,
  whichever the kernel gave it) and the throughput of `clients` concurrent connections
  (`wire.concurrent_processes`: the kernel spreads them over the processes);
- once its source has ended (idle but for the requests): server CPU per request, the CPU seconds of
  every serving process (`health.serving_pids`, from /proc: the primary, and with N > 1 its N
  children, which take the connections) and of the store writer process
  (`stats.store.pid`) over a load run, divided by the replies. A `predict` with `ingest: false` is
  still logged, read by the flow and written to the store, so the primary's dataflow CPU and the
  writer's for it are included, as they are part of what a request costs.

On the largest N that ingested, a publication's reach: `rollback` and `promote` in turn between two
registered versions; from sending the command to (a) the primary answering with the new version
(asked on its private socket, so it is the primary that answers) and (b) the online store naming it,
which every serving child reads at its next request. Polled every `POLL` seconds.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bench import ingest, lifecycle, serving, wire
from appliance.bench.measure import predict_line
from appliance.serving.client import Client

POLL = 0.001  # seconds between two looks for a publication's arrival
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessesPlan:
    """How much to measure; `counts` for CPU per request, `latency_counts` for latency and throughput."""

    counts: tuple[int, ...] = (1, 2, 3, 4)
    latency_counts: tuple[int, ...] | None = None  # None: 1 and the default (`default_serve_processes`)
    requests: int = 3000
    warmup: int = 300
    clients: int = 16
    seconds: float = 5.0
    load_warmup: float = 1.0
    speed: float = 6000.0  # event-time speed of the ingest while latency is measured
    lines: int = 30_000  # lines of the sample ingested
    switches: int = 6  # rollbacks and promotes timed, in turn
    versions_wait: float = 120.0  # seconds to wait for a second registered version (else no publication row)

    def latency(self) -> tuple[int, ...]:
        from appliance.runtime.interpreters import default_serve_processes

        return self.latency_counts or tuple(sorted({1, default_serve_processes()}))


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far of every thread of these processes."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def measure(plan: ProcessesPlan, scratch: Path, config: str, distinct: int = 1000,
            log: Any = lambda _: None) -> dict[str, Any]:
    """Every figure of the plan: per N, latency and throughput while ingesting, CPU per request idle;
    the requests are `predict`s of `distinct` payments of the sample, sent in turn."""
    source = scratch / "processes.jsonl"
    ingest.sample_subset(plan.lines, source)
    events = serving.sample_payments(str(source), distinct)
    lines = tuple(predict_line(event, i + 1) for i, event in enumerate(events))
    out: dict[str, Any] = {"counts": {}, "publication": None}
    latency_counts = plan.latency()
    out["latency_counts"] = list(latency_counts)
    for n in sorted(set(plan.counts) | set(latency_counts)):
        log(f"serving processes: {n}")
        ingesting = n in latency_counts
        app = lifecycle.launch(scratch, config, str(source), plan.speed if ingesting else 0.0, name=f"sp{n}",
                               extra=("--serve-processes", str(n)))
        try:
            target = wire.Target("appliance", app.socket, lines, "line", b'"ok":true')
            figures: dict[str, Any] = {}
            if ingesting:
                figures.update(_while_ingesting(app, target, plan))
                if n == max(latency_counts):
                    out["publication"] = _publication(app, plan.switches, plan.versions_wait)
            _wait_source_end(app)
            figures.update(_cpu_per_request(app, target, plan))
            out["counts"][str(n)] = figures
        finally:
            app.stop()
            for path in scratch.glob(f"sp{n}.db*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return out


def _while_ingesting(app: lifecycle.Launched, target: wire.Target, plan: ProcessesPlan) -> dict[str, Any]:
    before = app.stats()["counts"]["events"]
    sequential = wire.sequential(target, plan.requests, plan.warmup)
    load = wire.concurrent_processes(target, plan.clients, plan.seconds, warmup=plan.load_warmup)
    return {"p50_us": sequential["p50_us"], "p99_us": sequential["p99_us"], "throughput": load["per_second"],
            "errors": sequential["errors"] + load["errors"],
            "events_ingested": app.stats()["counts"]["events"] - before}


def _wait_source_end(app: lifecycle.Launched, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while (app.stats().get("source") or {}).get("ended_at") is None or app.stats()["inbox_lag_bytes"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the source did not end in time")
        time.sleep(0.1)


def _cpu_per_request(app: lifecycle.Launched, target: wire.Target, plan: ProcessesPlan) -> dict[str, Any]:
    with Client(app.socket) as client:
        pids = client.request("health")["serving_pids"]
        writer = client.request("stats")["store"].get("pid")
    pids = [*pids, writer] if writer is not None else pids
    before = cpu_seconds(pids)
    load = wire.concurrent_processes(target, plan.clients, plan.seconds, warmup=0.0)
    used = cpu_seconds(pids) - before
    replies = load["per_second"] * plan.seconds
    # the primary and, with N > 1, its N serving children (the store writer is counted apart)
    return {"serving_pids": len(pids) - (writer is not None), "idle_throughput": load["per_second"], "cpu_seconds": round(used, 3),
            "cpu_us_per_request": round(used / replies * 1e6, 1) if replies else None}


def _publication(app: lifecycle.Launched, switches: int, wait: float) -> dict[str, Any] | None:
    """Milliseconds from a rollback or promote to the primary serving it and the online store naming it:
    `rollback`s, each to the version that served before it (the first also pauses publication)."""
    from appliance.storage.online_store import OnlineReader, online_path

    private = app.socket + ".p"
    with Client(app.socket) as client:
        deadline = time.monotonic() + wait
        while len(client.request("models")["versions"]) < 2 or not os.path.exists(private):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        reader = OnlineReader(online_path(app.db))
        primary_ms: list[float] = []
        store_ms: list[float] = []
        missed: list[int] = []  # which switches (1-based) did not arrive
        lags: list[int] = []  # the inboxes' backlog at each send: a command waits in the primary's behind it
        try:
            with Client(private) as primary:
                probe = target_probe()
                for switch in range(1, switches + 1):  # each to the version that served before (the first pauses publication)
                    lags.append(int(primary.request("stats")["inbox_lag_bytes"]))
                    sent = time.perf_counter()
                    version = int(client.request("rollback")["version"])
                    arrived = _arrival(primary, probe, reader, version, sent)
                    if arrived is None:
                        missed.append(switch)
                        continue
                    primary_ms.append(round(arrived[0] * 1000, 2))
                    store_ms.append(round(arrived[1] * 1000, 2))
        finally:
            reader.close()
    if not primary_ms:
        return None
    reach = [max(a, b) for a, b in zip(primary_ms, store_ms, strict=True)]
    return {"primary_ms": primary_ms, "online_store_ms": store_ms, "every_process_ms": reach, "missed": len(missed),
            "missed_switches": missed, "inbox_lag_at_send_bytes": lags,
            "median_ms": round(statistics.median(reach), 2), "max_ms": max(reach)}


def _arrival(primary: Client, probe: dict[str, Any], reader: Any, version: int,
             sent: float) -> tuple[float, float] | None:
    """Seconds until the primary serves `version` and until the online store names it (None: 30 s passed)."""
    name = f"v{version}"
    seen_primary = seen_store = None
    while seen_primary is None or seen_store is None:
        if time.perf_counter() - sent > 30:
            return None
        if seen_primary is None and primary.request("predict", **probe)["version"] == name:
            seen_primary = time.perf_counter() - sent
        if seen_store is None:
            with reader.view() as view:
                if view.meta().version == version:
                    seen_store = time.perf_counter() - sent
        time.sleep(POLL)
    return seen_primary, seen_store


def target_probe() -> dict[str, Any]:
    from appliance.bench.measure import payments_like_sample

    return {"event": payments_like_sample(1, seed=5)[0], "ingest": False}
