"""`appliance bench`: the whole comparison in one run (`appliance.bench.suite`), single
measurements (`predict` against a running appliance, `memory`, `offline`), `drift`, the drift
policy on River's synthetic streams (`appliance.bench.drift_harness`), and `learning`, the
comparison with a hand-written River script on real data (`appliance.bench.learning_eval`)."""

from __future__ import annotations

from typing import Any

import click
import orjson

from appliance.cli.options import CONFIG_OPTION, SOCKET_OPTION, friendly_errors, require_store


@click.group(invoke_without_command=True)
@click.option("--smoke", is_flag=True, help="Tiny sizes: proves every row can be produced (CI), not how fast.")
@click.option("--rounds", type=int, help="Interleaved rounds of the ingest and serving comparisons [full: 5].")
@click.option("--ingest-lines", type=int, help="Lines of the sample replayed by the ingest comparison [full: 20,000].")
@click.option("--requests", type=int, help="Sequential predict requests per round and server [full: 5,000].")
@click.option("--seconds", type=float, help="Seconds of concurrent load per round and server [full: 5].")
@click.option("--memory-entities", default=None, help="Comma-separated entity counts, e.g. 100000,1000000 "
                                                      "[full: 100000].")
@click.option("--recovery-lines", type=int, help="Lines ingested before the kill -9 [full: the whole sample].")
@click.option("--startup-rounds", type=int, help="Start-ups timed [full: 5].")
@click.option("--console-seconds", type=float, help="Seconds the console's CPU is measured over [full: 30].")
@click.option("--workdir", type=click.Path(file_okay=False, exists=True), help="Where the scratch directory goes "
                                                                                "[default: /tmp].")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON instead of the table.")
@click.option("--save", type=click.Path(dir_okay=False), help="Also write the JSON report here, after each section.")
@click.pass_context
@friendly_errors
def bench(ctx: click.Context, smoke: bool, rounds: int | None, ingest_lines: int | None, requests: int | None,
          seconds: float | None, memory_entities: str | None, recovery_lines: int | None,
          startup_rounds: int | None, console_seconds: float | None, workdir: str | None, as_json: bool,
          save: str | None) -> None:
    """Measure the appliance beside its peers and print one table of figures and ratios.

    Without a subcommand: ingest vs a raw River loop, predict latency and 16-client throughput vs
    redis-server, FastAPI + uvicorn and an asyncio echo server (while the appliance ingests), memory
    per entity, start-up, recovery after kill -9 and the console's CPU; A B A B rounds, medians.
    Peers that are not installed are reported as skipped. The subcommands measure one thing each.
    """
    if ctx.invoked_subcommand is not None:
        return
    from dataclasses import replace
    from pathlib import Path

    from appliance.bench import suite
    from appliance.bench.plan import FULL, SMOKE
    from appliance.bench.table import format_table

    plan = SMOKE if smoke else FULL
    serving = plan.serving
    if rounds is not None:
        plan = replace(plan, ingest_rounds=rounds)
        serving = replace(serving, rounds=rounds)
    if requests is not None:
        serving = replace(serving, requests=requests)
    if seconds is not None:
        serving = replace(serving, seconds=seconds)
    changes: dict[str, Any] = {"serving": serving}
    if ingest_lines is not None:
        changes["ingest_lines"] = ingest_lines
    if memory_entities:
        try:
            changes["memory_entities"] = tuple(int(n.replace("_", "")) for n in memory_entities.split(","))
        except ValueError:
            raise click.BadParameter(f'"{memory_entities}" is not a list of counts, e.g. 100000,1000000',
                                     param_hint="--memory-entities") from None
    if recovery_lines is not None:
        changes["recovery_lines"] = recovery_lines
    if startup_rounds is not None:
        changes["startup_rounds"] = startup_rounds
    if console_seconds is not None:
        changes["console_seconds"] = console_seconds
    plan = replace(plan, **changes)
    report = suite.run(plan, Path(workdir) if workdir else None, log=lambda text: click.echo(f"bench: {text}", err=True),
                       save=Path(save) if save else None)
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_table(report))


@bench.command("predict")
@SOCKET_OPTION
@click.option("--requests", type=int, default=5000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def bench_predict(socket_path: str, requests: int, as_json: bool) -> None:
    """Predict round trip, sequential client over the Unix socket (the appliance keeps ingesting)."""
    from appliance.bench import machine, predict_latency

    with Client_stats(socket_path) as before:
        events_before = before
    result = predict_latency(socket_path, requests)
    with Client_stats(socket_path) as after:
        result["events_ingested_meanwhile"] = after - events_before
    result["machine"] = machine()
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(f"predict round trip over {socket_path}, {result['requests']:,} sequential requests: "
                   f"p50 {result['p50_us']} µs · p90 {result['p90_us']} µs · p99 {result['p99_us']} µs · "
                   f"max {result['max_us']} µs · errors {result['errors']} · "
                   f"{result['events_ingested_meanwhile']:,} events ingested meanwhile")


@bench.command("memory")
@CONFIG_OPTION
@click.option("--entities", type=int, default=100_000, show_default=True, help="Entities over all keys.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def bench_memory(config_path: str | None, entities: int, as_json: bool) -> None:
    """Bytes per entity of the config's feature state (built in this process, no appliance needed)."""
    from appliance.bench import entity_memory, machine
    from appliance.runtime.settings import resolve_config

    result = entity_memory(resolve_config(config_path, None), entities)
    result["machine"] = machine()
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        by_key = ", ".join(f"{key} {size:,.0f} B" for key, size in result["state_bytes_by_key"].items())
        click.echo(f"{result['entities']:,} entities over {result['keys']} keys: {result['rss_bytes'] / 2**20:,.1f} MiB "
                   f"resident, {result['bytes_per_entity']:,.0f} B per entity (state by key: {by_key}); "
                   f"{result['updates_per_second']:,} updates/s")


@bench.command("offline")
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False))
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store whose logged feature vectors are scored.")
@click.option("--rows", type=int, default=5000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def bench_offline(model_file: str, config_path: str | None, db: str | None, rows: int, as_json: bool) -> None:
    """Per-row scoring time of an ONNX model (e.g. from `train-offline`) on logged feature vectors."""
    from appliance.bench import machine, offline_latency
    from appliance.runtime.settings import resolve_config

    config = resolve_config(config_path, None, db=db)
    require_store(config.db)
    result = offline_latency(model_file, config.db, rows)
    result["machine"] = machine()
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        per_row = result["per_row_us"]
        click.echo(f"{result['model']}, {result['features']} features, {result['rows']:,} rows: per row p50 "
                   f"{per_row['p50']} µs, p99 {per_row['p99']} µs (dict in, score out); as one batch "
                   f"{result['batch_us_per_row']} µs per row")


@bench.command("drift")
@click.option("--quick", is_flag=True, help="One abrupt change, one model, immediate labels, 3,000 events (CI).")
@click.option("--events", type=int, help="Events per drifting stream [full: 10,000; the change is halfway].")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON instead of the tables.")
@click.option("--save", type=click.Path(dir_okay=False), help="Also write the JSON report here.")
@friendly_errors
def bench_drift(quick: bool, events: int | None, seed: int, as_json: bool, save: str | None) -> None:
    """The drift policy vs alerts only vs no detection on River's synthetic streams with known changes.

    Alert delay (events after the change), the served model's accuracy before, right after and after
    recovery, per stream, label timing (immediate or delayed) and champion (linear, Hoeffding tree,
    adaptive tree, a frozen ONNX model); and false alarms on stationary streams.
    """
    from dataclasses import replace

    from appliance.bench import drift_harness

    plan = replace(drift_harness.QUICK if quick else drift_harness.FULL, seed=seed)
    if events is not None:
        plan = replace(plan, events=events)
    report = drift_harness.run(plan, log=lambda text: click.echo(f"bench drift: {text}", err=True))
    if save:
        with open(save, "wb") as handle:
            handle.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if as_json
               else drift_harness.format_table(report))


@bench.command("learning")
@click.option("--dataset", "names", multiple=True, help="A dataset by name (repeatable) [default: the development "
                                                         "ones: flights, flight_delays, movielens].")
@click.option("--held-out", is_flag=True, help="Also run the held-out dataset (mpls_stops): only for the final check.")
@click.option("--quick", is_flag=True, help="The first few thousand events of each dataset (a CI smoke test, "
                                            "not a result).")
@click.option("--workdir", type=click.Path(file_okay=False, exists=True), help="Where the scratch directory goes "
                                                                                "[default: /tmp].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the table.")
@friendly_errors
def bench_learning(names: tuple[str, ...], held_out: bool, quick: bool, workdir: str | None, as_json: bool) -> None:
    """The appliance (init + the keys a user names + replay) vs a hand-written River script, on real data.

    Per dataset: the served model's and the learner's progressive ROC AUC (or MAE) against River's
    progressive validation of a one-hot + scaled linear model with the same label timing, and the
    verdict against issue 15's targets. Needs the datasets' packages: pip install -e '.[eval]'.
    """
    from pathlib import Path

    from appliance.bench import learning_eval

    try:
        report = learning_eval.run(list(names) or None, quick=quick, held_out=held_out,
                                   workdir=Path(workdir) if workdir else None,
                                   log=lambda text: click.echo(f"bench learning: {text}", err=True))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from None
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(learning_eval.format_table(report))


class Client_stats:  # noqa: N801 - a tiny context helper: events processed so far
    def __init__(self, socket_path: str) -> None:
        from appliance.serving.client import Client

        self.client = Client(socket_path)

    def __enter__(self) -> int:
        return int(self.client.request("stats")["counts"]["events"])

    def __exit__(self, *exc: Any) -> None:
        self.client.close()


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def soak(args: tuple[str, ...]) -> None:
    """Run the appliance under steady load and sample memory and latency (--help for options)."""
    from appliance.bench.soak import main as soak_main

    raise SystemExit(soak_main(list(args)))
