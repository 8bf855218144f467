"""`appliance train-offline`: a scikit-learn model on the point-in-time training set, as ONNX."""

from __future__ import annotations

import time

import click
import orjson

from appliance.cli.options import CONFIG_OPTION, EXPORT_WORKERS_OPTION, friendly_errors, require_store


@click.command("train-offline")
@click.option("--model", "kind", default=None, help="logistic | gbdt | forest (regression: linear | gbdt | "
                                                      "forest) [default: logistic / linear]; gbdt is histogram "
                                                      "gradient boosting, forest fits on the sparse matrix.")
@click.option("--from", "start", help="Only events at or after this time (ISO-8601 or epoch seconds).")
@click.option("--to", "end", help="Only events before this time.")
@click.option("--holdout", default=0.2, show_default=True, help="Share of the newest rows held out to measure it.")
@click.option("--out", default="offline.onnx", show_default=True, help="Where to write the ONNX model.")
@click.option("--challenge", is_flag=True, help="Put it up as a challenger on the running appliance at once.")
@click.option("--seed", default=0, show_default=True)
@EXPORT_WORKERS_OPTION
@CONFIG_OPTION
@click.option("--db", envvar="APPLIANCE_DB", help="SQLite store [default: ./appliance.db].")
@click.option("--socket", "socket_path", envvar="APPLIANCE_SOCKET", help="The running appliance's socket [default: the config's].")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def train_offline(kind: str | None, start: str | None, end: str | None, holdout: float, out: str, challenge: bool,
                  seed: int, workers: int, config_path: str | None, db: str | None, socket_path: str | None,
                  as_json: bool) -> None:
    """Train on every labelled event in the store with its features as of its event time, convert to
    ONNX, check onnxruntime against scikit-learn, and register it as a new version."""
    from appliance.cli.registry import _operate, register_staged
    from appliance.features.space import FeatureSpace
    from appliance.learning.onnx_model import check_schema
    from appliance.offline.export import training_set
    from appliance.offline.train import train
    from appliance.runtime.settings import resolve_config
    from appliance.storage import registry
    from appliance.storage.store import open_db
    from appliance.timeutil import parse_timestamp

    config = resolve_config(config_path, None, db=db)
    require_store(config.db)
    task = config.model.task
    kind = kind or ("logistic" if task == "classification" else "linear")
    names = FeatureSpace.for_config(config).names
    rows = training_set(config.db, config, start=parse_timestamp(start) if start else None,
                        end=parse_timestamp(end) if end else None, workers=workers)
    model, report = train(rows, names, task, kind, holdout=holdout, seed=seed)
    check_schema(model, names)
    with open(out, "wb") as handle:
        handle.write(model.onnx_bytes)
    report["file"] = out
    metrics = {k: v for k, v in report.get("holdout", {}).items() if k not in ("rows", "from")}
    meta = {"spec": f"onnx: {model.description}, sha256 {model.sha256[:12]}", "candidate": "offline",
            "n_learned": report["rows"], "metrics": metrics, "version": None}
    store = open_db(config.db)
    try:
        registry.stage_model(store, model, meta, out, now=time.time())
    finally:
        store.conn.close()
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        held = report.get("holdout")
        click.echo(f"trained {kind} on {report['rows']:,} labelled events x {report['features']} features "
                   f"in {report['train_seconds']} s; onnxruntime vs scikit-learn max |diff| "
                   f"{report['parity_max_abs_diff']:.2g}; wrote {out}")
        if held:
            figures = ", ".join(f"{k} {v:.4f}" for k, v in held.items() if k not in ("rows", "from") and v is not None)
            click.echo(f"holdout (newest {held['rows']:,} rows, trained without them): {figures}")
    version = register_staged(socket_path or config.socket)
    if challenge and version is not None:
        _operate(socket_path or config.socket, "challenge",
                 lambda r, s: any(row["name"] == f"v{version}" for row in s["leaderboard"]), version=version)
        click.echo(f"v{version} is a challenger; see `appliance models leaderboard`")


@click.command("story")
@click.option("--out", default="lifecycle.svg", show_default=True, help="The plot to write (SVG).")
@click.option("--workdir", default="story", show_default=True, help="Where the two runs' stores go.")
@click.option("--drift-at", help="When the stream's drift starts (ISO-8601) [default: the sample's, 2026-01-15].")
@CONFIG_OPTION
@friendly_errors
def story(out: str, workdir: str, drift_at: str | None, config_path: str | None) -> None:
    """Replay the stream with and without the automatic drift policy; plot the served metric of both
    over event time with the drift, alerts, promotions and rollbacks marked; print the figures."""
    from pathlib import Path

    from appliance.bench.story import run_story, write_svg
    from appliance.runtime.settings import resolve_config
    from appliance.timeutil import parse_timestamp

    config = resolve_config(config_path, None)
    if drift_at is None and config_path is None and config.source == "sample":
        from sample_data.generate import DAY, DRIFT_DAY, START

        at: float | None = START + DRIFT_DAY * DAY
    else:
        at = parse_timestamp(drift_at) if drift_at else None
    result = run_story(config, Path(workdir), at)
    write_svg(result, out, "Served model after a drift: automatic policy vs alerts only")
    click.echo(orjson.dumps(result["figures"], option=orjson.OPT_INDENT_2).decode())
    click.echo(f"wrote {out}; the two runs' stores are in {workdir}/")
