"""`appliance bench`: every comparison of the benchmarks issue in one run, printed as one table.

Sections, in the order they run (each in fresh processes, in a scratch directory):

1. ingest: `appliance replay` of the sample's first N lines vs the raw River loop, A B A B
   (`appliance.bench.ingest`); the ratio of the medians. Each round also replays on 2 Bytewax
   workers: events/s and CPU per event against 1 worker.
2. serving: the appliance (`appliance up`, ingesting the sample at a steady speed) vs FastAPI +
   uvicorn, an asyncio echo server and redis-server, interleaved per round (`serving`).
3. console: CPU of `appliance console` at its default rate against that same appliance (`console`).
4. start-up and 5. recovery after `kill -9` (`lifecycle`).
6. memory per entity (`appliance bench memory` in a fresh process, per entity count).
7. the store writer's rows/s as the store grows from empty to `store_bytes` (`store_growth`).

A section that cannot run (a peer not installed, tmux missing) becomes rows marked skipped with the
reason; the other sections still run. `SMOKE` is the same harness with tiny sizes, for CI: it proves
every row can be produced, not how fast anything is.
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from appliance.bench import ingest, lifecycle, peers, serve_processes, serving, store_bytes, store_growth
from appliance.bench.console import console_cpu
from appliance.bench.measure import machine


@dataclass
class Plan:
    """Sizes of one run. `FULL` is what docs/benchmarks.md records; `SMOKE` runs in the tests."""

    ingest_lines: int = 20_000
    ingest_rounds: int = 5
    serving: serving.ServingPlan = field(default_factory=serving.ServingPlan)
    processes: serve_processes.ProcessesPlan = field(default_factory=serve_processes.ProcessesPlan)
    serve_speed: float = 6000.0  # event-time speed of the appliance's ingest while serving is measured
    serve_lines: int | None = None  # lines of the sample it ingests then (None: all)
    console_seconds: float = 30.0
    startup_rounds: int = 5
    recovery_lines: int | None = None  # None: the whole sample
    memory_entities: tuple[int, ...] = (100_000,)
    store_bytes: int = 10 * 10**9  # the store writer's rate measured as the store grows to this


FULL = Plan()
SMOKE = Plan(ingest_lines=1500, ingest_rounds=2,
             serving=serving.ServingPlan(rounds=2, requests=200, warmup=20, seconds=0.5, load_warmup=0.2),
             serve_speed=3000.0, serve_lines=3000, console_seconds=1.0, startup_rounds=1, recovery_lines=1500,
             memory_entities=(2000,), store_bytes=16 * 10**6,
             processes=serve_processes.ProcessesPlan(counts=(1, 2), latency_counts=(1, 2), requests=100, warmup=10,
                                                     seconds=0.5, load_warmup=0.2, speed=3000.0, lines=1500,
                                                     switches=2, versions_wait=5.0))

TARGETS = {  # measure -> (peer, comparison, bound) as the issue states them
    "ingest": ("raw River loop", ">=", 0.6),
    "ingest_workers": ("1 worker", ">=", 1.5),
    "ingest_workers_cpu": ("1 worker", "<=", 1.3),
    "p50": ("redis GET", "<=", 2.0),
    "p99": ("redis GET", "<=", 3.0),
    "throughput_redis": ("redis GET", ">=", 0.45),
    "throughput_fastapi": ("FastAPI+uvicorn", ">=", 7.0),
    "memory": (None, "<=", 1024.0),
    "startup": (None, "<=", 3.0),
    "recovery": (None, "<=", 5.0),
    "store_growth": ("the same writer, empty store", ">=", 0.8),
    "store_bytes": (None, "<=", 200.0),
}


NOT_RUN = {"skipped": "not run"}
REQUESTS = 1000  # distinct requests each server is sent in turn


@dataclass
class Row:
    """One line of the table: the appliance's figure, the peer's, their ratio and the target."""

    measure: str
    unit: str
    appliance: float | None
    peer: str | None = None
    peer_value: float | None = None
    ratio: float | None = None
    target: str | None = None
    verdict: str = "-"
    note: str = ""


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
    for i in range(plan.ingest_rounds):
        db = str(scratch / f"ingest{i}.db")
        appliance_runs.append(ingest.replay_once(config, str(source), db))
        two_worker_runs.append(ingest.replay_once(config, str(source), db + "-w2", workers=2))
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
def rows(sections: dict[str, Any], plan: Plan) -> list[Row]:
    """Every row of the table, measured or skipped, in a fixed order."""
    out: list[Row] = []
    ing = sections.get("ingest", NOT_RUN)
    if "skipped" in ing:
        out.append(_skipped("ingest", "events/s", ing["skipped"]))
    else:
        app, raw = statistics.median(ing["appliance_events_per_second"]), statistics.median(ing["raw_events_per_second"])
        out.append(_compare("ingest", "events/s", app, "raw River loop", raw, "ingest",
                            f"first {ing['lines']:,} lines of the sample: {ing['events']:,} payments, "
                            f"{ing['labels_learned']:,} labels learned; medians of {len(ing['raw_events_per_second'])}"))
        out += _worker_rows(ing)
    if "skipped" not in ing and "store" in ing:
        store = ing["store"]
        out.append(_compare("store bytes per logged event", "B", store["history_bytes_per_event"], None, None,
                            "store_bytes", f"event + prediction + label rows and their indexes (SQLite page "
                            f"accounting, dbstat) over the {store['events']:,} events of the ingest replay; "
                            f"the whole file {store['file_bytes_per_event']:,} B/event"))
    srv = sections.get("serving", NOT_RUN)
    names = {"redis": "redis GET", "fastapi": "FastAPI+uvicorn", "echo": "asyncio echo"}
    for metric, unit, label in (("p50_us", "µs", "predict p50"), ("p99_us", "µs", "predict p99"),
                                ("throughput", "req/s", f"{plan.serving.clients}-client throughput")):
        for peer in ("redis", "fastapi", "echo"):
            key = {"p50_us": "p50", "p99_us": "p99"}.get(metric, f"throughput_{peer}")
            target = key if key in TARGETS and TARGETS[key][0] == names[peer] else None
            if "skipped" in srv:
                out.append(_skipped(label, unit, srv["skipped"], names[peer]))
            elif peer not in srv or srv.get("appliance") is None:
                out.append(_skipped(label, unit, srv.get("peers_skipped", {}).get(peer, "not measured"), names[peer]))
            else:
                out.append(_compare(label, unit, srv["appliance"][metric], names[peer], srv[peer][metric], target))
    out += _processes_rows(sections.get("serve_processes", NOT_RUN), plan)
    mem = sections.get("memory", NOT_RUN)
    if "skipped" in mem:
        out.append(_skipped("memory per entity", "B", mem["skipped"]))
    for entities, figures in ({} if "skipped" in mem else mem).items():
        out.append(_compare(f"memory per entity, {int(entities):,} entities", "B", figures["bytes_per_entity"],
                            None, None, "memory"))
    start = sections.get("startup", NOT_RUN)
    out.append(_skipped("start-up to first prediction", "s", start["skipped"]) if "skipped" in start else
               _compare("start-up to first prediction", "s", start["median"], None, None, "startup",
                        f"median of {len(start['seconds'])}"))
    rec = sections.get("recovery", NOT_RUN)
    out.append(_skipped("serving again after kill -9", "s", rec["skipped"]) if "skipped" in rec else
               _compare("serving again after kill -9", "s", rec["seconds_to_first_prediction"], None, None,
                        "recovery", f"after {rec['events_before_kill']:,} events"))
    grow = sections.get("store_growth", NOT_RUN)
    label = f"store writer at {plan.store_bytes / 1e9:g} GB"
    out.append(_skipped(label, "rows/s", grow["skipped"], "the same writer, empty store") if "skipped" in grow else
               _compare(label, "rows/s", grow["full_rows_per_second"], "the same writer, empty store",
                        grow["empty_rows_per_second"], "store_growth",
                        f"{grow['events']:,} events, {grow['bytes_per_event']:,.0f} B/event; medians of the first "
                        "and the last 3 of 40 windows"))
    con = sections.get("console", NOT_RUN)
    out.append(_skipped("console CPU at default rate", "% core", con["skipped"]) if "skipped" in con else
               Row("console CPU at default rate", "% core", con["console_percent"],
                   note=f"over {con['seconds']:g} s; tmux {con['tmux_percent']} %"))
    return out


def _processes_rows(sp: dict[str, Any], plan: Plan) -> list[Row]:
    """Serving processes: N against 1 while ingesting; CPU per request for each count; a publication's reach."""
    if "skipped" in sp:
        return [_skipped("serving processes", "", sp["skipped"])]
    counts, out = sp["counts"], []
    one = counts.get("1", {})
    for n in sp["latency_counts"]:
        if n == 1:
            continue
        many = counts[str(n)]
        note = f"while ingesting ({many['events_ingested']:,} events); one sequential connection"
        out.append(_compare(f"predict p50, {n} serving processes", "µs", many["p50_us"], "1 process",
                            one.get("p50_us"), None, note))
        out.append(_compare(f"predict p99, {n} serving processes", "µs", many["p99_us"], "1 process",
                            one.get("p99_us"), None, note))
        out.append(_compare(f"{plan.processes.clients}-client throughput, {n} serving processes", "req/s",
                            many["throughput"], "1 process", one.get("throughput"), None, "while ingesting"))
    for n, figures in sorted(counts.items(), key=lambda item: int(item[0])):
        out.append(_compare(f"server CPU per request, {n} serving process{'' if n == '1' else 'es'}", "µs", figures["cpu_us_per_request"],
                            None if n == "1" else "1 process", None if n == "1" else one.get("cpu_us_per_request"),
                            None, f"CPU of every serving process / replies, {plan.processes.clients} clients, idle "
                            f"but for them; {figures['idle_throughput']:,.0f} req/s"))
    pub = sp.get("publication")
    n = max(sp["latency_counts"])
    if pub is None:
        out.append(_skipped(f"a publication reaching all {n} processes", "ms", "fewer than two versions registered"))
    else:
        out.append(Row(f"a publication reaching all {n} processes", "ms", pub["median_ms"],
                       note=f"a rollback to the primary serving it and the online store naming it; median "
                            f"of {len(pub['every_process_ms'])}, max {pub['max_ms']} ms, {pub.get('missed', 0)} not arrived in 30 s"
                            f"{_missed_which(pub)}"))
    return out


def _missed_which(pub: dict[str, Any]) -> str:
    """Which rollbacks did not arrive, and the inbox backlog each was sent behind (a command waits in it)."""
    lags = pub.get("inbox_lag_at_send_bytes") or []
    which = [f"#{k} behind {lags[k - 1]:,} B" for k in pub.get("missed_switches", []) if k <= len(lags)]
    return f" ({', '.join(which)})" if which else ""


def _worker_rows(ing: dict[str, Any]) -> list[Row]:
    """Ingest on 2 Bytewax workers against 1, in events/s and in CPU per event (summed over the
    process's threads and children), from the same rounds."""
    median = statistics.median
    rounds = f"medians of {len(ing['workers2_events_per_second'])}, rounds interleaved with 1 worker"
    return [_compare("ingest, 2 workers", "events/s", median(ing["workers2_events_per_second"]), "1 worker",
                     median(ing["appliance_events_per_second"]), "ingest_workers", rounds),
            _compare("CPU per event, 2 workers", "µs", median(ing["workers2_cpu_us_per_event"]), "1 worker",
                     median(ing["cpu_us_per_event"]), "ingest_workers_cpu", rounds)]


def _compare(measure: str, unit: str, value: float | None, peer: str | None, peer_value: float | None,
             target_key: str | None, note: str = "") -> Row:
    row = Row(measure, unit, _round(value), peer, _round(peer_value), note=note)
    if peer_value:
        row.ratio = round(value / peer_value, 3) if value is not None else None
    if target_key is not None:
        _, op, bound = TARGETS[target_key]
        subject = row.ratio if peer is not None else row.appliance
        row.target = f"{op} {bound:g}" + ("x" if peer is not None else f" {unit}")
        if subject is not None:
            met = subject >= bound if op == ">=" else subject <= bound
            row.verdict = "met" if met else "missed"
    return row


def _skipped(measure: str, unit: str, reason: str, peer: str | None = None) -> Row:
    return Row(measure, unit, None, peer, verdict="skipped", note=reason)


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    return round(value, 3) if abs(value) < 10 else round(value, 1)


def format_table(report: dict[str, Any]) -> str:
    """The rows as a Markdown table, with the machine and date above it."""
    m = report["machine"]
    lines = [f"appliance bench, {report['date']}: Python {m['python']}, {m['cpus']} CPUs, {m['platform']}", "",
             "| measure | appliance | peer | peer value | ratio | target | verdict | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        unit = row["unit"]
        lines.append("| " + " | ".join([
            row["measure"], _fmt(row["appliance"], unit), row["peer"] or "", _fmt(row["peer_value"], unit),
            "" if row["ratio"] is None else f"{row['ratio']:.2f}x", row["target"] or "", row["verdict"],
            row["note"].replace("|", "/").replace("\n", " ")]) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return (f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:g} {unit}")


def smoke_plan(**changes: Any) -> Plan:
    """`SMOKE` with some sizes changed."""
    return replace(SMOKE, **changes)
