"""After a restart, what the appliance says is what the store holds: the audit trail of the run
before, and models staged while it was stopped (real `appliance replay` and `up` subprocesses)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from appliance.client import Client

from .test_up import Running, stream_file, wait_for, write_config  # noqa: F401 - the fixture

APPLIANCE = [sys.executable, "-m", "appliance"]


def _run(directory, *args):
    out = subprocess.run([*APPLIANCE, *args], cwd=directory, capture_output=True, text=True, timeout=300)
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
    _run(short_dir, "models", "export", "2", "--out", str(short_dir / "v2.zip"), "--db", db)
    _run(short_dir, "models", "import", str(short_dir / "v2.zip"), "--db", db)
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
