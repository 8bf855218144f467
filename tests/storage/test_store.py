"""The SQLite store: retention by event-time age, and stores written by an older release."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

from appliance.config.file import config_from_dict
from appliance.errors import ConfigError
from appliance.runtime.app import Appliance, RunOptions
from appliance.storage.store import open_db
from tests.conftest import SMALL_CONFIG, make_stream


def replay(tmp_path, stream, **overrides):
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(orjson.dumps(raw) + b"\n" for raw in stream))
    data = dict(SMALL_CONFIG, source={"spec": str(source)}, serve={"db": str(tmp_path / "a.db")}, **overrides)
    appliance = Appliance(config_from_dict(data), RunOptions(serve=False))
    appliance.run()
    return appliance, open_db(tmp_path / "a.db")


def test_retention_deletes_rows_older_than_their_age_in_event_time(tmp_path):
    stream = make_stream(600)  # about 7.5 hours of event time
    stream.insert(40, "{broken")
    appliance, db = replay(tmp_path, stream, retention={"keep": "2h", "labels": "forever"})
    cutoff = appliance.engine.watermark - 7200
    payments = [e for e in stream if isinstance(e, dict) and e["type"] == "payment"]
    kept = [e for e in payments if e["ts"] >= cutoff]
    assert 0 < len(kept) < len(payments)
    assert db["events"].count == len(kept)
    assert db.execute("SELECT min(e.ts) FROM predictions JOIN events e USING (seq)").fetchone()[0] >= cutoff
    assert db["predictions"].count == len(kept)  # with their events: none orphaned
    assert db["dead_letters"].count == 0  # the broken line came early: pruned with its watermark
    labelled = db.execute("SELECT count(*) FROM labels WHERE ts < ?", (cutoff,)).fetchone()[0]
    assert labelled > 0  # "forever" for labels overrides keep
    assert db["models"].count == appliance.engine.model.served.version  # the registry is never pruned
    assert appliance.writer.pruned["events"] == len(payments) - len(kept)


def test_without_retention_nothing_is_deleted(tmp_path):
    stream = make_stream(300)
    _, db = replay(tmp_path, stream, retention={"keep": "forever"})
    assert db["events"].count == sum(1 for e in stream if e["type"] == "payment")


def test_retention_must_be_a_duration():
    with pytest.raises(ConfigError, match=r"\[retention\] events must be a positive duration"):
        config_from_dict(dict(SMALL_CONFIG, retention={"events": "0s"}))
    with pytest.raises(ConfigError, match='unknown key "event"'):
        config_from_dict(dict(SMALL_CONFIG, retention={"event": "1d"}))


def test_a_store_from_an_older_release_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE dead_letters (source TEXT, offset INTEGER, reason TEXT, payload TEXT, "
                 "PRIMARY KEY (source, offset))")
    conn.execute("INSERT INTO dead_letters VALUES ('file', 3, 'not valid JSON', '{')")
    conn.commit()
    conn.close()
    db = open_db(path)
    assert "watermark" in db["dead_letters"].columns_dict
    assert list(db["dead_letters"].rows) == [{"source": "file", "offset": 3, "reason": "not valid JSON",
                                               "payload": "{", "watermark": None}]


def test_the_writer_queue_is_bounded_by_rows_and_the_flow_waits_for_room(tmp_path):
    """Batches grow with how far the flow is behind, so the writer bounds rows, not just batches."""
    import threading

    from appliance.storage.writer import StoreWriter

    path = tmp_path / "a.db"
    writer = StoreWriter(path, max_rows=100).start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the disk is "slow": the writer cannot commit until released

    def rows(start, n):
        return {"labels": [{"seq": i, "ts": float(i), "label": 1.0, "status": 1}
                           for i in range(start, start + n)]}

    writer.put_rows(rows(0, 60))  # room: accepted at once
    second_done = threading.Event()
    second = threading.Thread(target=lambda: (writer.put_rows(rows(60, 60)), second_done.set()))
    second.start()
    assert not second_done.wait(0.5), "120 rows queued with room for 100: the second batch should wait"
    assert writer.stats()["queued_rows"] == 60
    blocker.execute("ROLLBACK")
    assert second_done.wait(30)
    second.join()
    assert writer.flush()
    writer.close()
    stats = writer.stats()
    assert stats["waits"] == 1 and stats["queued_rows"] == 0 and stats["rows_written"] == 120
    assert sqlite3.connect(path).execute("SELECT count(*) FROM labels").fetchone()[0] == 120


def test_one_batch_larger_than_the_bound_is_still_written(tmp_path):
    from appliance.storage.writer import StoreWriter

    writer = StoreWriter(tmp_path / "a.db", max_rows=10).start()
    writer.put_rows({"labels": [{"seq": i, "ts": float(i), "label": 0.0, "status": 1}
                                for i in range(25)]})
    assert writer.flush()
    writer.close()
    assert writer.stats()["rows_written"] == 25 and writer.stats()["waits"] == 0


def test_pruning_by_age_finds_events_by_seq_and_takes_their_predictions_and_labels(tmp_path):
    from appliance.storage.retention import first_seq_at, prune_by_age

    conn = open_db(tmp_path / "a.db").conn
    times = [float(t) for t in range(100)]
    times[60] = 5.0  # arrived late: older than the cutoff, after newer events
    conn.executemany("INSERT INTO events (seq, event_id, ts, score, origin) VALUES (?, ?, ?, 0.5, 0)",
                     [(seq, f"e{seq}", ts) for seq, ts in enumerate(times)])
    conn.executemany("INSERT INTO labels (seq, ts, label) VALUES (?, ?, 1.0)", [(s, times[s] + 1) for s in range(100)])
    assert first_seq_at(conn, 30.0) == 30
    # predictions (in their events' rows) kept 70 s keep their events; labels go at the events' 50 s
    counts = prune_by_age(conn, {"events": 50.0, "predictions": 70.0, "labels": 50.0}, 100.0)
    seqs = lambda table: [row[0] for row in conn.execute(f"SELECT seq FROM {table} ORDER BY seq")]  # noqa: E731
    assert counts == {"labels": 50, "events": 30, "late_labels": 0}
    assert seqs("events") == seqs("predictions") == list(range(30, 100))
    assert seqs("labels") == list(range(50, 100))  # the late event's label stays with it...
    assert 60 in seqs("events")  # ...as the late event outlives its age until a pass's search passes it
    prune_by_age(conn, {"events": 50.0, "predictions": 50.0}, 115.0)
    assert seqs("events") == seqs("predictions") == list(range(65, 100))
    conn.close()
