"""`appliance models` and `appliance attributes`: the registry and the attribute tables.

Reads go to the store (SQLite, safe while the appliance runs); changes to what serves go to the
running appliance over its socket, which applies them between two events and audits them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
import orjson

from appliance.cli.options import CONFIG_OPTION, SOCKET_OPTION, friendly_errors, require_store
from appliance.engine.control import Challenge, ImportModels, Promote, Publishing, RefreshAttributes, Retire, Rollback


@click.group()
def models() -> None:
    """The model registry: list and inspect versions; promote, roll back, pause publication."""


def _store_for(config_path: str | None, db: str | None) -> Any:
    from appliance.runtime.settings import resolve_config
    from appliance.storage.store import open_db

    config = resolve_config(config_path, None, db=db)
    require_store(config.db)
    return open_db(config.db)


@models.command("list")
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="The newest versions shown (the serving one is shown too, wherever it is).")
@click.option("--all", "show_all", is_flag=True, help="Every version, oldest first.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def models_list(config_path: str | None, db: str | None, limit: int, show_all: bool, as_json: bool) -> None:
    """The newest registered versions (every one with --all), with their lineage and the metrics each
    was published with; the serving one is marked *.

    A learner that follows its published version is published again at each check it passes, so a
    store holds thousands of versions after a few weeks: the newest are the ones to read."""
    from appliance.storage import registry
    from appliance.timeutil import format_timestamp

    store = _store_for(config_path, db)
    rows, served = registry.versions(store, None if show_all else limit), registry.served_version(store)
    total = len(rows) if show_all else registry.version_count(store)
    older_served = served is not None and all(row["version"] != served for row in rows)
    if older_served:  # an older version serves (a rollback, a promotion of a registered one): shown first
        rows.insert(0, registry.version(store, served))
    if as_json:
        click.echo(orjson.dumps({"served": served, "total": total, "versions": rows},
                                option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{'':2}{'version':>8} {'parent':>7} {'labels':>9} {'event time':<25} {'primary metric at publication'}")
    for i, row in enumerate(rows):
        if older_served and i == 1 and row["version"] != served + 1:
            click.echo(f"{'':2}{'...':>8}")
        mark = "* " if row["version"] == served else "  "
        metrics = row["metrics"]
        primary = next((f"{k} {metrics[k]:.4f}" for k in ("roc_auc", "mae") if metrics.get(k) is not None), "-")
        when = format_timestamp(row["event_ts"]) if row["event_ts"] is not None else "-"
        parent = f"v{row['parent']}" if row["parent"] else "-"
        click.echo(f"{mark}{'v' + str(row['version']):>8} {parent:>7} {row['n_learned']:>9,} {when:<25} {primary}")
    shown = "" if len(rows) == total else f", {len(rows):,} shown (--all for every one)"
    click.echo(f"{total:,} versions{shown}; * serves (as of the last commit)")


@models.command("show")
@click.argument("version", type=int)
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@friendly_errors
def models_show(version: int, config_path: str | None, db: str | None) -> None:
    """One version: spec, lineage, metrics at publication, and its audit trail."""
    from appliance.storage import registry

    store = _store_for(config_path, db)
    row = registry.version(store, version)
    click.echo(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode())
    for entry in registry.audit(store, version):
        click.echo(f"audit #{entry['id']}: {entry['action']} by {entry['actor']}: {entry['reason']}")


@models.command("export")
@click.argument("version", type=int)
@click.option("--out", required=True, help="The zip to write (meta.json + model.pkl).")
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@friendly_errors
def models_export(version: int, out: str, config_path: str | None, db: str | None) -> None:
    """Write one registered version to a file."""
    from appliance.storage import registry

    meta = registry.export_version(_store_for(config_path, db), version, out)
    click.echo(f"wrote v{meta['version']} ({meta['spec']}) to {out}")


@models.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--features", "features_file", type=click.Path(exists=True, dir_okay=False),
              help="For an .onnx FILE: its input's feature names, one per line [default: the file's metadata].")
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@click.option("--socket", "socket_path", envvar="APPLIANCE_SOCKET", help="The running appliance's socket [default: the config's].")
@friendly_errors
def models_import(file: str, features_file: str | None, config_path: str | None, db: str | None,
                  socket_path: str | None) -> None:
    """Register a model FILE as a new version (it does not serve until promoted): a zip written by
    `models export`, or an .onnx model over the appliance's features."""
    from appliance.runtime.settings import resolve_config
    from appliance.storage import registry
    from appliance.storage.store import open_db

    config = resolve_config(config_path, None, db=db)
    store = open_db(config.db)
    try:
        if file.lower().endswith(".onnx"):
            from appliance.features.space import FeatureSpace
            from appliance.learning.onnx_model import check_schema, load_onnx_file, read_feature_list

            features = read_feature_list(features_file) if features_file else None
            model = load_onnx_file(file, features, config.model.task)
            check_schema(model, FeatureSpace.for_config(config).names)
            meta = {"spec": f"onnx: {model.description}, sha256 {model.sha256[:12]}", "candidate": "onnx",
                    "n_learned": 0, "metrics": {}, "version": None}
            registry.stage_model(store, model, meta, file, now=time.time())
        else:
            meta = registry.stage_import(store, file, config.model.task, now=time.time())
    finally:
        store.conn.close()
    click.echo(f"staged {file} ({meta['spec']}" + (f", v{meta['version']} where it came from)" if meta.get("version")
                                                   else ")"))
    register_staged(socket_path or config.socket)


def register_staged(socket_path: str) -> int | None:
    """Have a running appliance register what was staged; return the new version (None if not running)."""
    from appliance.errors import ConnectFailed
    from appliance.serving.client import Client

    try:
        with Client(socket_path) as client:
            total = client.request("models", limit=1)["total_versions"]
        state = _operate(socket_path, ImportModels.op, lambda r, s: s["total_versions"] > total)
    except ConnectFailed:
        click.echo("no appliance answers on the socket: it is registered when the appliance next starts")
        return None
    version = state["versions"][-1]["version"]
    click.echo(f"registered as v{version}; serve it with `appliance models promote {version}`, or score it "
               f"beside the champion with `appliance models challenge {version}`")
    return version


def _operate(socket_path: str, op: str, wait_for: Callable[[dict, dict], bool], **fields: Any) -> dict:
    """Send an operator command, then wait (up to 30 s) until the engine has applied it."""
    from appliance.serving.client import Client

    with Client(socket_path) as client:
        reply = client.request(op, **fields)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            state = client.request("models", limit=1)
            if wait_for(reply, state):
                return state
            time.sleep(0.05)
    raise click.ClickException(f"{op} was queued but not applied within 30 s (is the dataflow stalled?)")


@models.command("promote")
@click.argument("version", type=int, required=False)
@click.option("--challenger", help="Promote this challenger (by name, see `models leaderboard`) instead.")
@SOCKET_OPTION
@friendly_errors
def models_promote(version: int | None, challenger: str | None, socket_path: str) -> None:
    """Serve VERSION now; with --challenger, a copy of that challenger's learner (it becomes the
    champion); with neither, publish the champion's learner now without the gate."""
    from appliance.serving.client import Client

    if version is not None and challenger:
        raise click.UsageError("give a VERSION or --challenger, not both")
    with Client(socket_path) as client:
        total = client.request("models", limit=1)["total_versions"]
    if challenger:
        state = _operate(socket_path, Promote.op, lambda r, s: s["champion"] == challenger, challenger=challenger)
        click.echo(f"{challenger} is the champion; v{state['served']} serves")
        return
    state = _operate(socket_path, Promote.op, lambda r, s: s["served"] == version if version is not None
                     else s["total_versions"] > total, version=version)
    click.echo(f"v{state['served']} serves")


@models.command("leaderboard")
@SOCKET_OPTION
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def models_leaderboard(socket_path: str, as_json: bool) -> None:
    """The champion and its challengers, scored on the same live labels."""
    from appliance.serving.client import Client

    with Client(socket_path) as client:
        state = client.request("models", limit=1)
    board = state["leaderboard"]
    if as_json:
        click.echo(orjson.dumps(board, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{'':2}{'candidate':<14} {'recent':>8} {'overall':>8} {'labels':>9}  {'vs champion (same labels)':<28} spec")
    for row in board:
        metrics = row["metrics"]
        primary = "roc_auc" if "roc_auc" in metrics else "mae"
        duel = row.get("versus_champion")
        versus = "-" if not duel or duel["challenger"] is None or duel["champion"] is None else (
            f"{duel['challenger']:.4f} vs {duel['champion']:.4f} on {duel['labels']:,}")
        mark = "* " if row["role"] == "champion" else "  "
        click.echo(f"{mark}{row['name']:<14} {_metric(metrics.get(primary + '_window')):>8} "
                   f"{_metric(metrics.get(primary)):>8} {row['labels_scored']:>9,}  {versus:<28} {row['spec']}")
    probation = state.get("probation")
    if probation:
        click.echo(f"v{probation['version']} is on probation against v{probation['against']}: "
                   f"{probation['labels']:,}/{probation['needed']:,} labels")
    click.echo(f"* the champion: its versions serve (v{state['served']} now); metric: {primary}")


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@models.command("challenge")
@click.argument("version", type=int)
@SOCKET_OPTION
@friendly_errors
def models_challenge(version: int, socket_path: str) -> None:
    """Put registered VERSION up as a challenger: scored in shadow on live labels, never serving
    until promoted. A River version learns on; an offline (ONNX) one does not."""
    name = f"v{version}"
    _operate(socket_path, Challenge.op, lambda r, s: any(row["name"] == name for row in s["leaderboard"]),
             version=version)
    click.echo(f"{name} is a challenger; see `appliance models leaderboard`")


@models.command("retire")
@click.argument("name")
@SOCKET_OPTION
@friendly_errors
def models_retire(name: str, socket_path: str) -> None:
    """Drop challenger NAME (the champion cannot be retired)."""
    _operate(socket_path, Retire.op, lambda r, s: all(row["name"] != name for row in s["leaderboard"]),
             challenger=name)
    click.echo(f"{name} retired")


@models.command("rollback")
@click.option("--to", "version", type=int, help="Version to serve [default: the one that served before].")
@SOCKET_OPTION
@friendly_errors
def models_rollback(version: int | None, socket_path: str) -> None:
    """Serve the previous version again and pause automatic publication."""
    state = _operate(socket_path, Rollback.op, lambda r, s: s["served"] == r["version"] and s["publishing"] == "paused",
                     version=version)
    click.echo(f"v{state['served']} serves; automatic publication is paused (`appliance models resume`)")


@models.command("pause")
@SOCKET_OPTION
@friendly_errors
def models_pause(socket_path: str) -> None:
    """Stop publishing the learner automatically (it keeps learning)."""
    _set_publishing(socket_path, paused=True)


@models.command("resume")
@SOCKET_OPTION
@friendly_errors
def models_resume(socket_path: str) -> None:
    """Publish the learner automatically again, when it passes the gate."""
    _set_publishing(socket_path, paused=False)


def _set_publishing(socket_path: str, paused: bool) -> None:
    wanted = "paused" if paused else "automatic"
    _operate(socket_path, Publishing.op, lambda r, s: s["publishing"] == wanted, paused=paused)
    click.echo(f"automatic publication {'paused' if paused else 'resumed'}")


@click.command("alerts")
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@click.option("--limit", default=20, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def alerts(config_path: str | None, db: str | None, limit: int, as_json: bool) -> None:
    """Drift alerts from the store: when, which detector, on what, the evidence and the action taken."""
    from appliance.timeutil import format_timestamp

    store = _store_for(config_path, db)
    rows = list(store.query("SELECT * FROM alerts ORDER BY id DESC LIMIT ?", [limit]))
    if as_json:
        click.echo(orjson.dumps([dict(r, evidence=orjson.loads(r["evidence"])) for r in rows],
                                option=orjson.OPT_INDENT_2).decode())
        return
    for row in rows:
        evidence = orjson.loads(row["evidence"])
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in evidence.items())
        click.echo(f"#{row['id']} {format_timestamp(row['event_ts'])} {row['kind']} drift on {row['subject']} "
                   f"({row['detector']}): {figures}; action: {row['action']}")
    if not rows:
        click.echo("no drift alerts")


@click.group()
def attributes() -> None:
    """Static entity attributes: CSV tables joined to events by key."""


@attributes.command("refresh")
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@click.option("--socket", "socket_path", envvar="APPLIANCE_SOCKET", help="The running appliance's socket [default: the config's].")
@friendly_errors
def attributes_refresh(config_path: str | None, db: str | None, socket_path: str | None) -> None:
    """Reload every declared attribute CSV; a running appliance switches to changed tables at once."""
    from appliance.errors import ConnectFailed
    from appliance.runtime.settings import resolve_config
    from appliance.runtime.store_files import load_attribute_files
    from appliance.serving.client import Client
    from appliance.storage.store import open_db

    config = resolve_config(config_path, None, db=db)
    if not config.features.attributes:
        raise click.ClickException("the config declares no [[features.attributes]] tables")
    store = open_db(config.db)
    try:
        loaded = load_attribute_files(config, store)
    finally:
        store.conn.close()
    for name, version, changed in loaded:
        click.echo(f"{name}: version {version}" + ("" if changed else " (unchanged)"))
    if not any(changed for _, _, changed in loaded):
        return
    try:
        with Client(socket_path or config.socket) as client:
            client.request(RefreshAttributes.op)
        click.echo("the running appliance switches to the new versions before its next event")
    except ConnectFailed:
        click.echo("no appliance answers on the socket: the new versions apply when it next starts")


@attributes.command("show")
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@friendly_errors
def attributes_show(config_path: str | None, db: str | None) -> None:
    """List the stored versions of each attribute table and when each started serving."""
    from appliance.runtime.settings import resolve_config
    from appliance.storage.store import open_db
    from appliance.timeutil import format_timestamp

    config = resolve_config(config_path, None, db=db)
    store = open_db(config.db)
    applied = {(row["name"], row["version"]): row["seq"] for row in store.query(
        "SELECT name, version, min(seq) AS seq FROM attribute_switches GROUP BY name, version")}
    for row in store.query("SELECT * FROM attribute_versions ORDER BY name, version"):
        seq = applied.get((row["name"], row["version"]))
        serving = "not applied yet" if seq is None else f"from event #{seq + 1}"
        click.echo(f'{row["name"]} v{row["version"]}: {row["rows"]:,} rows from {row["path"]} '
                   f'(loaded {format_timestamp(row["loaded_at"])}), {serving}')
    store.conn.close()
