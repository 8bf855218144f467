"""The store is the appliance's alone and private: a second `up` (or `up --fresh`, or `replay`) on a
store in use is refused naming the pid, read-only commands still work, and every file is 0600
whatever the umask. With the real `appliance up` in subprocesses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from appliance.serving.client import Client
from tests.conftest import Running, labels_in, make_stream, wait_for, write_config


@pytest.fixture
def source_file(short_dir):
    """The same 600-event file as `test_up`'s."""
    path = short_dir / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in make_stream(600)) + "\n")
    return path


def run_cli(directory, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=directory, capture_output=True,
                          text=True, timeout=timeout, check=False)


def store_inodes(directory):
    return {p.name: p.stat().st_ino for p in directory.iterdir() if p.name.startswith("a.db")}


def test_a_second_up_or_fresh_or_replay_on_a_store_in_use_is_refused_and_reads_still_work(short_dir, source_file):
    write_config(short_dir, source_file)
    app = Running(short_dir)
    try:
        with Client(app.socket) as client:
            total = 600 + labels_in(source_file)
            wait_for(lambda: client.request("stats")["offsets"].get(str(source_file)) == total)
            pid = client.request("health")["pid"]
        before = store_inodes(short_dir)
        db = str(short_dir / "a.db")
        for args in (["up", "--db", db, "--socket", str(short_dir / "b.sock")],
                     ["up", "--fresh", "--db", db, "--socket", str(short_dir / "b.sock")],
                     ["replay", "--db", db]):
            result = run_cli(short_dir, *args)
            assert result.returncode == 1, (args, result.stdout, result.stderr)
            assert f"in use by another appliance (pid {pid})" in result.stderr, result.stderr
        assert store_inodes(short_dir) == before  # --fresh unlinked nothing
        listed = run_cli(short_dir, "models", "list", "--db", db)  # read-only commands still work
        assert listed.returncode == 0, listed.stderr
        exported = run_cli(short_dir, "export", "training-set", "--db", db, "--out", str(short_dir / "t.csv"))
        assert exported.returncode == 0, exported.stderr
        stats = run_cli(short_dir, "stats", "--socket", app.socket)
        assert stats.returncode == 0, stats.stderr
        with Client(app.socket) as client:  # the first appliance goes on, acknowledging and storing
            client.request("ingest", events=[{"event_id": "after", "ts": 1_767_300_000, "user": "u1", "card": "c9",
                                              "amount": 10.0, "city": "faro"}])
            wait_for(lambda: client.request("stats")["counts"]["events"] == 601)
    finally:
        code, _out, err = app.stop()
    assert code == 0, err
    again = Running(short_dir)  # the lock went with the process that held it
    again.stop()


def test_every_file_of_the_store_is_owner_only_under_umask_000(short_dir, source_file):
    write_config(short_dir, source_file)
    (short_dir / "a.db").write_bytes(b"")  # an existing store file with wide permissions is tightened too
    os.chmod(short_dir / "a.db", 0o666)
    old = os.umask(0)
    try:
        app = Running(short_dir, "--serve-processes", "2")  # a serving child: its inbox and the online store too
    finally:
        os.umask(old)
    try:
        with Client(app.socket) as client:
            client.request("ingest", events=[{"event_id": "x", "ts": 1_767_300_000, "user": "u1", "card": "c9",
                                              "amount": 10.0, "city": "faro"}])
            wait_for(lambda: client.request("stats")["counts"]["events"] >= 1)
        expected = {"a.db", "a.db-wal", "a.db-shm", "a.db-inbox", "a.db-order", "a.db-lock", "a.sock",
                    "a.db-online", "a.db-inbox-1", "a.sock.p"}

        def present() -> set[str]:
            return {p.name for p in short_dir.iterdir() if p.name.startswith("a.")}

        # the WAL files come with the store writer's process, which opens the store once its imports are done
        wait_for(lambda: expected <= present(), explain=lambda: sorted(expected - present()))
        names = present()
        online = short_dir / "a.db-online"  # the online store: an owner-only directory of owner-only files
        assert stat.S_IMODE(online.stat().st_mode) == 0o700
        names = (names - {"a.db-online"}) | {f"a.db-online/{p.name}" for p in online.iterdir()}
        modes = {name: stat.S_IMODE((short_dir / name).stat().st_mode) for name in names}
        assert all(mode == 0o600 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}
    finally:
        app.stop()
