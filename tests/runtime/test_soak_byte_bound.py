"""The soak at the byte bound: the real `appliance up` (a subprocess) with a small `[retention]
max_bytes`, fed over its socket several times the bound. The store settles at the bound (pages in
use at most the bound after every checkpoint; the file at most `FILE_SLACK` times it, the slack
docs/reliability.md states), and nothing acknowledged is lost: every acknowledged event is either
in the store or was pruned by the documented rule (oldest first, counted), and the labels still
pending when their events' neighbours were pruned join when they arrive."""

from __future__ import annotations

import os
import random
import sqlite3

import orjson

from appliance.serving.client import Client
from appliance.storage.rows import LABEL_STATUSES
from tests.conftest import Running, wait_for, write_config

BOUND = 4 << 20  # [retention] max_bytes: 4 MiB
# The file stays under this many bounds (measured: 1.29 at the end of this run): the pages in use are at
# most the bound after each checkpoint, plus the rows of one checkpoint interval and the freelist's
# fragmentation. The WAL is apart: its size follows the largest transaction, not the bound.
FILE_SLACK = 1.5
CHUNK = 400
CHUNKS = 30  # 12,000 events with a 300-byte note
EARLY = 25  # the first events' labels arrive only at the end: pending the whole run
START = 1_767_225_600.0


def event(i: int) -> dict:
    return {"type": "payment", "event_id": f"e{i:06d}", "ts": START + i * 0.25, "user": f"u{i % 97}",
            "card": f"c{i % 131}", "amount": float(5 + i % 40), "city": ("lisbon", "porto", "faro")[i % 3],
            "note": random.Random(i).randbytes(150).hex()}  # 300 characters that do not compress


def label(i: int, ts: float) -> dict:
    return {"type": "label", "event_id": f"e{i:06d}", "ts": ts, "label": i % 2}


def store_query(db, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchall()


def store_sizes(db) -> tuple[int, int, int]:
    """(pages in use, the file, its WAL), in bytes."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
    wal = f"{db}-wal"
    return (pages - free) * size, os.path.getsize(db), os.path.getsize(wal) if os.path.exists(wal) else 0


def test_a_soak_past_the_byte_bound_settles_at_it_and_loses_nothing_acknowledged(short_dir):
    source = short_dir / "empty.jsonl"
    source.write_text("")
    config = write_config(short_dir, source)
    config.write_text(config.read_text() + f'\n[retention]\nmax_bytes = {BOUND}\n\n[checkpoint]\nevery = "0.2s"\n')
    db = short_dir / "a.db"
    app = Running(short_dir)
    acknowledged: list[str] = []
    samples: list[tuple[int, int]] = []
    try:
        with Client(app.socket) as client:

            def checkpointed() -> bool:
                """Whether the store's last checkpoint covers everything the engine has processed."""
                offsets = client.request("stats")["offsets"]
                rows = store_query(db, "SELECT offsets FROM checkpoint WHERE id = 1")
                return bool(rows) and orjson.loads(rows[0][0]) == offsets

            for chunk in range(CHUNKS):
                first = chunk * CHUNK
                items = [event(i) for i in range(first, first + CHUNK)]
                # Labels for the chunk before this one (joined at once), never for the EARLY ones yet.
                items += [label(i, START + (first - 1) * 0.25) for i in range(max(EARLY, first - CHUNK), first)]
                reply = client.request("ingest", events=items)
                assert reply["accepted"] == len(items), reply["rejected"][:3]
                acknowledged += [item["event_id"] for item in items if item["type"] == "payment"]
                sent = len(acknowledged)
                wait_for(lambda: client.request("stats")["counts"]["events"] == sent)  # noqa: B023 (used at once)
                wait_for(checkpointed)
                samples.append(store_sizes(db))
            last_ts = START + CHUNKS * CHUNK * 0.25
            reply = client.request("ingest", events=[label(i, last_ts) for i in range(EARLY)])
            assert reply["accepted"] == EARLY
            wait_for(lambda: client.request("stats")["counts"]["labels_joined"] >= CHUNKS * CHUNK - CHUNK)
            wait_for(checkpointed)
            stats = client.request("stats")
    finally:
        code, _, err = app.stop()
    assert code == 0, err

    # The store settled at its bound.
    over = [i for i, (used, _, _) in enumerate(samples) if used > BOUND]
    assert not over, [samples[i] for i in over]
    assert max(size for _, size, _ in samples) <= FILE_SLACK * BOUND, samples
    assert samples[-1][0] > 0.5 * BOUND  # it holds as much as the bound lets it, not nothing

    # Nothing acknowledged lost: retained, or pruned oldest first by the rule, and counted.
    retained = {row[0] for row in store_query(db, "SELECT event_id FROM events")}
    early = {f"e{i:06d}" for i in range(EARLY)}
    pruned = [eid for eid in acknowledged if eid not in retained]
    assert len(pruned) > 2 * len(retained)  # fed over three times what the bound holds
    assert early <= retained  # the pending labels' events stayed through every pass
    newest_pruned = max(pruned)
    assert all(eid in retained for eid in acknowledged if eid > newest_pruned)  # oldest first: a prefix
    assert stats["store"]["pruned_for_bytes"]["events"] == len(pruned)
    assert stats["counts"]["events"] == len(acknowledged)
    # The pending labels joined their events when they came, with the predictions kept for them.
    joined = store_query(db, "SELECT e.event_id, l.status, p.score FROM labels l JOIN predictions p USING (seq) "
                             "JOIN events e USING (seq) WHERE e.event_id < ?", f"e{EARLY:06d}")
    assert len(joined) == EARLY and all(LABEL_STATUSES[status] == "joined" and score is not None
                                        for _, status, score in joined)
