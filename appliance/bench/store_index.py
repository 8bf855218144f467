"""What the per-key expression index on the events table (behind the `entity` op) costs the store
writer: CPU seconds to insert the sample's first events in batches of 500, with and without it,
interleaved. `python -m appliance.bench.store_index [events]`.
"""

from __future__ import annotations

import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from appliance.storage.entity_history import index_entity_keys
from appliance.storage.rows import PayloadCodec
from appliance.storage.store import TABLES, _insert_sql, open_db


def sample_rows(limit: int, keys: tuple[str, ...]) -> list[tuple]:
    columns = list(TABLES["events"][0])
    payloads = PayloadCodec(keys, "event_id")  # as the engine logs them, entity keys first
    import sample_data

    path = next(Path(sample_data.__file__).parent.glob("*.jsonl.gz"))
    rows = []
    with gzip.open(path, "rt") as lines:
        for offset, line in enumerate(lines):
            if len(rows) >= limit:
                break
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                event_id = str(event.get("event_id", offset))
                row = {"event_id": event_id, "seq": offset, "ts": float(offset), "source": 1, "offset": offset,
                       "ingested": 1, "payload": payloads.encode(event, event_id)}
                rows.append(tuple(row[c] for c in columns))
    return rows


def insert_seconds(rows: list[tuple], keys: tuple[str, ...]) -> float:
    with tempfile.TemporaryDirectory(dir="/tmp") as workdir:
        db = open_db(Path(workdir) / "store.db")
        if keys:
            index_entity_keys(db.conn, keys)
        sql = _insert_sql("events", list(TABLES["events"][0]))
        started = time.process_time()
        for start in range(0, len(rows), 500):
            with db.conn:
                db.conn.executemany(sql, rows[start:start + 500])
        elapsed = time.process_time() - started
        db.conn.close()
    return elapsed


def main(events: int = 50_000, rounds: int = 3) -> None:
    import sample_data
    from appliance.config.file import load_config

    keys = tuple(load_config(sample_data.CONFIG).event.keys)
    rows = sample_rows(events, keys)
    plain, indexed = [], []
    for _ in range(rounds):
        plain.append(insert_seconds(rows, ()))
        indexed.append(insert_seconds(rows, keys))
    a, b = statistics.median(plain), statistics.median(indexed)
    print(f"{len(rows):,} events, keys {', '.join(keys)}: without the index {a:.2f} s CPU "
          f"({a / len(rows) * 1e6:.1f} µs/event), with it {b:.2f} s ({b / len(rows) * 1e6:.1f} µs/event); "
          f"medians of {rounds}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
