"""After a restart, what the appliance says is what the store holds: the audit trail of the run
before, and models staged while it was stopped (real `appliance replay` and `up` subprocesses)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from appliance.serving.client import Client
from tests.conftest import Running, make_stream, wait_for, write_config

APPLIANCE = [sys.executable, "-m", "appliance"]


@pytest.fixture
def stream_file(short_dir):
    path = short_dir / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in make_stream(600)) + "\n")
    return path


def _run(directory, *args):
    out = subprocess.run([*APPLIANCE, *args], cwd=directory, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _store_rows(db, sql):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_audit_after_replay_then_up_is_the_stores_trail(short_dir, stream_file):
    write_config(short_dir, stream_file)
    db = str(short_dir / "a.db")
    _run(short_dir, "replay", "--db", db)
    stored = _store_rows(db, "SELECT id, action, version FROM audit ORDER BY id DESC")
    assert len(stored) > 1 and max(v or 0 for _, _, v in stored) > 1  # the replay published versions
    app = Running(short_dir)
    try:
        with Client(app.socket) as client:
            audit = client.request("audit", limit=100)["audit"]
            serving = client.request("stats")["model"]
    finally:
        app.stop()
    assert [(row["id"], row["action"], row["version"]) for row in audit] == [tuple(r) for r in stored][:len(audit)]
    assert audit[0]["reason"] != "the initial, untrained version"
    assert str(max(v or 0 for _, _, v in stored)) in str(serving)


def test_a_model_staged_while_stopped_reaches_the_store_without_an_event(short_dir, stream_file):
    write_config(short_dir, stream_file)
    db = str(short_dir / "a.db")
    _run(short_dir, "replay", "--db", db)
    newest = _store_rows(db, "SELECT max(version) FROM models")[0][0]  # older ones' models are thinned
    _run(short_dir, "models", "export", str(newest), "--out", str(short_dir / "v.zip"), "--db", db)
    _run(short_dir, "models", "import", str(short_dir / "v.zip"), "--db", db)
    before = _store_rows(db, "SELECT max(version) FROM models")[0][0]
    app = Running(short_dir)  # the source is read to its end already: no event follows
    try:
        wait_for(lambda: _store_rows(db, "SELECT max(version) FROM models")[0][0] == before + 1,
                 explain=lambda: _store_rows(db, "SELECT version, candidate FROM models"))
        with Client(app.socket) as client:
            assert client.request("audit", limit=1)["audit"][0]["action"] == "import"
    finally:
        code, _, err = app.stop()
    assert code == 0, err
    assert str(before + 1) in _run(short_dir, "models", "list", "--db", db)
    again = Running(short_dir)  # the next start does not register it a second time
    again.stop()
    assert _store_rows(db, "SELECT count(*) FROM audit WHERE action = 'import'")[0][0] == 1
    assert _store_rows(db, "SELECT max(version) FROM models")[0][0] == before + 1


def test_the_end_of_a_finite_source_is_shown_and_the_rates_fall_to_zero(short_dir, stream_file):
    write_config(short_dir, stream_file)
    app = Running(short_dir)
    try:
        with Client(app.socket) as client:
            # the reader reaches the file's end before the engine has taken every event: wait for both
            stats = wait_for(lambda: (s := client.request("stats"))["rates"]["events_per_second"] == 0
                             and s["counts"]["events"] == 600 and (s.get("source") or {}).get("ended_at") and s,
                             explain=lambda: client.request("stats").get("rates"))
            assert stats["counts"]["events"] == 600 and stats["source"]["spec"] == str(stream_file)
            ingest = stats["stages"][0]
            assert ingest["stage"] == "ingest" and ingest["state"] == "ended", ingest
            assert stats["source"]["ended_at"] in ingest["detail"]
            # the socket still feeds the stream: ingest is ok again while events come, the end still said
            client.request("ingest", events=[{"event_id": "late-1", "ts": 1_767_300_000, "user": "u1",
                                              "card": "c9", "amount": 10.0, "city": "faro"}])
            again = wait_for(lambda: (s := client.request("stats"))["counts"]["events"] == 601 and s)
            if again["rates"]["events_per_second"] > 0:  # measured over a window: it may have passed already
                assert again["stages"][0]["state"] == "ok" and "the source ended" in again["stages"][0]["detail"]
    finally:
        code, out, err = app.stop()
    assert code == 0, err
    assert f"source ended at {stats['source']['ended_at']}, serving" in out
