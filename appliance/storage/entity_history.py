"""An entity's recent predictions and their labels, read from the store for the operator.

The events table keeps each event's payload as a JSON array whose first values are the entity keys'
(`appliance.storage.rows.PayloadCodec`, in the engine's key order); one expression index per
entity key (`json_extract(payload, '$[i]')`) makes "the newest events of card c123" an index range
scan, joined to predictions and labels by their primary key. Reads run on a read-only
connection in WAL mode, so they never wait for the writer; they serve an operator's lookup
(the console's entities view, `appliance entity`), never the predict path.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from appliance.timeutil import format_timestamp

__all__ = ["index_entity_keys", "EntityHistory"]


def _path_of(keys: tuple[str, ...], key: str) -> str:
    return f"$[{keys.index(key) + 1}]"  # after the payload's shape


def _index_name(key: str) -> str:
    return "events_by_" + re.sub(r"[^0-9A-Za-z_]", "_", key)


def index_entity_keys(conn: sqlite3.Connection, keys: tuple[str, ...]) -> None:
    """Create (once) the expression index per entity key on the events table."""
    for key in keys:
        path = _path_of(keys, key)
        conn.execute(f'CREATE INDEX IF NOT EXISTS "{_index_name(key)}" '
                     f"ON events(json_extract(payload, '{path}'), ts)")
    conn.commit()


class EntityHistory:
    """Bounded lookups of one entity's events, each with its prediction and, when known, its label."""

    def __init__(self, db_path: str, keys: tuple[str, ...]) -> None:
        self.db_path = db_path
        self.keys = keys
        self._conn: sqlite3.Connection | None = None
        self._sql = {key: self._query(keys, key) for key in keys}

    @staticmethod
    def _query(keys: tuple[str, ...], key: str) -> str:
        path = _path_of(keys, key)
        return ("SELECT e.event_id, e.ts, e.ingested, p.score, p.version, p.origin, l.label, l.status, l.delay "
                "FROM events e LEFT JOIN predictions p ON p.event_id = e.event_id "
                "LEFT JOIN labels l ON l.event_id = e.event_id "
                f"WHERE json_extract(e.payload, '{path}') = ? ORDER BY e.ts DESC LIMIT ?")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False)
        return self._conn

    def recent(self, key: str, entity: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest `limit` events of `entity` under `key`, newest first.

        An entity given as text also matches events that carried it as a JSON number. Each query
        walks the index newest first and stops after `limit` rows, however many events the entity has.
        """
        conn, sql = self._connection(), self._sql[key]
        rows = conn.execute(sql, (entity, limit)).fetchall()
        number = _as_integer(entity)
        if number is not None:
            rows += conn.execute(sql, (number, limit)).fetchall()
            rows = sorted(rows, key=lambda row: row[1], reverse=True)[:limit]
        return [{"event_id": event_id, "event_time": format_timestamp(ts), "ingested": bool(ingested),
                 "score": score, "version": version, "origin": origin, "label": label,
                 "label_status": status, "label_delay_seconds": delay}
                for event_id, ts, ingested, score, version, origin, label, status, delay in rows]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _as_integer(text: str) -> int | None:
    """The JSON integer an entity id given as text may have been sent as: ASCII digits within
    SQLite's 64-bit range (a key outside it could not have been stored as a number).

    >>> _as_integer("-42"), _as_integer("²"), _as_integer("9" * 30), _as_integer("u1")
    (-42, None, None, None)
    """
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        return None
    number = int(text)
    return number if -(1 << 63) <= number < (1 << 63) else None
