"""Bytes per logged event: what the history costs on disk, by SQLite's page accounting.

A logged event is two rows (the event with its prediction and the feature vector, its label; rows
layout 5) and the dictionary its body was compressed with. `bytes_per_event` reads a store after a replay (its final checkpoint written)
and counts the pages of those three tables and of every index on them (SQLite's `dbstat` table),
over the number of events; beside it, the pages the whole file uses (page count minus free pages:
what VACUUM would leave) over the same events, which adds the registry's models, entity state,
pending labels and the checkpoint.

`python -m appliance.bench.store_bytes STORE` prints the figures as JSON.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

import orjson

HISTORY = ("events", "labels", "late_labels", "dictionaries")  # predictions: in their events' rows (layout 5)


def bytes_per_event(db_path: str) -> dict[str, Any]:
    """The store's bytes per logged event: history tables and their indexes, and the whole file."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        used = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"))
        by_table: dict[str, int] = {}
        for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(name, name)
            by_table[table] = by_table.get(table, 0) + size
    finally:
        conn.close()
    history = sum(by_table.get(table, 0) for table in HISTORY)
    per = (lambda n: round(n / events, 1)) if events else (lambda n: None)
    return {"events": events, "history_bytes_per_event": per(history), "file_bytes_per_event": per(used * page_size),
            "by_table": {table: per(size) for table, size in sorted(by_table.items(), key=lambda kv: -kv[1])}}


if __name__ == "__main__":  # pragma: no cover - a measuring tool
    sys.stdout.buffer.write(orjson.dumps(bytes_per_event(sys.argv[1]), option=orjson.OPT_INDENT_2) + b"\n")
