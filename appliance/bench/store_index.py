"""What listing each entity's newest events (behind the `entity` op) costs the store writer: CPU
seconds to insert the sample's first events in batches of 500 without it and with `entity_recent`
(`RecentEntities`, what the writer does), interleaved. `python -m appliance.bench.store_index [events]`.
The design it replaced, an expression index per key on the events' payload (rows format 2), was
measured beside it until rows layout 5 put the payload inside the compressed body (docs/benchmarks.md).
"""

from __future__ import annotations

import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from appliance.storage.body import raw_body
from appliance.storage.entity_history import RecentEntities
from appliance.storage.payloads import PayloadCodec
from appliance.storage.store import TABLES, open_db
from appliance.storage.writer import _insert_sql


def sample_rows(limit: int, keys: tuple[str, ...]) -> list[dict]:
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
                row["body"] = raw_body(row["payload"])
                rows.append(row)
    return rows


def insert_seconds(rows: list[dict], keys: tuple[str, ...], how: str) -> float:
    """CPU seconds to insert `rows`; `how`: "none" or "recent"."""
    with tempfile.TemporaryDirectory(dir="/tmp") as workdir:
        db = open_db(Path(workdir) / "store.db")
        recent = RecentEntities(keys if how == "recent" else ())
        columns = list(TABLES["events"][0])
        sql = _insert_sql("events", columns)
        started = time.process_time()
        for start in range(0, len(rows), 500):
            batch = rows[start:start + 500]
            with db.conn:
                db.conn.executemany(sql, [tuple(map(row.get, columns)) for row in batch])
                recent.add(batch)
                recent.write(db.conn)
        elapsed = time.process_time() - started
        db.conn.close()
    return elapsed


def main(events: int = 50_000, rounds: int = 3) -> None:
    import sample_data
    from appliance.config.file import load_config

    keys = tuple(load_config(sample_data.CONFIG).event.keys)
    rows = sample_rows(events, keys)
    seconds: dict[str, list[float]] = {"none": [], "recent": []}
    for _ in range(rounds):
        for how, runs in seconds.items():
            runs.append(insert_seconds(rows, keys, how))
    figures = ", ".join(f"{how} {statistics.median(runs):.2f} s CPU ({statistics.median(runs) / len(rows) * 1e6:.1f} "
                        "µs/event)" for how, runs in seconds.items())
    print(f"{len(rows):,} events, keys {', '.join(keys)}: {figures}; medians of {rounds}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
