"""Time travel: a point-in-time training set rebuilt from the event log with the feature definitions.

`training_set` replays the `events` table in the order the engine processed it (`seq`) through a
fresh `FeatureSpace`, exactly as the engine did: each event's features come from entity state
before the event, only ingested events change state, and idle entities are evicted on the same
event-time schedule; attribute tables switch versions at the event sequence numbers the engine
logged. Each event with a learned label (joined, immediate, early or defaulted)
yields one row. Because the code path is the engine's own, the rows equal the feature vectors the
engine logged at prediction time; `tests/test_feature_properties.py` checks that on random streams.

The replay starts from the oldest retained event: with retention on, rows whose windows reach back
before the retained history miss that part of it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from . import attributes
from .config import Config
from .errors import ConfigError
from .events import parse_event
from .features import FeatureSpace
from .store import open_db

LEARNED = ("joined", "immediate", "early", "defaulted")
FORMATS = ("csv", "jsonl", "parquet")


def training_set(db_path: str, config: Config, *, start: float | None = None,
                 end: float | None = None) -> Iterator[dict[str, Any]]:
    """Yield {"event_id", "ts", "label", **features} for labelled events with start <= ts < end."""
    db = open_db(db_path)
    space = FeatureSpace.for_config(config)
    store = space.new_store()
    specs = {spec.name: spec for spec in config.features.attributes}
    switches = [s for s in attributes.switches(db) if s[1] in specs]
    sweep_ticks: dict[str, int] = {}
    watermark = -math.inf
    labels = {row[0]: row[1] for row in db.execute(
        f"SELECT event_id, label FROM labels WHERE status IN ({', '.join('?' * len(LEARNED))})", LEARNED)}
    cursor = db.execute("SELECT seq, event_id, ts, ingested, payload FROM events ORDER BY seq")
    while True:
        batch = cursor.fetchmany(5000)
        if not batch:
            break
        for seq, event_id, ts, ingested, payload in batch:
            while switches and switches[0][0] < seq:  # attribute versions as the engine applied them
                _, name, version = switches.pop(0)
                space.set_attributes(attributes.read_version(db, specs[name], version))
            values = parse_event(payload, config.event, config.model.task).values
            if event_id in labels and (start is None or ts >= start) and (end is None or ts < end):
                x = space.compute(values, ts, store)
                yield {"event_id": event_id, "ts": ts, "label": labels[event_id], **x}
            if ingested:
                space.update(values, ts, store)
            if ts > watermark:
                watermark = ts
                space.sweep(store, watermark, sweep_ticks)
    db.conn.close()


def write_training_set(rows: Iterator[dict[str, Any]], out: str, names: list[str], fmt: str | None = None) -> int:
    """Write rows to `out` as CSV, JSONL or Parquet (by `fmt` or the file's suffix); return the count."""
    fmt = fmt or _format_of(out)
    columns = ["event_id", "ts", "label", *names]
    if fmt == "parquet":
        return _write_parquet(rows, out, columns)
    count = 0
    with open(out, "w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            writer = csv.DictWriter(handle, fieldnames=columns, restval="", extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                count += 1
        else:
            count = _write_jsonl(rows, handle)
    return count


def _write_jsonl(rows: Iterator[dict[str, Any]], handle: IO[str]) -> int:
    count = 0
    for row in rows:
        handle.write(orjson.dumps(row).decode() + "\n")
        count += 1
    return count


def _write_parquet(rows: Iterator[dict[str, Any]], out: str, columns: list[str]) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet export needs pyarrow: pip install pyarrow (or export .csv / .jsonl)") from None
    data = list(rows)
    table = pa.table({c: [row.get(c) for row in data] for c in columns})
    pq.write_table(table, out)
    return len(data)


def _format_of(out: str) -> str:
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    if suffix == "ndjson":
        return "jsonl"
    raise ConfigError(f'cannot tell the format of "{out}"; use a .csv, .jsonl or .parquet name or --format')
