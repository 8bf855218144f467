"""An entity's recent predictions and their labels, read from the store for the operator.

The store keeps, per entity (key name, value), the `seq`s of its newest `RECENT_PER_ENTITY` events
(by event time, then arrival) in one small row of `entity_recent` (4 bytes an event, newest first). The
store writer upserts that row once per touched entity per transaction (`RecentEntities`): the table
grows with the number of entities, not of events, so the writer's cost per event does not grow
with the history (an expression index per key on `events` did: one random index page per key per
event once the index outgrew the cache, `docs/benchmarks.md`). A lookup reads the row, then the
events by `seq` (an index range per row), joined to predictions and labels by their primary key.

Entity values are kept as the events' payloads carried them: text as text, an integer (or an
integral float, or a boolean) as an integer, so "c123" and 123 are different entities, as
`json_extract` saw them. Reads run on a read-only connection in WAL mode, so they never wait for
the writer; they serve an operator's lookup (the console's entities view, `appliance entity`),
never the predict path.
"""

from __future__ import annotations

import sqlite3
import struct
from typing import Any, NamedTuple

import orjson

from appliance.storage.rows import LABEL_STATUSES, ORIGINS
from appliance.timeutil import format_timestamp

__all__ = ["RECENT_PER_ENTITY", "RecentEntities", "EntityHistory"]

RECENT_PER_ENTITY = 50  # events listed per entity: the most the `entity` op returns
_OFFSET = struct.Struct("<I")  # a listed event's seq less the row's base
_OFFSET_LIMIT = 1 << 32
_INT_LIMIT = 1 << 63
CACHED_ROWS = 100_000  # rows the writer keeps in memory (~40 MB at most)


class Recent(NamedTuple):
    """One event of an entity: its event time and the `seq` the events table holds it by; newer is
    greater (event time, then arrival)."""

    ts: float
    seq: int


class Listed(NamedTuple):
    """An `entity_recent` row: the event time of its newest event, and the seqs of its newest events,
    newest first, packed as 32-bit offsets from `base` (4 bytes an event)."""

    newest: float
    base: int
    recent: bytes

    def seqs(self) -> list[int]:
        return [self.base + offset for offset in struct.unpack(f"<{len(self.recent) // 4}I", self.recent)]

    def head(self) -> Recent:
        return Recent(self.newest, self.base + _OFFSET.unpack_from(self.recent)[0])


def pack_listed(entries: list[Recent]) -> Listed:
    """A row listing `entries` (newest first)."""
    seqs = [entry.seq for entry in entries]
    base = min(seqs)
    return Listed(entries[0].ts, base, struct.pack(f"<{len(seqs)}I", *(seq - base for seq in seqs)))


def prepend(listed: Listed, new: list[Recent], keep: int) -> Listed | None:
    """`listed` with `new` (newest first, all newer than its head) in front, its newest `keep`; None
    when an offset would not fit in 32 bits (the caller repacks).

    >>> row = pack_listed([Recent(5.0, 12), Recent(1.0, 10)])
    >>> prepend(row, [Recent(9.0, 14), Recent(7.0, 13)], keep=3).seqs()
    [14, 13, 12]
    """
    offsets = [entry.seq - listed.base for entry in new[:keep]]
    if offsets[0] >= _OFFSET_LIMIT:
        return None
    head = struct.pack(f"<{len(offsets)}I", *offsets)
    return Listed(new[0].ts, listed.base, (head + listed.recent)[:keep * _OFFSET.size])


def entity_value(value: Any) -> str | int | None:
    """The value an entity is listed under, as `json_extract` would have returned it, or None when
    no lookup could name it (absent, a non-integral number, a list or object).

    >>> entity_value("c1"), entity_value(7), entity_value(7.0), entity_value(True), entity_value(2.5)
    ('c1', 7, 7, 1, None)
    """
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value) if -_INT_LIMIT <= value < _INT_LIMIT else None
    if isinstance(value, float) and value.is_integer() and -_INT_LIMIT <= value < _INT_LIMIT:
        return int(value)
    return None


class RecentEntities:
    """The store writer's side: gathers one transaction's events per entity, then upserts each
    touched entity's row once (`write`). Payloads are `PayloadCodec` arrays: `[shape, <key values
    in `keys` order>, ...]`.

    The usual event is its entity's newest: its seq goes in front of the row's, the oldest falls
    off. An event older than its entity's newest (late, or written again by a replay) takes the
    slow way: the listed events' times are read back from the events table and the lists merged.
    """

    def __init__(self, keys: tuple[str, ...], keep: int = RECENT_PER_ENTITY, cached: int = CACHED_ROWS) -> None:
        self.keys = keys
        self.keep = keep
        self._new: dict[tuple[str, str | int], list[Recent]] = {}
        # The rows as last written, so a touched entity costs no read; it may list events pruned
        # since (readers skip them), never miss one. Emptied when full and when a transaction fails.
        self._cache: dict[tuple[str, str | int], Listed] = {}
        self.cached = cached

    def discard(self) -> None:
        """Forget what was noted and cached: the transaction that wrote it was rolled back."""
        self._new, self._cache = {}, {}

    def add(self, events: list[dict[str, Any]]) -> None:
        """Note the events of one batch (rows of the events table)."""
        if not self.keys:
            return
        new, keys = self._new, self.keys
        for row in events:
            values = orjson.loads(row["payload"])
            if type(values) is not list or row.get("seq") is None:  # not a `PayloadCodec` array: unlisted
                continue
            entry = Recent(row["ts"], row["seq"])
            for key, value in zip(keys, values[1:]):
                entity = value if type(value) is str else entity_value(value)
                if entity is not None:
                    new.setdefault((key, entity), []).append(entry)

    def write(self, conn: sqlite3.Connection) -> int:
        """Upsert the noted entities' rows (inside the writer's transaction); return how many."""
        new, self._new = self._new, {}
        cache = self._cache
        if len(cache) + len(new) > self.cached:
            cache.clear()
        rows = []
        select = "SELECT newest, base, recent FROM entity_recent WHERE key = ? AND entity = ?"
        size = self.keep * _OFFSET.size
        for pair, entries in new.items():
            old = cache.get(pair)
            if old is None and (found := conn.execute(select, pair).fetchone()) is not None:
                old = Listed(*found)
            if old is None:
                listed = pack_listed(sorted(set(entries), reverse=True)[:self.keep])
            elif len(entries) == 1:  # the usual case, inline: one event, newer than the listed ones
                ts, seq = entries[0]
                offset = seq - old.base
                if (ts > old.newest or ts == old.newest and offset > _OFFSET.unpack_from(old.recent)[0]) \
                        and offset < _OFFSET_LIMIT:
                    listed = Listed(ts, old.base, (_OFFSET.pack(offset) + old.recent)[:size])
                else:
                    listed = self._merge(conn, old, entries)
            else:
                entries = sorted(set(entries), reverse=True)
                listed = prepend(old, entries, self.keep) if entries[-1] > old.head() else None
                listed = listed or self._merge(conn, old, entries)
            cache[pair] = listed
            rows.append((*pair, *listed))
        conn.executemany("INSERT OR REPLACE INTO entity_recent (key, entity, newest, base, recent) "
                         "VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def _merge(self, conn: sqlite3.Connection, old: Listed, new: list[Recent]) -> Listed:
        seqs = old.seqs()
        marks = ", ".join("?" * len(seqs))
        listed = conn.execute(f"SELECT ts, seq FROM events WHERE seq IN ({marks})", seqs).fetchall()
        merged = sorted({*map(Recent._make, listed), *new}, reverse=True)  # pruned events are not found
        return pack_listed(merged[:self.keep])


class EntityHistory:
    """Bounded lookups of one entity's events, each with its prediction and, when known, its label."""

    def __init__(self, db_path: str, keys: tuple[str, ...]) -> None:
        self.db_path = db_path
        self.keys = keys
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False)
        return self._conn

    def recent(self, key: str, entity: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest `limit` (at most `RECENT_PER_ENTITY`) events of `entity` under `key`, newest
        first (event time, then arrival).

        An entity given as text also matches events that carried it as a JSON number. Each lookup
        reads one or two rows of `entity_recent` and at most `limit` events, however many the entity has.
        """
        conn = self._connection()
        names = [entity] + ([number] if (number := _as_integer(entity)) is not None else [])
        limit = max(0, min(limit, RECENT_PER_ENTITY))
        wanted: list[int] = []
        for name in names:  # each list newest first: its first `limit` are the candidates
            found = conn.execute("SELECT newest, base, recent FROM entity_recent WHERE key = ? AND entity = ?",
                                 (key, name)).fetchone()
            wanted += Listed(*found).seqs()[:limit] if found else []
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        rows = conn.execute(
            "SELECT e.seq, e.event_id, e.ts, e.ingested, p.score, p.version, p.origin, l.label, l.status, "
            "max(0.0, l.ts - e.ts) "  # the label's delay, as the engine computed it
            "FROM events e LEFT JOIN predictions p ON p.seq = e.seq "
            f"LEFT JOIN labels l ON l.seq = e.seq WHERE e.seq IN ({marks})",
            wanted).fetchall()  # a listed event pruned since is simply not found
        rows = sorted(rows, key=lambda row: (row[2], row[0]), reverse=True)[:limit]
        return [{"event_id": event_id, "event_time": format_timestamp(ts), "ingested": bool(ingested),
                 "score": score, "version": version, "origin": None if origin is None else ORIGINS[origin],
                 "label": label, "label_status": None if status is None else LABEL_STATUSES[status],
                 "label_delay_seconds": delay}
                for _, event_id, ts, ingested, score, version, origin, label, status, delay in rows]

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
