"""The durable store: one SQLite file (WAL), its schema, written by one thread (`storage.writer`),
read by anyone.

Schema and reads go through sqlite-utils. `open_db` creates every table (and the `predictions`
view), records the rows' layout in a new store and refuses a store in another one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from appliance.errors import ConfigError
from appliance.storage.ownership import make_private
from appliance.storage.retention import INDEXED, RETENTION_COLUMNS
from appliance.storage.snapshot import ROWS_FORMAT

TABLES: dict[str, tuple[dict[str, type], Any]] = {
    # an event and its prediction: one row keyed by the event's `seq` (the rowid; rows layout 5); its
    # label a row of `labels` by the same seq. `body` holds the payload and the feature vector, compressed
    # (`body.py`); `learner_score` is NULL when it equals `score`; origin and status as small ints (`rows.py`).
    # The `predictions` view (`PREDICTIONS_VIEW`) reads the prediction's columns as a table did.
    "events": ({"seq": int, "event_id": str, "ts": float, "source": int, "offset": int, "ingested": int,
                "version": int, "score": float, "predicted": int, "learner_score": float, "origin": int,
                "body": bytes}, "seq"),
    "dictionaries": ({"id": int, "data": bytes, "wall_ts": float}, "id"),  # the bodies' compression dictionaries
    "feature_names": ({"version": int, "names": str}, "version"),  # names of the packed vectors, per version
    "payload_shapes": ({"version": int, "keys": str}, "version"),  # keys of the events' payload arrays
    "sources": ({"id": int, "source": str}, "id"),  # the events' sources, by the id their rows hold
    # a label's delay is max(0, its ts - its event's ts), computed by its readers (the same float)
    "labels": ({"seq": int, "ts": float, "label": float, "status": int}, "seq"),
    # a label whose prediction had expired (its event is known by id only)
    "late_labels": ({"event_id": str, "ts": float, "label": float}, "event_id"),
    "dead_letters": ({"source": str, "offset": int, "reason": str, "payload": str, "watermark": float},
                     ("source", "offset")),
    "models": ({"version": int, "spec": str, "parent": int, "n_learned": int, "event_ts": float,
                "wall_ts": float, "metrics": str, "model": bytes, "candidate": str}, "version"),
    "metrics": ({"labels": int, "event_ts": float, "version": int, "learner": str, "served": str, "champion": str,
                 "candidates": str},
                "labels"),
    "entity_state": ({"key": str, "entity": str, "state": bytes}, ("key", "entity")),
    # an entity's newest events (`entity_history`); `entity` without affinity: text and numbers kept apart
    "entity_recent": ({"key": str, "entity": bytes, "newest": float, "base": int, "recent": bytes},
                      ("key", "entity")),
    "pending_labels": ({"event_id": str, "seq": int, "ts": float, "packed": bytes}, "event_id"),
    "attribute_versions": ({"name": str, "version": int, "path": str, "sha256": str, "rows": int,
                            "loaded_at": float}, ("name", "version")),
    "attribute_rows": ({"name": str, "version": int, "entity": str, "vals": str}, ("name", "version", "entity")),
    "attribute_switches": ({"seq": int, "name": str, "version": int}, ("seq", "name")),
    "audit": ({"id": int, "event_ts": float, "wall_ts": float, "action": str, "version": int, "reason": str,
               "actor": str}, "id"),
    "alerts": ({"id": int, "event_ts": float, "wall_ts": float, "kind": str, "detector": str, "subject": str,
                "evidence": str, "action": str}, "id"),
    "model_imports": ({"id": int, "path": str, "meta": str, "model": bytes, "wall_ts": float}, "id"),
    "checkpoint": ({"id": int, "fingerprint": str, "offsets": str, "engine": bytes, "wall_ts": float}, "id"),
    "store_format": ({"part": str, "version": int}, "part"),
}


# A prediction as its own table held it (rows layout 4), from its event's row: every reader of
# `predictions` (the entities view, the benches, the tests' queries) reads on unchanged; the vector is
# in the row's `body` (`body.split_body`).
PREDICTIONS_VIEW = ("CREATE VIEW IF NOT EXISTS predictions AS SELECT seq, version, score, predicted, "
                    "ifnull(learner_score, score) AS learner_score, origin FROM events WHERE origin IS NOT NULL")
EVENT_COLUMNS = ("seq", "event_id", "ts", "source", "offset", "ingested")  # an event row's, from the engine's event


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed, owner-only) the store with WAL and every table in place."""
    make_private(path)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    existing = set(db.table_names())
    # one B-tree keyed by (key, entity): an upsert rewrites its row in place (`entity_history`)
    db.execute("CREATE TABLE IF NOT EXISTS entity_recent (key TEXT, entity BLOB, newest FLOAT, base INTEGER, "
               "recent BLOB, PRIMARY KEY (key, entity)) WITHOUT ROWID")
    for name, (columns, pk) in TABLES.items():
        db[name].create(columns, pk=pk, if_not_exists=True)
        missing = {c: t for c, t in columns.items() if c not in db[name].columns_dict}
        for column, kind in missing.items():  # a store from an older release: add, never drop
            db[name].add_column(column, kind)
    for name in INDEXED:  # no index on the history: retention finds events by seq (`retention.first_seq_at`)
        db[name].create_index([RETENTION_COLUMNS[name]], if_not_exists=True)
    _check_rows_format(db, path, existing)
    db.execute(PREDICTIONS_VIEW)
    return db


def _check_rows_format(db: sqlite_utils.Database, path: str | Path, existing: set[str]) -> None:
    """Record the rows' layout in a new store; refuse a store whose rows are in another one."""
    found = db.execute("SELECT version FROM store_format WHERE part = 'rows'").fetchone()
    if found is None:
        old = any(table in existing and db.execute(f"SELECT 1 FROM [{table}] LIMIT 1").fetchone() is not None
                  for table in ("events", "predictions"))  # `predictions`: a table before rows layout 5
        if not old:  # a new store (or one that never logged a row): it takes this release's layout
            db.execute("INSERT OR IGNORE INTO store_format (part, version) VALUES ('rows', ?)", [ROWS_FORMAT])
            db.conn.commit()
            return
        found = (1,)  # rows written before the layout was recorded: feature vectors as JSON text
    if found[0] != ROWS_FORMAT:
        db.conn.close()
        raise ConfigError(f'the store "{path}" keeps its rows in layout {found[0]} and this release reads and '
                          f"writes layout {ROWS_FORMAT}; start with --fresh or use another --db")


@contextmanager
def reading(path: str | Path, db: sqlite_utils.Database | None = None) -> Iterator[sqlite_utils.Database]:
    """Use `db` if given, else open the store at `path` for the block and close it after."""
    if db is not None:
        yield db
        return
    opened = open_db(path)
    try:
        yield opened
    finally:
        opened.conn.close()


def load_checkpoint(db: sqlite_utils.Database) -> dict[str, Any] | None:
    """Return the last committed checkpoint, or None for a fresh store."""
    rows = list(db.query("SELECT fingerprint, offsets, engine FROM checkpoint WHERE id = 1"))
    if not rows:
        return None
    row = rows[0]
    return {"fingerprint": row["fingerprint"], "offsets": orjson.loads(row["offsets"]), "engine": row["engine"]}


def load_pending(db: sqlite_utils.Database) -> list[tuple[str, float, bytes]]:
    """Return the label join's pending predictions as (event id, ts, packed), in arrival order."""
    return [tuple(row) for row in db.execute("SELECT event_id, ts, packed FROM pending_labels ORDER BY seq")]


def load_entities(db: sqlite_utils.Database) -> list[tuple[str, str, bytes]]:
    """Return every stored entity state as (key, entity, blob)."""
    return [tuple(row) for row in db.execute("SELECT key, entity, state FROM entity_state").fetchall()]
