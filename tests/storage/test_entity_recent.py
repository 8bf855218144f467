"""An entity's newest events, listed by the store writer in `entity_recent`: the same rows as a scan
of the whole events table (the lookup the expression index per key served), after replays, out of
order event times, text and numeric ids, and retention."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from appliance.storage.body import read_dictionaries, split_body
from appliance.storage.entity_history import RECENT_PER_ENTITY, EntityHistory, _as_integer
from appliance.storage.payloads import PayloadCodec
from appliance.storage.retention import prune_by_age, prune_to_bytes, used_bytes
from appliance.storage.writer import StoreWriter

KEYS = ("card", "user")
# ids as text, as numbers, and both at once ("7" and 7 are the same entity to a lookup of "7")
CARDS = [f"c{i}" for i in range(12)] + ["7", "007", "-3"]
USERS = [7, 8, 9, -3, 7.0, True, 2.5, "u1", "u2", None]


def stream(seed: int, events: int) -> list[dict]:
    """Rows as the engine logs them: unique seqs, event times out of order by up to 60 s, ties."""
    rng = random.Random(seed)
    codec = PayloadCodec(KEYS, "event_id")
    rows = []
    for seq in range(1, events + 1):
        raw = {"event_id": f"e{seq}", "amount": rng.random()}
        if rng.random() < 0.95:
            raw["card"] = rng.choice(CARDS[:3]) if rng.random() < 0.5 else rng.choice(CARDS)
        if seq < events // 8 and rng.random() < 0.3:  # cards seen only early: retention removes them
            raw["card"] = f"old{seq % 5}"
        if rng.random() < 0.9:
            raw["user"] = rng.choice(USERS)
        ts = float(int(seq * 2 - rng.random() * 60))  # whole seconds: equal times happen
        rows.append({"event_id": raw["event_id"], "seq": seq, "ts": ts, "source": 1, "offset": seq,
                     "ingested": 1, "payload": codec.encode(raw, raw["event_id"])})
    return rows


def other_rows(events: list[dict], rng: random.Random) -> dict[str, list[dict]]:
    predictions = [{"seq": e["seq"], "version": 1, "score": rng.random(), "predicted": 0,
                    "learner_score": 0.5, "origin": 0, "features": b"\x00"} for e in events]
    labels = [{"seq": e["seq"], "ts": e["ts"] + 5.0, "label": 1.0, "status": 1}
              for e in events if rng.random() < 0.3]
    return {"predictions": predictions, "labels": labels}


def write(path: Path, rows: list[dict], seed: int, replay_from: int | None = None) -> None:
    """Through the real writer in batches of varying size (one or more per transaction); with
    `replay_from`, the rows from there are written a second time, as a restart redoes them."""
    rng = random.Random(seed)
    writer = StoreWriter(path, entity_keys=KEYS, commit_every=0.0).start()
    try:
        batches = rows + (rows[replay_from:] if replay_from is not None else [])
        start = 0
        while start < len(batches):
            size = rng.choice([1, 3, 40, 200])
            events = batches[start:start + size]
            writer.put_rows({"events": events, **other_rows(events, rng)})
            if rng.random() < 0.3:
                assert writer.flush(30)
            start += size
        assert writer.flush(30)
        assert writer.failure is None
    finally:
        writer.close()


def scanned(path: Path, key: str, entity: str, limit: int) -> list[str]:
    """The newest `limit` events of an entity by a scan of every event (the expression-index lookup's
    semantics: text equal, or the number the text spells), newest first, then by arrival."""
    conn = sqlite3.connect(path)
    read_dictionaries(conn)
    conn.create_function("payload", 1, lambda body: split_body(body).payload, deterministic=True)
    position = KEYS.index(key) + 1
    found = []
    names = [entity] + ([n] if (n := _as_integer(entity)) is not None else [])
    for name in names:
        found += conn.execute("SELECT ts, seq, event_id FROM events "
                              f"WHERE json_extract(payload(body), '$[{position}]') = ?", (name,)).fetchall()
    conn.close()
    return [event_id for _, _, event_id in sorted(set(found), reverse=True)[:limit]]


def lookups(history: EntityHistory) -> list[tuple[str, str, int]]:
    names = {"card": CARDS + ["7", "old0", "nobody"], "user": ["7", "8", "-3", "1", "u1", "2.5", "07", "nobody"]}
    return [(key, name, limit) for key in KEYS for name in names[key] for limit in (1, 5, 20, RECENT_PER_ENTITY)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_entitys_newest_events_are_those_a_scan_of_every_event_finds(tmp_path, seed):
    path = tmp_path / "store.db"
    rows = stream(seed, 3_000)
    write(path, rows, seed, replay_from=2_600)  # a restart rewrites the last 400 with the same seqs
    history = EntityHistory(str(path), KEYS)
    checked = 0
    for key, name, limit in lookups(history):
        got = history.recent(key, name, limit)
        assert [row["event_id"] for row in got] == scanned(path, key, name, limit), (key, name, limit)
        checked += len(got)
    assert checked > 1_000  # the lookups did find events (c0-c2 have hundreds each)
    row = history.recent("card", "c0", 1)[0]
    conn = sqlite3.connect(path)
    score = conn.execute("SELECT p.score FROM predictions p JOIN events e USING (seq) WHERE e.event_id = ?",
                         (row["event_id"],)).fetchone()[0]
    assert row["score"] == score and row["version"] == 1 and row["origin"] == "stream"
    labelled = [r for r in history.recent("card", "c0", 50) if r["label"] is not None]
    assert labelled and all(r["label_status"] == "joined" and r["label_delay_seconds"] == pytest.approx(5.0)
                            for r in labelled)  # from the label's time and its event's
    assert conn.execute("SELECT count(*) FROM entity_recent").fetchone()[0] < 40  # one row per entity
    conn.close()
    history.close()


def test_after_retention_the_lookup_still_matches_the_scan_and_gone_entities_are_dropped(tmp_path):
    path = tmp_path / "store.db"
    rows = stream(4, 2_000)
    write(path, rows, 4)
    conn = sqlite3.connect(path)
    before = conn.execute("SELECT count(*) FROM entity_recent").fetchone()[0]
    counts = prune_by_age(conn, {"events": 1_000.0, "predictions": 1_000.0}, watermark=4_000.0)  # before ts 3,000
    conn.commit()
    assert counts["events"] > 1_000
    newest = dict(conn.execute("SELECT entity, newest FROM entity_recent WHERE key = 'card'").fetchall())
    after = conn.execute("SELECT count(*) FROM entity_recent").fetchone()[0]
    conn.close()
    assert all(ts >= 3_000.0 for ts in newest.values()) and after < before
    assert_lookups_match_scan(path)


def assert_lookups_match_scan(path) -> None:
    """Every entity's listed events, by lookup, equal a scan of the events table."""
    history = EntityHistory(str(path), KEYS)
    for key, name, limit in lookups(history):
        assert [row["event_id"] for row in history.recent(key, name, limit)] == scanned(path, key, name, limit)
    history.close()


def test_after_a_prune_to_bytes_the_lookup_still_matches_the_scan(tmp_path):
    path = tmp_path / "store.db"
    write(path, stream(6, 4_000), 6)
    conn = sqlite3.connect(path)
    bound = used_bytes(conn) // 2
    # oldest history first (fewer events than a step: everything before the watermark goes)
    _, counts = prune_to_bytes(conn, bound, watermark=4_000.0)
    conn.commit()
    left = conn.execute("SELECT min(ts) FROM events").fetchone()[0]
    stale = conn.execute("SELECT count(*) FROM entity_recent WHERE newest < ?", (left,)).fetchone()[0]
    conn.close()
    assert counts["events"] > 1_000 and left >= 3_900.0
    assert stale == 0  # entities with no event left are no longer listed
    assert_lookups_match_scan(path)


def test_a_limit_above_the_listed_count_returns_the_listed_count(tmp_path):
    path = tmp_path / "store.db"
    write(path, stream(5, 1_500), 5)
    history = EntityHistory(str(path), KEYS)
    assert len(history.recent("card", "c0", RECENT_PER_ENTITY + 30)) == RECENT_PER_ENTITY
    history.close()
