"""A write cut short (a `kill -9` mid-append, a full disk) never costs the next acknowledged record.

The torn tail of the inbox stays a line of its own, dead-lettered as a torn write (it was never
acknowledged); a failed append is refused and nothing of it is read back (docs/reliability.md).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import orjson

from appliance.ingest.inbox import InboxTail
from appliance.serving.client import Client
from tests.conftest import Running, wait_for, write_config

FRAGMENT = b'{"event":{"event_id":"torn","ts":1'


def test_a_torn_inbox_tail_is_dead_lettered_and_the_next_acknowledged_event_is_stored(short_dir):
    source = short_dir / "events.jsonl"
    source.write_text("")
    write_config(short_dir, source)
    code, _, err = Running(short_dir).stop()
    assert code == 0, err
    with open(short_dir / "a.db-inbox", "ab") as inbox:  # what a kill in the middle of a large append leaves
        inbox.write(FRAGMENT)
    app = Running(short_dir)
    try:
        with Client(app.socket, timeout=30) as client:
            reply = client.request("ingest", events=[{"event_id": "after", "ts": 1_767_300_000, "user": "u1",
                                                      "card": "c1", "amount": 10.0, "city": "faro"}])
            assert reply["accepted"] == 1, reply
            wait_for(lambda: client.request("stats")["inbox_lag_bytes"] == 0)
            stats = wait_for(lambda: (s := client.request("stats"))["counts"]["events"] == 1 and s,
                             explain=lambda: client.request("stats")["counts"])
            assert stats["counts"]["dead_letters"] == 1
    finally:
        code, _, err = app.stop()
    assert code == 0, err
    with sqlite3.connect(short_dir / "a.db") as db:
        assert db.execute("SELECT event_id FROM events").fetchall() == [("after",)]
        (payload, reason), = db.execute("SELECT payload, reason FROM dead_letters").fetchall()
    assert payload.encode() == FRAGMENT and reason.startswith("torn write (never acknowledged)")


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from appliance.ingest.inbox import Inbox, InboxWriteError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write(2) fails with EFBIG, as ENOSPC would
    inbox = Inbox(sys.argv[1])
    inbox.append([{"event": {"n": 0}}])
    limit = inbox.size + 100  # the next append tears after 100 bytes: two whole records, then a fragment
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        inbox.append([{"event": {"n": i, "pad": "x" * 20}} for i in range(1, 6)])
    except InboxWriteError as exc:
        print(exc.code, exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    inbox.append([{"event": {"n": 9}}])
    inbox.close()
""")


def test_an_append_cut_short_by_a_full_disk_is_refused_and_nothing_of_it_is_read(short_dir):
    path = short_dir / "inbox"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("write_failed cannot write to the inbox (File too large)"), result.stdout
    assert path.stat().st_size > 0
    tail = InboxTail(str(path))
    lines = [orjson.loads(line) for _, line in tail.read(100)]
    tail.close()
    assert lines == [{"event": {"n": 0}}, {"event": {"n": 9}}]
