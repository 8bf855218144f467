"""`appliance bench`: every comparison of the benchmarks issue in one run, printed as one table.

Sections, in the order they run (each in fresh processes, in a scratch directory):

1. ingest: `appliance replay` of the sample's first N lines vs the raw River loop, A B A B
   (`appliance.bench.ingest`); the ratio of the medians. Each round also replays on 2 Bytewax
   workers: events/s and CPU per event against 1 worker; and exports the replay's store
   (`export training-set`) in one process and with the default entity workers: events/s.
2. serving: the appliance (`appliance up`, ingesting the sample at a steady speed) vs FastAPI +
   uvicorn, an asyncio echo server and redis-server, interleaved per round (`serving`).
3. console: CPU of `appliance console` at its default rate against that same appliance (`console`).
4. start-up and 5. recovery after `kill -9` (`lifecycle`).
6. memory per entity (`appliance bench memory` in a fresh process, per entity count).
7. the store writer's rows/s as the store grows from empty to `store_bytes` (`store_growth`).

A section that cannot run (a peer not installed, tmux missing) becomes rows marked skipped with the
reason; the other sections still run. The sizes are a `plan.Plan`: `plan.SMOKE` is the same harness
with tiny sizes, for CI: it proves every row can be produced, not how fast anything is. The figures
become the table's rows in `table`.
"""

from __future__ import annotations

import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from appliance.bench import ingest, lifecycle, peers, serve_processes, serving, staleness, store_bytes, store_growth
from appliance.bench.console import console_cpu
from appliance.bench.measure import machine
from appliance.bench.plan import Plan
from appliance.bench.table import rows
from appliance.offline.partitions import default_workers

REQUESTS = 1000  # distinct requests each server is sent in turn


def run(plan: Plan, workdir: Path | None = None, log: Callable[[str], None] = lambda _: None,
        save: Path | None = None) -> dict[str, Any]:
    """Run every section of `plan`; return the machine, the plan, each section's figures and the rows.

    With `save`, the report so far is also written there (JSON) after each section, so a long run
    that is interrupted keeps what it measured.
    """
    scratch = Path(tempfile.mkdtemp(prefix="apb-", dir=str(workdir) if workdir else "/tmp"))
    report: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "plan": asdict(plan), "sections": {}}
    sections = report["sections"]
    if save is not None:
        sections = _Saving(report, save)
        report["sections"] = sections
    try:
        import sample_data

        config = str(sample_data.CONFIG)
        log(f"ingest: first {plan.ingest_lines:,} lines, {plan.ingest_rounds} rounds A B")
        sections["ingest"] = _section(lambda: _ingest(plan, scratch, config))
        log("serving: appliance vs peers")
        try:
            sections["serving"], sections["console"] = _serving(plan, scratch, config, sections["ingest"], log)
        except Exception as exc:  # noqa: BLE001 - the appliance did not serve: both sections are skipped
            reason = f"{type(exc).__name__}: {str(exc).strip()[-300:]}"
            sections["serving"], sections["console"] = {"skipped": reason}, {"skipped": reason}
        log("serving processes: latency, throughput, CPU per request, a publication's reach")
        sections["serve_processes"] = _section(lambda: _serve_processes(plan, scratch, config))
        log(f"staleness of served features: {plan.staleness.lines:,} lines at {plan.staleness.speed:g}x")
        sections["staleness"] = _section(lambda: staleness.measure(plan.staleness, scratch, config, log))
        log(f"start-up: {plan.startup_rounds} rounds")
        sections["startup"] = _section(lambda: _startup(plan, scratch, config))
        log("recovery after kill -9")
        sections["recovery"] = _section(lambda: _recovery(plan, scratch, config))
        log(f"memory: {', '.join(f'{n:,}' for n in plan.memory_entities)} entities")
        sections["memory"] = _section(lambda: _memory(plan, config))
        log(f"store writer: empty to {plan.store_bytes / 1e9:g} GB")
        sections["store_growth"] = _section(lambda: store_growth.measure(plan.store_bytes, scratch, log))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name in ("feature_vectors", "model_file"):  # inputs of the serving section, not figures
        sections.get("ingest", {}).pop(name, None)
    report["rows"] = [asdict(row) for row in rows(sections, plan)]
    return report


class _Saving(dict):
    """The sections dict of a report that rewrites the report to a file whenever a section is set."""

    def __init__(self, report: dict[str, Any], path: Path) -> None:
        super().__init__()
        self.report, self.path = report, path

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        figures = {name: {k: v for k, v in section.items() if k not in ("feature_vectors", "model_file")}
                   for name, section in self.items()}
        self.path.write_bytes(orjson.dumps(self.report | {"sections": figures}, option=orjson.OPT_INDENT_2))


def _section(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section; an exception becomes `{"skipped": reason}` so the others still run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported in the table, never hidden
        return {"skipped": f"{type(exc).__name__}: {str(exc).strip()[-300:]}"}


def _ingest(plan: Plan, scratch: Path, config: str) -> dict[str, Any]:
    source = scratch / "ingest.jsonl"
    counts = ingest.sample_subset(plan.ingest_lines, source)
    vectors, model = scratch / "vectors.pkl", scratch / "model.pkl"
    appliance_runs, raw_runs, two_worker_runs = [], [], []
    export_workers = default_workers() or 2  # the export's default here (2 on one core, to measure anything)
    export_runs: list[dict[str, Any]] = []
    export_worker_runs: list[dict[str, Any]] = []
    for i in range(plan.ingest_rounds):
        db = str(scratch / f"ingest{i}.db")
        appliance_runs.append(ingest.replay_once(config, str(source), db))
        two_worker_runs.append(ingest.replay_once(config, str(source), db + "-w2", workers=2))
        export_runs.append(ingest.export_once(config, db, 0))  # the replay's store, in one process...
        export_worker_runs.append(ingest.export_once(config, db, export_workers))  # ...and with the workers
        if i == 0:
            store = store_bytes.bytes_per_event(db)
            logged = ingest.logged_vectors(db, appliance_runs[0]["task"])
            vectors.write_bytes(pickle.dumps(logged))
        raw_runs.append(ingest.raw_once(str(vectors), appliance_runs[0]["spec"], appliance_runs[0]["task"],
                                        save_model=str(model) if i == 0 else None))
        for path in scratch.glob(f"ingest{i}.db*"):
            path.unlink()
    return {"lines": counts["lines"], "label_lines": counts["labels"], "events": appliance_runs[0]["events"],
            "labels_learned": appliance_runs[0]["labels_learned"], "spec": appliance_runs[0]["spec"],
            "appliance_events_per_second": [r["events_per_second"] for r in appliance_runs],
            "raw_events_per_second": [r["events_per_second"] for r in raw_runs],
            "cpu_us_per_event": [r["cpu_us_per_event"] for r in appliance_runs],
            "workers2_events_per_second": [r["events_per_second"] for r in two_worker_runs],
            "workers2_cpu_us_per_event": [r["cpu_us_per_event"] for r in two_worker_runs],
            "export_events": export_runs[0]["events"], "export_rows": export_runs[0]["rows"],
            "export_workers": export_workers,
            "export_events_per_second": [r["events_per_second"] for r in export_runs],
            "export_workers_events_per_second": [r["events_per_second"] for r in export_worker_runs],
            "store": store, "model_file": str(model), "feature_vectors": [x for x, _ in logged[-REQUESTS:]]}


def _serving(plan: Plan, scratch: Path, config: str, ingested: dict[str, Any],
             log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    source = scratch / "serve.jsonl"
    ingest.sample_subset(plan.serve_lines or 10**9, source)
    app = lifecycle.launch(scratch, config, str(source), plan.serve_speed, name="serve")
    started: list[peers.Peer] = []
    skipped: dict[str, str] = {}
    try:
        paths: dict[str, str | None] = {}
        for kind in ("echo", "fastapi"):
            try:
                if kind == "fastapi" and "model_file" not in ingested:
                    raise RuntimeError("no model: the ingest section did not run")
                peer = peers.start(kind, str(scratch / f"{kind}.sock"), model=ingested.get("model_file"))
                started.append(peer)
                paths[kind] = peer.path
            except Exception as exc:  # noqa: BLE001 - a peer that cannot run is a skipped row
                skipped[kind] = str(exc).strip()[-300:]
                paths[kind] = None
        reply = _one_reply(app.socket)
        try:
            redis: peers.Peer | str = peers.start_redis(str(scratch), reply)
        except Exception as exc:  # noqa: BLE001 - installed but not starting: a skipped row too
            redis = f"redis-server did not start: {str(exc).strip()[-300:]}"
        if isinstance(redis, str):
            skipped["redis"] = redis
            paths["redis"] = None
        else:
            started.append(redis)
            paths["redis"] = redis.path
        servers = serving.targets(app.socket, paths["echo"], paths["fastapi"], paths["redis"],
                                  serving.sample_payments(str(source), REQUESTS), ingested.get("feature_vectors"))
        results = serving.compare(servers, plan.serving, ingest_counter=lambda: app.stats()["counts"]["events"])
        out: dict[str, Any] = {"ingest_speed": plan.serve_speed, "peers_skipped": skipped}
        for name, result in results.items():
            out[name] = {"p50_us": result.median("p50_us"), "p90_us": result.median("p90_us"),
                         "p99_us": result.median("p99_us"), "max_us": result.median("max_us"),
                         "throughput": result.median("throughput"), "rounds": result.rounds,
                         "errors": sum(r["errors"] + r["load_errors"] for r in result.rounds)}
        out["appliance"]["events_ingested"] = sum(r.get("events_ingested", 0) for r in results["appliance"].rounds)
        log(f"console: {plan.console_seconds:g} s at the default rate")
        console = _section(lambda: _console(app.socket, plan.console_seconds))
        return out, console
    finally:
        for peer in started:
            stopping = time.monotonic()
            peer.stop()
            log(f"serving: {peer.name} stopped in {time.monotonic() - stopping:.1f} s")
        log("serving: stopping the appliance (it answers what it received and drains its inbox first)")
        stopping = time.monotonic()
        code = app.stop()
        log(f"serving: the appliance stopped in {time.monotonic() - stopping:.1f} s with exit code {code}")


def _serve_processes(plan: Plan, scratch: Path, config: str) -> dict[str, Any]:
    return serve_processes.measure(plan.processes, scratch, config, REQUESTS)


def _console(socket_path: str, seconds: float) -> dict[str, Any]:
    result = console_cpu(socket_path, seconds)
    return {"skipped": result} if isinstance(result, str) else result


def _one_reply(socket_path: str) -> bytes:
    """A real predict reply of the appliance (what redis will hold, so both send the same bytes)."""
    from appliance.bench.measure import payments_like_sample, predict_line
    from appliance.bench.wire import Target

    target = Target("appliance", socket_path, (predict_line(payments_like_sample(1, seed=11)[0]),), "line", b"")
    with target.connect() as sock:
        return target.ask(sock).rstrip(b"\n")


def _startup(plan: Plan, scratch: Path, config: str) -> dict[str, Any]:
    source = scratch / "startup.jsonl"
    ingest.sample_subset(1000, source)
    seconds = lifecycle.startup(scratch, config, str(source), plan.startup_rounds)
    return {"seconds": seconds, "median": round(statistics.median(seconds), 3)}


def _recovery(plan: Plan, scratch: Path, config: str) -> dict[str, Any]:
    source = scratch / "recovery.jsonl"
    counts = ingest.sample_subset(plan.recovery_lines or 10**9, source)
    result = lifecycle.recovery(scratch, config, str(source), lines=counts["lines"])
    return result | {"source_lines": counts["lines"]}


def _memory(plan: Plan, config: str) -> dict[str, Any]:
    out = {}
    for entities in plan.memory_entities:
        proc = subprocess.run([sys.executable, "-m", "appliance", "bench", "memory", "--config", config,
                               "--entities", str(entities), "--json"], capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace").strip()[-300:])
        figures = orjson.loads(proc.stdout)
        figures.pop("machine", None)
        out[str(entities)] = figures
    return out


# -- the table ------------------------------------------------------------------------------------
