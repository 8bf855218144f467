"""What history the store lets go: rows past their age (`[retention]` keep times, in event time) and,
past the byte bound (`[retention] max_bytes`), the oldest history first.

Predictions and labels are rows of their event (keyed by its `seq`, rows layout 4): they carry no
event time of their own to prune by and go by their event's, found through the events' one `ts`
index. So an event stays while a prediction or label kept for a finite time still needs its time
(`event_cutoff`); a table kept forever needs nothing from it. Late labels (their event's prediction
had expired) are keyed by event id, with their own time.

Never pruned: what a pending label still needs (its event and prediction), anything newer than the
checkpoint's watermark, and the tables a restart reads (checkpoint, entity state, pending labels,
models, audit). Freed pages go to SQLite's freelist and the next inserts reuse them, so the file
stops growing at the bound instead of shrinking and growing again. The store writer runs these
inside a checkpoint's transaction.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)

RETENTION_COLUMNS = {"events": "ts", "late_labels": "ts", "dead_letters": "watermark", "metrics": "event_ts"}
BY_EVENT = ("predictions", "labels")  # rows of an event, keyed by its seq: pruned by the event's time
PRUNED = ("events", *BY_EVENT, "late_labels", "dead_letters", "metrics")  # counted per table
PRUNE_TO = 0.9  # a store past its byte bound is pruned down to this share of it (room before the next pass)
PRUNE_STEP_ROWS = 5_000  # events (with their rows) deleted per step of a byte-bound pass
MAX_PRUNE_STEPS = 200  # steps per pass: a pass never holds the writer long; the next checkpoint goes on
_NOT_PENDING = " AND event_id NOT IN (SELECT event_id FROM pending_labels)"


def event_cutoff(retention: dict[str, float], watermark: float) -> float | None:
    """The event time before which events go: their own age, held back while a finite-kept table of
    their rows (predictions, labels) keeps rows older than it (None: events are kept forever)."""
    if "events" not in retention:
        return None
    return watermark - max(retention[table] for table in ("events", *BY_EVENT) if table in retention)


def prune_by_age(conn: sqlite3.Connection, retention: dict[str, float], watermark: float) -> dict[str, int]:
    """Delete each table's rows older than its retention before `watermark`; return the counts.

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT, ts REAL)")
    >>> _ = conn.execute("CREATE TABLE predictions (seq INTEGER PRIMARY KEY)")
    >>> _ = conn.execute("CREATE TABLE labels (seq INTEGER PRIMARY KEY)")
    >>> _ = conn.executemany("INSERT INTO events VALUES (?, ?, ?)", [(1, "a", 10.0), (2, "b", 5.0), (3, "c", 30.0)])
    >>> _ = conn.executemany("INSERT INTO predictions VALUES (?)", [(1,), (2,), (3,)])
    >>> _ = conn.executemany("INSERT INTO labels VALUES (?)", [(1,), (2,), (3,)])
    >>> counts = prune_by_age(conn, {"events": 15.0, "predictions": 25.0}, 35.0)
    >>> counts, [r[0] for r in conn.execute("SELECT seq FROM events")]
    ({'predictions': 1, 'events': 1}, [1, 3])
    """
    counts = {}
    for table in BY_EVENT:  # before their events: their times are the events'
        if table in retention:
            counts[table] = conn.execute(f"DELETE FROM [{table}] WHERE seq IN (SELECT seq FROM events WHERE ts < ?)",
                                         (watermark - retention[table],)).rowcount
    cutoff = event_cutoff(retention, watermark)
    if cutoff is not None:
        counts["events"] = conn.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount
    for table in ("dead_letters", "metrics"):
        if table in retention:
            column = RETENTION_COLUMNS[table]
            counts[table] = conn.execute(f"DELETE FROM [{table}] WHERE [{column}] < ?",
                                         (watermark - retention[table],)).rowcount
    if "labels" in retention:
        counts["late_labels"] = conn.execute("DELETE FROM late_labels WHERE ts < ?",
                                             (watermark - retention["labels"],)).rowcount
    if cutoff is not None:
        prune_entity_recent(conn, cutoff)
        prune_attribute_versions(conn)
    return counts


def prune_to_bytes(conn: sqlite3.Connection, max_bytes: int, watermark: float) -> tuple[int, dict[str, int]]:
    """Delete the oldest history down to `PRUNE_TO` of `max_bytes`, in steps of `PRUNE_STEP_ROWS` events.

    Returns the bytes in use after it and the rows deleted per table."""
    counts = dict.fromkeys(PRUNED, 0)
    target = int(max_bytes * PRUNE_TO)
    used = used_bytes(conn)
    for _ in range(MAX_PRUNE_STEPS):
        row = conn.execute(f"SELECT ts FROM events WHERE 1{_NOT_PENDING} ORDER BY ts LIMIT 1 OFFSET ?",
                           (PRUNE_STEP_ROWS,)).fetchone()
        cutoff = watermark if row is None else min(row[0], watermark)
        deleted = 0
        for table in BY_EVENT:
            deleted_here = conn.execute(f"DELETE FROM [{table}] WHERE seq IN "
                                        f"(SELECT seq FROM events WHERE ts < ?{_NOT_PENDING})", (cutoff,)).rowcount
            counts[table] += deleted_here
            deleted += deleted_here
        for table, column in RETENTION_COLUMNS.items():
            keep_pending = _NOT_PENDING if table == "events" else ""
            deleted_here = conn.execute(f"DELETE FROM [{table}] WHERE [{column}] < ?{keep_pending}", (cutoff,)).rowcount
            counts[table] += deleted_here
            deleted += deleted_here
        used = used_bytes(conn)
        if used <= target or not deleted:
            break
    if counts["events"]:  # an entity whose events a pending label keeps stays listed
        oldest_pending = conn.execute("SELECT min(ts) FROM pending_labels").fetchone()[0]
        prune_entity_recent(conn, cutoff if oldest_pending is None else min(cutoff, oldest_pending))
        used = used_bytes(conn)
    prune_attribute_versions(conn)
    if used > max_bytes:
        log.warning("the store holds %s bytes, over its bound of %s: what is left is newer than the last "
                    "checkpoint or needed by a pending label", f"{used:,}", f"{max_bytes:,}")
    return used, counts


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the store's pages in use (the file's pages less its freelist)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * conn.execute("PRAGMA page_size").fetchone()[0]


def prune_entity_recent(conn: sqlite3.Connection, cutoff: float) -> int:
    """Drop the `entity_recent` rows of entities with no event at or after `cutoff` (all of them
    pruned); a row's entries of pruned events are skipped by its readers. A scan of the table, whose
    size is the number of entities."""
    return conn.execute("DELETE FROM entity_recent WHERE newest < ?", (cutoff,)).rowcount


def prune_attribute_versions(conn: sqlite3.Connection) -> None:
    """Drop attribute versions that no retained event was scored with (export never needs them)."""
    oldest = conn.execute("SELECT min(seq) FROM events").fetchone()[0]
    if oldest is None:
        return
    needed = conn.execute("SELECT name, max(version) FROM attribute_switches WHERE seq < ? GROUP BY name",
                          (oldest,)).fetchall()
    for name, version in needed:
        conn.execute("DELETE FROM attribute_rows WHERE name = ? AND version < ?", (name, version))
        conn.execute("DELETE FROM attribute_switches WHERE name = ? AND version < ?", (name, version))
