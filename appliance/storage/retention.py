"""What history the store lets go: rows past their age (`[retention]` keep times, in event time) and,
past the byte bound (`[retention] max_bytes`), the oldest history first.

A prediction is part of its event's row (rows layout 5) and goes with it: the event (and its
prediction) stays as long as the longer of the two keeps says, forever if either is "forever".
Labels are rows of their event (keyed by its `seq`): they carry no event time of their own to prune
by and go by their event's, so an event also stays while a label kept for a finite time still needs
its time (`event_cutoff`); labels kept forever need nothing from it. Late labels (their event's
prediction had expired) are keyed by event id, with their own time.

The history has no index on time: events are found by `seq` (arrival order, the rowid), whose
times rise with it but for lateness (the flow dead-letters an event later than `allowed_lateness`
behind the watermark). A pass deletes the events before the first `seq` at or past its cutoff
(`first_seq_at`, a binary search on the rowid) whose times are before the cutoff; an event that
arrived later than newer ones can outlive its age until a later pass's search passes it.

Never pruned: what a pending label still needs (its event and prediction), anything newer than the
checkpoint's watermark, and the tables a restart reads (checkpoint, entity state, pending labels,
models, audit). Freed pages go to SQLite's freelist and the next inserts reuse them, so the file
stops growing at the bound instead of shrinking and growing again. The store writer runs these
inside a checkpoint's transaction.
"""

from __future__ import annotations

import logging
import sqlite3

from appliance.storage.entity_history import Listed

log = logging.getLogger(__name__)

RETENTION_COLUMNS = {"events": "ts", "late_labels": "ts", "dead_letters": "watermark", "metrics": "event_ts"}
INDEXED = ("late_labels", "dead_letters", "metrics")  # pruned by an index on their time (events: by seq)
BY_EVENT = ("labels",)  # rows of an event, keyed by its seq: pruned by the event's time
PRUNED = ("events", *BY_EVENT, "late_labels", "dead_letters", "metrics")  # counted per table
PRUNE_TO = 0.9  # a store past its byte bound is pruned down to this share of it (room before the next pass)
PRUNE_STEP_ROWS = 5_000  # events (with their rows) deleted per step of a byte-bound pass
MAX_PRUNE_STEPS = 200  # steps per pass: a pass never holds the writer long; the next checkpoint goes on
_NOT_PENDING = " AND event_id NOT IN (SELECT event_id FROM pending_labels)"


def event_cutoff(retention: dict[str, float], watermark: float) -> float | None:
    """The event time before which events (with their predictions) go: the longer of the two ages,
    held back while labels kept for a finite time are older than it (None: events are kept forever).

    >>> event_cutoff({"events": 10.0, "predictions": 20.0, "labels": 5.0}, 100.0), event_cutoff({"events": 1.0}, 9.0)
    (80.0, None)
    """
    if "events" not in retention or "predictions" not in retention:
        return None
    return watermark - max(retention[table] for table in ("events", "predictions", *BY_EVENT) if table in retention)


def prune_by_age(conn: sqlite3.Connection, retention: dict[str, float], watermark: float) -> dict[str, int]:
    """Delete each table's rows older than its retention before `watermark`; return the counts."""
    counts = {}
    for table in BY_EVENT:  # before their events: their times are the events'
        if table in retention:
            before = watermark - retention[table]
            counts[table] = conn.execute(f"DELETE FROM [{table}] WHERE seq IN "
                                         "(SELECT seq FROM events WHERE seq < ? AND ts < ?)",
                                         (first_seq_at(conn, before), before)).rowcount
    cutoff = event_cutoff(retention, watermark)
    if cutoff is not None:
        counts["events"] = conn.execute("DELETE FROM events WHERE seq < ? AND ts < ?",
                                        (first_seq_at(conn, cutoff), cutoff)).rowcount
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


def first_seq_at(conn: sqlite3.Connection, cutoff: float) -> int:
    """The first `seq` whose event time is at or past `cutoff`, by a binary search on the rowid that
    takes event times to rise with `seq` (one past the last event if none is; exact when they do).

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, ts REAL)")
    >>> _ = conn.executemany("INSERT INTO events VALUES (?, ?)", [(3, 1.0), (4, 2.0), (9, 2.5), (10, 4.0)])
    >>> first_seq_at(conn, 2.0), first_seq_at(conn, 3.0), first_seq_at(conn, 0.0), first_seq_at(conn, 5.0)
    (4, 10, 3, 11)
    """
    low, high = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
    if low is None:
        return 0
    high += 1
    while low < high:
        middle = (low + high) // 2
        seq, ts = conn.execute("SELECT seq, ts FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)).fetchone()
        if ts >= cutoff:
            high = middle
        else:
            low = seq + 1
    return low


def prune_to_bytes(conn: sqlite3.Connection, max_bytes: int, watermark: float) -> tuple[int, dict[str, int]]:
    """Delete the oldest history down to `PRUNE_TO` of `max_bytes`, in steps of `PRUNE_STEP_ROWS` events.

    Returns the bytes in use after it and the rows deleted per table."""
    counts = dict.fromkeys(PRUNED, 0)
    target = int(max_bytes * PRUNE_TO)
    used = used_bytes(conn)
    for _ in range(MAX_PRUNE_STEPS):
        # the oldest events by arrival (but what pending labels need), never past the checkpoint's watermark
        row = conn.execute(f"SELECT seq, ts FROM events WHERE 1{_NOT_PENDING} ORDER BY seq LIMIT 1 OFFSET ?",
                           (PRUNE_STEP_ROWS,)).fetchone()
        if row is None:  # fewer left: every one before the watermark
            row = ((conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0) + 1, watermark)
        end, cutoff = row[0], min(row[1], watermark)
        oldest = f"SELECT seq FROM events WHERE seq < ? AND ts < ?{_NOT_PENDING}"
        deleted = 0
        for table in BY_EVENT:
            deleted_here = conn.execute(f"DELETE FROM [{table}] WHERE seq IN ({oldest})", (end, watermark)).rowcount
            counts[table] += deleted_here
            deleted += deleted_here
        deleted_here = conn.execute(f"DELETE FROM events WHERE seq IN ({oldest})", (end, watermark)).rowcount
        counts["events"] += deleted_here
        deleted += deleted_here
        for table, column in RETENTION_COLUMNS.items():  # by their own times, up to the oldest event kept
            if table != "events":
                deleted_here = conn.execute(f"DELETE FROM [{table}] WHERE [{column}] < ?", (cutoff,)).rowcount
                counts[table] += deleted_here
                deleted += deleted_here
        used = used_bytes(conn)
        if used <= target or not deleted:
            break
    if counts["events"]:  # an entity whose events a pending label keeps stays listed
        prune_entity_recent(conn, cutoff)
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
    """Drop the `entity_recent` rows of entities whose newest event is before `cutoff` and none of
    whose listed events is left (a late one, or one a pending label keeps, may be); a row's entries
    of pruned events are skipped by its readers. A scan of the table, whose size is the number of
    entities, and a look by seq at the listed events of those older than `cutoff`."""
    gone = []
    for key, entity, base, recent in conn.execute("SELECT key, entity, base, recent FROM entity_recent "
                                                  "WHERE newest < ?", (cutoff,)).fetchall():
        seqs = Listed(cutoff, base, recent).seqs()
        marks = ", ".join("?" * len(seqs))
        if conn.execute(f"SELECT 1 FROM events WHERE seq IN ({marks}) LIMIT 1", seqs).fetchone() is None:
            gone.append((key, entity))
    conn.executemany("DELETE FROM entity_recent WHERE key = ? AND entity = ?", gone)
    return len(gone)


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
