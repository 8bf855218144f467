"""Time travel: a point-in-time training set rebuilt from the event log with the feature definitions.

`training_set` replays the `events` table in the order the engine processed it (`seq`) through a
fresh `FeatureSpace`, exactly as the engine did: each event's features come from entity state
before the event, only ingested events change state, and idle entities are evicted on the same
event-time schedule; attribute tables switch versions at the event sequence numbers the engine
logged. Each event with a learned label (joined, immediate, early or defaulted)
yields one row. Because the code path is the engine's own, the rows equal the feature vectors the
engine logged at prediction time; `tests/features/test_feature_properties.py` checks that on random streams.
Label rates and means (`[features] label_rates`, `label_means`) are state moved by labels, not events:
their values are the ones logged when the event was scored.

The replay starts from the oldest retained event: with retention on, rows whose windows reach back
before the retained history miss that part of it.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from appliance.config.file import Config
from appliance.errors import ConfigError
from appliance.features import attributes
from appliance.features.label_means import feature_names as label_mean_names
from appliance.features.label_rates import feature_names as label_rate_names
from appliance.features.space import FeatureSpace
from appliance.ingest.events import parse_event
from appliance.offline.partitions import LoggedEvent, Partitions
from appliance.storage.body import read_codecs, split_body
from appliance.storage.payloads import decode_payload
from appliance.storage.rows import decode_vector, status_code
from appliance.storage.store import open_db

LEARNED = ("joined", "immediate", "early", "defaulted")
FORMATS = ("csv", "jsonl", "parquet")
WIDE_CSV = 256  # feature columns beyond which `export` suggests Parquet or JSONL over CSV


def training_set(db_path: str, config: Config, *, start: float | None = None,
                 end: float | None = None, workers: int = 0) -> Iterator[dict[str, Any]]:
    """Yield {"event_id", "ts", "label", **features} for labelled events with start <= ts < end.

    With `workers`, the entities' state is kept by that many worker processes, each owning its
    share of the entities (`offline.partitions`), while this one reads the log: the same rows."""
    db = open_db(db_path)
    try:
        space = FeatureSpace.for_config(config)
        events = _events(db, config, start, end)
        attribute_versions = _AttributeVersions(db, config, space)
        if workers > 0:
            yield from _partitioned(config, space, events, attribute_versions, workers)
            return
        store = space.new_store()
        sweep_ticks: dict[str, int] = {}
        watermark = -math.inf
        for event in events:
            attribute_versions.before(event.seq)
            if event.export:
                x = space.compute(event.values, event.ts, store, event.logged_rates)
                yield {"event_id": event.event_id, "ts": event.ts, "label": event.label, **x}
            if event.fold:
                space.update(event.values, event.ts, store)
                if event.ts > watermark:  # as the engine: a scored-only event never moves event time
                    watermark = event.ts
                    space.sweep(store, watermark, sweep_ticks)
    finally:
        db.conn.close()


BATCH = 5000  # events per batch: read from the log at once, and sent to the partition workers at once


def _partitioned(config: Config, space: FeatureSpace, events: Iterator[LoggedEvent],
                 attribute_versions: _AttributeVersions, workers: int) -> Iterator[dict[str, Any]]:
    """The rows of `training_set`, the entity state kept by `workers` processes. One batch is in
    flight ahead: the workers fold it while this process decodes the next one and writes the last."""
    with Partitions(config, space, workers) as partitions:
        batch = list(itertools.islice(events, BATCH))
        watermark = _advanced(-math.inf, batch)
        where = partitions.send(batch, watermark) if batch else []
        while batch:
            following = list(itertools.islice(events, BATCH))  # decoded while the workers fold `batch`
            aggregates = partitions.receive(batch, where)
            if following:
                watermark = _advanced(watermark, following)
                where = partitions.send(following, watermark)  # folded while this one is written
            for event, pieces in zip(batch, aggregates):
                attribute_versions.before(event.seq)
                if event.export:
                    x = space.compute(event.values, event.ts, None, event.logged_rates, aggregates=pieces)
                    yield {"event_id": event.event_id, "ts": event.ts, "label": event.label, **x}
            batch = following


def _advanced(watermark: float, batch: list[LoggedEvent]) -> float:
    """The event time after `batch`: only ingested events move it, as in the engine."""
    return max([watermark, *(event.ts for event in batch if event.fold)])


class _AttributeVersions:
    """The attribute tables' versions switched at the event sequence numbers the engine logged."""

    def __init__(self, db: Any, config: Config, space: FeatureSpace) -> None:
        self.db, self.space = db, space
        self.specs = {spec.name: spec for spec in config.features.attributes}
        self.switches = [s for s in attributes.switches(db) if s[1] in self.specs]

    def before(self, seq: int) -> None:
        """Apply every switch the engine made before event `seq`."""
        while self.switches and self.switches[0][0] < seq:
            _, name, version = self.switches.pop(0)
            self.space.set_attributes(attributes.read_version(self.db, self.specs[name], version))


def _events(db: Any, config: Config, start: float | None, end: float | None) -> Iterator[LoggedEvent]:
    """The event log in the order the engine processed it, decoded; marked for export when the
    event's label was learned and it lies in [start, end)."""
    rates = label_rate_names(config.features.categorical) if config.features.label_rates else []
    rates += label_mean_names(config.event.keys) if config.features.label_means else []
    learned = [status_code(status) for status in LEARNED]
    labels = {row[0]: row[1] for row in db.execute(
        f"SELECT seq, label FROM labels WHERE status IN ({', '.join('?' * len(learned))})", learned)}
    names = read_codecs(db.conn)
    cursor = db.execute("SELECT seq, event_id, ts, ingested, body FROM events ORDER BY seq")
    while True:
        batch = cursor.fetchmany(BATCH)
        if not batch:
            break
        for seq, event_id, ts, ingested, blob in batch:
            body = split_body(blob)
            values = parse_event(decode_payload(body.payload, event_id, ts), config.event, config.model.task).values
            export = seq in labels and (start is None or ts >= start) and (end is None or ts < end)
            # label rates are state moved by labels, not events: the values logged when it was scored
            logged = _logged(body.features, rates, names) if export and rates else None
            yield LoggedEvent(seq, event_id, ts, values, export, bool(ingested), labels.get(seq), logged)


def _logged(features: bytes | None, wanted: list[str], names: dict[int, tuple[str, ...]]) -> dict[str, float]:
    logged = decode_vector(features, names) if features else {}
    return {name: logged[name] for name in wanted if name in logged}


def write_training_set(rows: Iterator[dict[str, Any]], out: str, names: list[str], fmt: str | None = None) -> int:
    """Write rows to `out` as CSV, JSONL or Parquet (by `fmt` or the file's suffix); return the count.

    CSV has one column per feature, every row: right for a narrow feature space. JSONL writes only the
    features a row has (hashed one-hots that are set, aggregates that exist), and Parquet stores the
    columns compressed, written a row group at a time: both stay small with thousands of hash buckets."""
    fmt = resolve_format(out, fmt)
    columns = ["event_id", "ts", "label", *names]
    if fmt == "parquet":
        return _write_parquet(rows, out, names)
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


def resolve_format(out: str, fmt: str | None) -> str:
    """`fmt` if given (refused when the file's suffix names another format), else the suffix's."""
    suffix = _suffix_format(out)
    if fmt is None:
        if suffix is None:
            raise ConfigError(f'cannot tell the format of "{out}"; use a .csv, .jsonl or .parquet name or --format')
        return suffix
    if fmt not in FORMATS:
        raise ConfigError(f'unknown format "{fmt}"; one of {", ".join(FORMATS)}')
    if suffix is not None and suffix != fmt:
        raise ConfigError(f'"{out}" names {suffix} but --format is {fmt}; rename the file or drop --format')
    return fmt


def _write_jsonl(rows: Iterator[dict[str, Any]], handle: IO[str]) -> int:
    count = 0
    for row in rows:
        handle.write(orjson.dumps(row).decode() + "\n")
        count += 1
    return count


PARQUET_ROWS = 2048  # rows per Parquet row group: bounded memory whatever the number of rows


def _write_parquet(rows: Iterator[dict[str, Any]], out: str, names: list[str]) -> int:
    """Stream rows into a Parquet file a row group at a time: event_id (string), ts (float64), label
    (typed by the first row), one nullable float64 column per feature (null where the row has none)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet export needs pyarrow: pip install 'appliance[export]' "
                          "(or export .csv / .jsonl)") from None
    import numpy as np

    column = {name: i for i, name in enumerate(names)}
    writer = None
    count = 0
    try:
        while True:
            batch = [row for _, row in zip(range(PARQUET_ROWS), rows)]
            if not batch:
                break
            values = np.zeros((len(batch), len(names)))
            present = np.zeros((len(batch), len(names)), dtype=bool)
            for i, row in enumerate(batch):
                for name, value in row.items():
                    at = column.get(name)
                    if at is not None and value is not None:
                        values[i, at] = value
                        present[i, at] = True
            if writer is None:
                label = batch[0]["label"]
                label_type = (pa.bool_() if isinstance(label, bool) else pa.int64() if isinstance(label, int)
                              else pa.float64() if isinstance(label, float) else pa.string())
                schema = pa.schema([("event_id", pa.string()), ("ts", pa.float64()), ("label", label_type),
                                    *[(name, pa.float64()) for name in names]])
                writer = pq.ParquetWriter(out, schema)
            arrays = [pa.array([row["event_id"] for row in batch], pa.string()),
                      pa.array([row["ts"] for row in batch], pa.float64()),
                      pa.array([row["label"] for row in batch], schema.field("label").type)]
            arrays += [pa.array(values[:, j], pa.float64(), mask=~present[:, j]) for j in range(len(names))]
            writer.write_batch(pa.record_batch(arrays, schema=schema))
            count += len(batch)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ConfigError(f"cannot write the labels to Parquet as one type: {exc}") from None
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows: still a valid file with the columns
        schema = pa.schema([("event_id", pa.string()), ("ts", pa.float64()), ("label", pa.int64()),
                            *[(name, pa.float64()) for name in names]])
        pq.write_table(schema.empty_table(), out)
    return count


def _suffix_format(out: str) -> str | None:
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    if suffix == "ndjson":
        return "jsonl"
    return None
