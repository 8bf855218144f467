"""The `appliance` command: a thin layer over the library. Each command parses flags, calls one
library function, and formats what it returns; errors become one line and exit code 1."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from appliance import __version__
from appliance.cli.bench import bench, soak
from appliance.cli.console import console
from appliance.cli.offline import story, train_offline
from appliance.cli.options import (
    CONFIG_OPTION,
    EXPORT_WORKERS_OPTION,
    FLOW_WORKERS_OPTION,
    RESTARTS_OPTION,
    SOCKET_OPTION,
    friendly_errors,
    on_signals,
    require_store,
)
from appliance.cli.registry import alerts, attributes, models
from appliance.cli.report import format_stats, format_status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="appliance")
def main() -> None:
    """Real-time machine learning on one machine: stream in, learn online, serve over a socket."""


@main.command()
@CONFIG_OPTION
@click.option("--source", help='Events: a JSONL/CSV file (gz ok), "-" for stdin, river:NAME, or "sample".')
@click.option("--socket", "socket_path", envvar="APPLIANCE_SOCKET", help="Unix socket path [default: ./appliance.sock].")
@click.option("--tcp", help="Also serve on TCP HOST:PORT (loopback unless a token is set).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="File holding the token TCP clients must send (owner-only, at least 16 characters).")
@click.option("--token", envvar="APPLIANCE_TOKEN", help="The token itself (env APPLIANCE_TOKEN); prefer --token-file "
                                                         "or the environment: a flag shows in the process list.")
@click.option("--auth-timeout", type=float, default=5.0, show_default=True,
              help="Seconds a TCP connection has to authenticate.")
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@click.option("--speed", type=click.FloatRange(min=0), help="Event-time replay speed; 0 = as fast as possible.")
@click.option("--model", "model_spec", help="River model, e.g. 'appliance.ScaleNumeric() | linear_model.LogisticRegression()'.")
@click.option("--fresh", is_flag=True, help="Discard the store's state and start over.")
@click.option("--status-every", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds between status lines; 0 = none.")
@click.option("--metrics-port", type=click.IntRange(1, 65535),
              help="Also serve Prometheus metrics on 127.0.0.1:PORT/metrics.")
@click.option("--serve-processes", type=click.IntRange(1, 64), default=lambda: _default_serve_processes(),
              show_default="one per core, at most 4",
              help="Processes answering on the socket (Unix and TCP): 1 serves from this process alone; "
                   "N > 1 starts N serving processes beside this one, which keeps the dataflow.")
@FLOW_WORKERS_OPTION
@click.option("--console", "with_console", is_flag=True, help="Run the operator console in this terminal; "
                                                               "quitting it stops the appliance.")
@RESTARTS_OPTION
@friendly_errors
def up(config_path: str | None, source: str | None, socket_path: str | None, tcp: str | None,
       token_file: str | None, token: str | None, auth_timeout: float, db: str | None, speed: float | None, model_spec: str | None, fresh: bool, status_every: float,
       metrics_port: int | None, serve_processes: int, workers: int, with_console: bool, restarts: int) -> None:
    """Start the appliance: ingest, learn and serve predictions until stopped (Ctrl-C)."""
    from appliance.runtime.interpreters import SpareChildren

    # First: the serving children's interpreters import while this process imports and restores.
    with SpareChildren(serve_processes if serve_processes > 1 else 0) as spares:  # closed: what was not taken
        from appliance.runtime.app import Appliance, RunOptions
        from appliance.runtime.settings import resolve_config

        config = resolve_config(config_path, source, socket=socket_path, db=db, speed=speed)
        config = _with_model(config, model_spec)
        printer = _StatusPrinter(status_every)
        if token_file is not None:
            from appliance.serving.access import read_token_file

            if token is not None:
                raise click.UsageError("pass the token with --token-file or --token (APPLIANCE_TOKEN), not both")
            token = read_token_file(token_file)
        options = RunOptions(serve=True, own_process=True, fresh=fresh, tcp=_parse_tcp(tcp), token=token,
                             auth_timeout=auth_timeout,
                             on_tick=printer.tick,
                             on_ready=lambda: click.echo(f"ready: serving on {config.socket}"
                                                         + (f", metrics on http://127.0.0.1:{metrics_port}/metrics"
                                                            if metrics_port else "")),
                             metrics_port=metrics_port,
                             serve_processes=serve_processes, workers=workers, restarts=restarts,
                             spare_children=spares)
        if with_console:
            from appliance.cli.console import up_with_console

            up_with_console(config, options)
            return
        appliance = Appliance(config, options)
        on_signals(appliance.stop)
        click.echo(f"appliance {__version__}: source {appliance.source} at speed {config.speed:g}x, "
                   f"socket {config.socket}, store {config.db}" + (" (resumed)" if appliance.resumed else ""))
        appliance.run()
        click.echo(format_status(appliance.board.snapshot))
        click.echo(appliance.stop_message())


@main.command()
@click.argument("source", required=False)
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@click.option("--model", "model_spec", help="River model spec (see `appliance up --help`).")
@click.option("--fresh", is_flag=True, help="Discard the store's state and start over.")
@FLOW_WORKERS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the final stats as JSON.")
@RESTARTS_OPTION
@friendly_errors
def replay(source: str | None, config_path: str | None, db: str | None, model_spec: str | None, fresh: bool,
           workers: int, as_json: bool, restarts: int) -> None:
    """Run the dataflow over a finite SOURCE as fast as possible (default: the bundled sample)."""
    from appliance.runtime.app import Appliance, RunOptions
    from appliance.runtime.settings import resolve_config

    config = _with_model(resolve_config(config_path, source, db=db, speed=0.0), model_spec)
    bar = _ReplayProgress(enabled=not as_json)
    appliance = Appliance(config, RunOptions(serve=False, own_process=True, fresh=fresh, workers=workers,
                                             on_tick=bar.tick, restarts=restarts))
    on_signals(appliance.stop)
    started = time.monotonic()
    appliance.run()
    bar.close()
    stats = dict(appliance.board.snapshot)
    stats["flow"] = appliance.supervisor.stats()
    stats["wall_seconds"] = round(time.monotonic() - started, 3)
    stats["events_per_second"] = round(stats["counts"]["events"] / max(stats["wall_seconds"], 1e-9), 1)
    click.echo(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() if as_json else format_stats(stats))


@main.command()
@click.argument("event", required=False)
@SOCKET_OPTION
@click.option("--no-ingest", is_flag=True, help="Score only; do not add the event to the stream.")
@click.option("--explain", is_flag=True, help="Include the feature vector in the reply.")
@friendly_errors
def predict(event: str | None, socket_path: str, no_ingest: bool, explain: bool) -> None:
    """Score EVENT (a JSON object) or each NDJSON line of stdin; print one reply line each."""
    from appliance.serving.client import Client

    lines = [event] if event is not None else [line for line in sys.stdin if line.strip()]
    failures = 0
    with Client(socket_path) as client:
        for line in lines:
            try:
                body = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise click.ClickException(f"not a JSON object: {str(exc).splitlines()[0]}") from None
            request = {"op": "predict", "event": body, "ingest": not no_ingest, "explain": explain}
            reply = client.send_line(orjson.dumps(request))
            failures += not reply.get("ok")
            click.echo(orjson.dumps(reply).decode())
    if failures:
        sys.exit(1)


@main.command()
@SOCKET_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw stats as JSON.")
@click.option("--prometheus", is_flag=True, help="Print them in the Prometheus text format.")
@click.option("--watch", "watch", type=click.FloatRange(0.1, 3600), default=None, metavar="SECONDS",
              help="Keep printing a status line (or JSON with --json) every SECONDS, pushed by the appliance.")
@friendly_errors
def stats(socket_path: str, as_json: bool, prometheus: bool, watch: float | None) -> None:
    """Show the running appliance's counters, label join and model metrics."""
    from appliance.serving.client import Client

    if watch is not None:
        with Client(socket_path) as client:
            try:
                for update in client.watch(watch):
                    for field in ("ok", "id", "update", "dropped"):
                        update.pop(field, None)
                    click.echo(orjson.dumps(update).decode() if as_json else format_status(update))
            except KeyboardInterrupt:
                return
    with Client(socket_path) as client:
        reply = client.request("stats")
    reply.pop("ok", None)
    reply.pop("id", None)
    if prometheus:
        from appliance.serving.prometheus import render

        click.echo(render(reply), nl=False)
        return
    click.echo(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode() if as_json else format_stats(reply))


@main.command()
@click.argument("events_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="appliance.toml", show_default=True, help="Where to write the config.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@friendly_errors
def init(events_file: str, out: str, force: bool) -> None:
    """Read EVENTS_FILE (JSONL or CSV) and write a commented starter config that explains each guess."""
    from appliance.config.file import load_config
    from appliance.init.starter import write_starter

    text = write_starter(events_file, out, force=force)
    for line in text.splitlines():
        if line.startswith("# WARNING: "):
            click.echo(line.removeprefix("# "), err=True)
    config = load_config(out)
    n_features = len(config.features.aggregates) + len(config.features.expressions)
    click.echo(f"wrote {out}: id {config.event.id_field!r}, time {config.event.time_field!r}, "
               f"keys {list(config.event.keys)}, numeric {list(config.event.numeric)}, "
               f"categorical {list(config.event.categorical)}, {n_features} aggregate features, "
               f"task {config.model.task}")
    click.echo(f"check it, then: appliance replay --config {out}   (learn from the file)")


@main.group()
def export() -> None:
    """Export data from the store."""


@export.command("training-set")
@click.option("--out", required=True, help="Output file: .csv, .jsonl or .parquet (pip install 'appliance[export]').")
@click.option("--from", "start", help="Only events at or after this time (ISO-8601 or epoch seconds).")
@click.option("--to", "end", help="Only events before this time.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]),
              help="csv: a column per feature (narrow feature spaces); jsonl: only each row's features; parquet: "
                   "compressed columns. [default: the --out suffix; a suffix naming another format is refused]")
@EXPORT_WORKERS_OPTION
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@friendly_errors
def export_training_set(out: str, start: str | None, end: str | None, fmt: str | None, workers: int,
                        config_path: str | None, db: str | None) -> None:
    """Every labelled event with its features as they were at its event time (point in time)."""
    from appliance.features.space import FeatureSpace
    from appliance.offline.export import WIDE_CSV, resolve_format, training_set, write_training_set
    from appliance.runtime.settings import resolve_config
    from appliance.timeutil import parse_timestamp

    config = resolve_config(config_path, None, db=db)
    require_store(config.db)
    rows = training_set(config.db, config, start=parse_timestamp(start) if start else None,
                        end=parse_timestamp(end) if end else None, workers=workers)
    names = FeatureSpace.for_config(config).names
    fmt = resolve_format(out, fmt)
    count = write_training_set(rows, out, names, fmt)
    click.echo(f"wrote {count:,} labelled rows with {len(names)} features to {out}")
    if fmt == "csv" and len(names) > WIDE_CSV:
        click.echo(f"{len(names)} columns in every row: --format parquet or jsonl write only what is there", err=True)


def _with_model(config: Any, model_spec: str | None) -> Any:
    if model_spec is None:
        return config
    from dataclasses import replace

    return replace(config, model=replace(config.model, spec=model_spec))


def _default_serve_processes() -> int:
    from appliance.runtime.interpreters import default_serve_processes

    return default_serve_processes()


def _parse_tcp(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f'"{value}" is not HOST:PORT, e.g. 127.0.0.1:7700', param_hint="--tcp")
    return host, int(port)


class _StatusPrinter:
    def __init__(self, every: float) -> None:
        self.every = every
        self.next = time.monotonic() + every

    def tick(self, appliance: Any) -> None:
        if self.every and time.monotonic() >= self.next:
            self.next = time.monotonic() + self.every
            click.echo(format_status(appliance.board.snapshot))


class _ReplayProgress:
    """A progress bar on stderr (when it is a terminal): lines consumed of the source, events/s."""

    WIDTH = 30

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0
        self.total: int | None = None
        self.counted = False

    def tick(self, appliance: Any) -> None:
        if not self.enabled or time.monotonic() - self.last < 0.25:
            return
        self.last = time.monotonic()
        source = appliance.source
        if not self.counted:
            self.counted = True
            self.total = _count_lines(source)
        snapshot = appliance.board.snapshot
        done = int(snapshot.get("offsets", {}).get(source, 0))
        rate = snapshot.get("rates", {}).get("events_per_second", 0.0)
        if self.total:
            fraction = min(1.0, done / self.total)
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            text = f"\r[{bar}] {fraction:>4.0%} {done:,}/{self.total:,} lines  {rate:,.0f} ev/s  "
        else:
            text = f"\r{done:,} items  {rate:,.0f} ev/s  "
        click.echo(text + str(snapshot.get("watermark") or ""), nl=False, err=True)

    def close(self) -> None:
        if self.enabled:
            click.echo("", err=True)


def _count_lines(source: str | None) -> int | None:
    """Lines in a file source (what its offsets count), or None for streams and datasets."""
    if not source or source == "-" or ":" in source.split("/")[0] or not Path(source).is_file():
        return None
    import gzip

    opener = gzip.open if source.endswith(".gz") else open
    with opener(source, "rb") as handle:
        total = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    return total - 1 if source.lower().removesuffix(".gz").endswith(".csv") else total


for command in (models, attributes, alerts, console, bench, soak, train_offline, story):
    main.add_command(command)
