"""`appliance bench`'s table: one `Row` per figure, judged against the issues' targets (`TARGETS`), and
the table as Markdown (`format_table`)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from appliance.bench.plan import Plan

# measure -> (peer, comparison, bound) as the issue states them: the benchmarks issue (6) set the first
# ones; "Use every core" (18) set those of the workers, the serving processes and the staleness, and
# set again the latency and FastAPI ones (6 asked p50 <= 2x and p99 <= 3x redis, throughput >= 7x FastAPI).
TARGETS = {
    "ingest": ("raw River loop", ">=", 0.6),
    "ingest_workers": ("1 worker", ">=", 1.5),
    "ingest_workers_cpu": ("1 worker", "<=", 1.3),
    "p50": ("redis GET", "<=", 5.0),
    "p99": ("redis GET", "<=", 5.0),
    "p99_echo": ("asyncio echo", "<=", 3.0),
    "throughput_redis": ("redis GET", ">=", 0.45),
    "throughput_fastapi": ("FastAPI+uvicorn", ">=", 2.0),
    "cpu_per_request": ("1 process", "<=", 1.2),  # with 4 serving processes
    "memory": (None, "<=", 1024.0),
    "startup": (None, "<=", 3.0),
    "recovery": (None, "<=", 5.0),
    "store_growth": ("the same writer, empty store", ">=", 0.8),
    "store_bytes": (None, "<=", 200.0),
    "staleness": (None, "<=", 50.0),
}

NOT_RUN = {"skipped": "not run"}
# the serving section's (figure, peer) -> its target, where the issues set one
SERVING_TARGETS = {("p50_us", "redis"): "p50", ("p99_us", "redis"): "p99", ("p99_us", "echo"): "p99_echo",
                   ("throughput", "redis"): "throughput_redis", ("throughput", "fastapi"): "throughput_fastapi"}
TARGET_PROCESSES = "4"  # the serving processes whose CPU per request is held to that of 1


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


def rows(sections: dict[str, Any], plan: Plan) -> list[Row]:
    """Every row of the table, measured or skipped, in a fixed order."""
    out: list[Row] = []
    ing = sections.get("ingest", NOT_RUN)
    if "skipped" in ing:
        out.append(_skipped("ingest", "events/s", ing["skipped"]))
    else:
        app, raw = statistics.median(ing["appliance_events_per_second"]), statistics.median(ing["raw_events_per_second"])
        out.append(compare("ingest", "events/s", app, "raw River loop", raw, "ingest",
                            f"first {ing['lines']:,} lines of the sample: {ing['events']:,} payments, "
                            f"{ing['labels_learned']:,} labels learned; medians of {len(ing['raw_events_per_second'])}"))
        out += _worker_rows(ing)
        if "export_events_per_second" in ing:  # (absent from a report saved before session 33)
            out.append(_export_row(ing))
    if "skipped" not in ing and "store" in ing:
        store = ing["store"]
        out.append(compare("store bytes per logged event", "B", store["history_bytes_per_event"], None, None,
                            "store_bytes", f"event rows (each with its prediction), label rows and the bodies' "
                            f"compression dictionary (SQLite page accounting, dbstat) over the {store['events']:,} "
                            f"events of the ingest replay; "
                            f"the whole file {store['file_bytes_per_event']:,} B/event"))
    srv = sections.get("serving", NOT_RUN)
    names = {"redis": "redis GET", "fastapi": "FastAPI+uvicorn", "echo": "asyncio echo"}
    for metric, unit, label in (("p50_us", "µs", "predict p50"), ("p99_us", "µs", "predict p99"),
                                ("throughput", "req/s", f"{plan.serving.clients}-client throughput")):
        for peer in ("redis", "fastapi", "echo"):
            target = SERVING_TARGETS.get((metric, peer))
            if "skipped" in srv:
                out.append(_skipped(label, unit, srv["skipped"], names[peer]))
            elif peer not in srv or srv.get("appliance") is None:
                out.append(_skipped(label, unit, srv.get("peers_skipped", {}).get(peer, "not measured"), names[peer]))
            else:
                out.append(compare(label, unit, srv["appliance"][metric], names[peer], srv[peer][metric], target))
    out += _processes_rows(sections.get("serve_processes", NOT_RUN), plan)
    mem = sections.get("memory", NOT_RUN)
    if "skipped" in mem:
        out.append(_skipped("memory per entity", "B", mem["skipped"]))
    for entities, figures in ({} if "skipped" in mem else mem).items():
        out.append(compare(f"memory per entity, {int(entities):,} entities", "B", figures["bytes_per_entity"],
                            None, None, "memory"))
    start = sections.get("startup", NOT_RUN)
    out.append(_skipped("start-up to first prediction", "s", start["skipped"]) if "skipped" in start else
               compare("start-up to first prediction", "s", start["median"], None, None, "startup",
                        f"median of {len(start['seconds'])}"))
    rec = sections.get("recovery", NOT_RUN)
    out.append(_skipped("serving again after kill -9", "s", rec["skipped"]) if "skipped" in rec else
               compare("serving again after kill -9", "s", rec["seconds_to_first_prediction"], None, None,
                        "recovery", f"after {rec['events_before_kill']:,} events"))
    grow = sections.get("store_growth", NOT_RUN)
    label = f"store writer at {plan.store_bytes / 1e9:g} GB"
    out.append(_skipped(label, "rows/s", grow["skipped"], "the same writer, empty store") if "skipped" in grow else
               compare(label, "rows/s", grow["full_rows_per_second"], "the same writer, empty store",
                        grow["empty_rows_per_second"], "store_growth",
                        f"{grow['events']:,} events, {grow['bytes_per_event']:,.0f} B/event; medians of the first "
                        "and the last 3 of 40 windows"))
    stale = sections.get("staleness", NOT_RUN)
    out.append(_skipped("served features staleness p99", "ms", stale["skipped"]) if "skipped" in stale else
               compare("served features staleness p99", "ms", stale["p99_ms"], None, None, "staleness",
                        f"a batch's publication to the online store's next read, {stale['processes']} serving "
                        f"processes, {stale['lines']:,} lines at {stale['speed']:g}x; p50 {stale['p50_ms']} ms, "
                        f"max {stale['max_ms']} ms over {stale['batches_seen']:,} batches; reads every "
                        f"{stale['poll_ms']:g} ms"))
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
        out.append(compare(f"predict p50, {n} serving processes", "µs", many["p50_us"], "1 process",
                            one.get("p50_us"), None, note))
        out.append(compare(f"predict p99, {n} serving processes", "µs", many["p99_us"], "1 process",
                            one.get("p99_us"), None, note))
        out.append(compare(f"{plan.processes.clients}-client throughput, {n} serving processes", "req/s",
                            many["throughput"], "1 process", one.get("throughput"), None, "while ingesting"))
    for n, figures in sorted(counts.items(), key=lambda item: int(item[0])):
        out.append(compare(f"server CPU per request, {n} serving process{'' if n == '1' else 'es'}", "µs", figures["cpu_us_per_request"],
                            None if n == "1" else "1 process", None if n == "1" else one.get("cpu_us_per_request"),
                            "cpu_per_request" if n == TARGET_PROCESSES else None, f"CPU of every serving process / replies, {plan.processes.clients} clients, idle "
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
    return [compare("ingest, 2 workers", "events/s", median(ing["workers2_events_per_second"]), "1 worker",
                     median(ing["appliance_events_per_second"]), "ingest_workers", rounds),
            compare("CPU per event, 2 workers", "µs", median(ing["workers2_cpu_us_per_event"]), "1 worker",
                     median(ing["cpu_us_per_event"]), "ingest_workers_cpu", rounds)]


def _export_row(ing: dict[str, Any]) -> Row:
    """`export training-set` of the ingest replay's store with its entity workers against one process."""
    median = statistics.median
    return compare("export training-set, workers", "events/s", median(ing["export_workers_events_per_second"]),
                   "one process", median(ing["export_events_per_second"]), None,
                   f"{ing['export_workers']} entity workers against none, on the ingest replay's store "
                   f"({ing['export_events']:,} events, {ing['export_rows']:,} rows, JSONL); medians of "
                   f"{len(ing['export_events_per_second'])}, rounds interleaved")


def compare(measure: str, unit: str, value: float | None, peer: str | None, peer_value: float | None,
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
