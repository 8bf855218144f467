"""Ingest: events/s through the whole appliance vs a plain River loop on the same feature vectors.

The appliance side is `appliance replay` on the first N lines of the bundled sample, in a fresh
process and a fresh store: parse, features, the served model and every candidate scoring each
event, label join, learning, and every row written to SQLite. Its clock starts when `run` is called
(imports, config and store opening are outside it) and stops once the writer has committed.

The raw side is the loop a notebook would write: for each event, `predict_proba_one(x)`, then
`learn_one(x, y)` when the event got a label, with the sample's model spec, on the feature vectors
the appliance itself logged (read from its store once, outside the timed loop), so both sides see
the same dicts. It is also run in a fresh process.

The store writer runs in its own process, as in `appliance replay` (`--writer-thread`: on a thread
of the replaying process, as before; for an A/B). With `workers`, the replay runs on that many Bytewax workers (`appliance replay --workers N`); each
run also reports its CPU time (user + system, this process's threads and any child process, over the
same interval) per event, so runs with more workers are compared on the work they cost, not only on
the wall clock.

`python -m appliance.bench.ingest appliance|raw ...` is one timed run; it prints JSON.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson


def sample_subset(lines: int, out: Path) -> dict[str, int]:
    """Write the first `lines` lines of the bundled sample to `out`; count payments and labels."""
    import sample_data

    counts = {"lines": 0, "labels": 0}
    with gzip.open(sample_data.EVENTS, "rb") as source, open(out, "wb") as target:
        for line in source:
            if counts["lines"] >= lines:
                break
            target.write(line)
            counts["lines"] += 1
            counts["labels"] += b'"type":"label"' in line
    return counts


def replay_once(config_path: str, source: str, db: str, workers: int = 1) -> dict[str, Any]:
    """One timed `appliance replay` of `source` into a fresh `db` on `workers` workers, in a new process."""
    return _child(["appliance", "--config", config_path, "--source", source, "--db", db, "--workers", str(workers)])


def export_once(config_path: str, db: str, workers: int) -> dict[str, Any]:
    """One timed `export training-set` (JSONL) of the store `db` with `workers` entity workers, in a new process."""
    return _child(["export", "--config", config_path, "--db", db, "--workers", str(workers)])


def cpu_seconds() -> float:
    """CPU time so far of this process (every thread) and of its waited-for children, user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def raw_once(vectors: str, spec: str, task: str, save_model: str | None = None) -> dict[str, Any]:
    """One timed raw River loop over the pickled `(x, y)` list in `vectors`, in a new process."""
    extra = ["--save-model", save_model] if save_model else []
    return _child(["raw", "--vectors", vectors, "--spec", spec, "--task", task, *extra])


def logged_vectors(db: str, task: str) -> list[tuple[dict, Any]]:
    """The feature vector of each ingested event in stream order, with its label (None when it got
    none, or only a late one the appliance did not learn)."""
    from appliance.storage.body import read_codecs, split_body
    from appliance.storage.rows import decode_vector
    from appliance.storage.store import open_db

    conn = open_db(db).conn
    try:
        names = read_codecs(conn)
        rows = conn.execute(
            "SELECT e.body, l.label FROM events e "
            "LEFT JOIN labels l ON l.seq = e.seq WHERE e.ingested = 1 AND e.origin IS NOT NULL ORDER BY e.seq").fetchall()
    finally:
        conn.close()
    out = []
    for body, label in rows:  # a late label is in `late_labels`: not learned, not here
        y = None if label is None else (bool(label) if task == "classification" else label)
        out.append((decode_vector(split_body(body).features, names), y))
    return out


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "appliance.bench.ingest", *args], capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest run failed: {proc.stderr.decode(errors='replace').strip()[-500:]}")
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


def _run_appliance(config_path: str, source: str, db: str, workers: int = 1,
                   writer_thread: bool = False) -> dict[str, Any]:
    from appliance.runtime.app import Appliance, RunOptions
    from appliance.runtime.settings import resolve_config

    config = resolve_config(config_path, source, db=db, speed=0.0)
    appliance = Appliance(config, RunOptions(serve=False, own_process=True, fresh=True, workers=workers,
                                             writer_process=not writer_thread))  # what `replay` runs
    started, cpu = time.perf_counter(), cpu_seconds()
    appliance.run()
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    counts = appliance.board.snapshot["counts"]
    learned = counts["labels_joined"] + counts["labels_immediate"] + counts["labels_defaulted"]
    return {"events": counts["events"], "labels_learned": learned, "seconds": round(seconds, 4),
            "events_per_second": round(counts["events"] / seconds, 1), "workers": workers,
            "cpu_seconds": round(cpu, 3), "cpu_us_per_event": round(cpu / max(1, counts["events"]) * 1e6, 1),
            "task": appliance.engine.task,
            "spec": config.model.spec, "candidates": len(appliance.engine.model.candidates)}


def _run_export(config_path: str, db: str, workers: int) -> dict[str, Any]:
    """The export as `appliance export training-set --out <db>.jsonl --workers N` does it, timed
    from the first row asked for to the file closed (imports and config outside)."""
    from appliance.features.space import FeatureSpace
    from appliance.offline.export import training_set, write_training_set
    from appliance.runtime.settings import resolve_config
    from appliance.storage.store import open_db

    config = resolve_config(config_path, None, db=db)
    names = FeatureSpace.for_config(config).names
    store = open_db(db)
    try:
        events = store.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        store.conn.close()
    out = f"{db}-export.jsonl"
    started, cpu = time.perf_counter(), cpu_seconds()
    rows = write_training_set(training_set(db, config, workers=workers), out, names, "jsonl")
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    Path(out).unlink()
    return {"events": events, "rows": rows, "workers": workers, "seconds": round(seconds, 4),
            "events_per_second": round(events / seconds, 1), "cpu_seconds": round(cpu, 3)}


def _run_raw(vectors_path: str, spec: str, task: str, save_model: str | None) -> dict[str, Any]:
    from appliance.config.model_spec import build_model

    vectors = pickle.loads(Path(vectors_path).read_bytes())
    model = build_model(spec, task)
    predict = model.predict_proba_one if task == "classification" else model.predict_one
    learn = model.learn_one
    learned = 0
    started = time.perf_counter()
    for x, y in vectors:
        predict(x)
        if y is not None:
            learn(x, y)
            learned += 1
    seconds = time.perf_counter() - started
    if save_model:
        Path(save_model).write_bytes(pickle.dumps(model))
    return {"events": len(vectors), "labels_learned": learned, "seconds": round(seconds, 4),
            "events_per_second": round(len(vectors) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description="One timed ingest run for `appliance bench`.")
    sub = parser.add_subparsers(dest="side", required=True)
    app = sub.add_parser("appliance")
    app.add_argument("--config", required=True)
    app.add_argument("--source", required=True)
    app.add_argument("--db", required=True)
    app.add_argument("--workers", type=int, default=1)
    app.add_argument("--writer-thread", action="store_true",
                     help="the store writer on a thread of this process, as before it had its own")
    exported = sub.add_parser("export")
    exported.add_argument("--config", required=True)
    exported.add_argument("--db", required=True)
    exported.add_argument("--workers", type=int, default=0)
    raw = sub.add_parser("raw")
    raw.add_argument("--vectors", required=True)
    raw.add_argument("--spec", required=True)
    raw.add_argument("--task", required=True)
    raw.add_argument("--save-model")
    args = parser.parse_args()
    if args.side == "appliance":
        result = _run_appliance(args.config, args.source, args.db, args.workers, args.writer_thread)
    elif args.side == "export":
        result = _run_export(args.config, args.db, args.workers)
    else:
        result = _run_raw(args.vectors, args.spec, args.task, args.save_model)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
