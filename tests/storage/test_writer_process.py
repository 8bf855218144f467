"""The store writer in its own process (`appliance.storage.writer_process`): the same rows as the thread,
a dead child is a store failure, and the child dies with the appliance."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

from appliance.errors import ApplianceError
from appliance.runtime.app import Appliance, RunOptions
from appliance.runtime.settings import resolve_config
from appliance.serving.client import Client
from appliance.storage.writer_process import WriterProcess
from tests.conftest import Running, make_stream, wait_for
from tests.runtime.test_crash import _config, tables


def test_a_replay_writes_the_same_tables_through_the_process_as_through_the_thread(tmp_path):
    """Every table, the checkpoint and the entity states included, on a stream with a challenger and
    the drift policy (its alerts, audit rows and registry versions travel too)."""
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in make_stream(2500, seed=5)))
    got = {}
    for in_process in (False, True):
        directory = tmp_path / f"process-{in_process}"
        directory.mkdir()
        _config(directory, source)
        config = resolve_config(str(directory / "appliance.toml"), None, db=str(directory / "a.db"), speed=0.0)
        appliance = Appliance(config, RunOptions(serve=False, fresh=True, writer_process=in_process))
        appliance.run()
        assert isinstance(appliance.writer, WriterProcess) is in_process
        got[in_process] = tables(directory / "a.db")
    assert len(got[True]["events"]) == 2500 and got[True]["models"] and got[True]["checkpoint"]
    for table in got[False]:
        assert got[True][table] == got[False][table], table


def test_a_writer_process_that_dies_is_a_store_failure_and_nothing_waits_on_it(tmp_path):
    writer = WriterProcess(tmp_path / "a.db").start()
    writer.put_rows({"sources": [{"id": 7, "source": "x.jsonl"}]})
    assert writer.flush(timeout=30)
    conn = sqlite3.connect(tmp_path / "a.db")
    assert conn.execute("SELECT id, source FROM sources").fetchall() == [(7, "x.jsonl")]
    conn.close()
    assert writer.failure is None and writer.stats()["pid"] == writer.process.pid
    writer.process.send_signal(signal.SIGKILL)
    wait_for(lambda: writer.failure is not None)
    assert writer.failure == ("the store writer process exited unexpectedly (exit code -9); "
                              "nothing more is written")
    writer.put_rows({"sources": [{"id": 8, "source": "y.jsonl"}]})  # dropped at once, never blocks
    assert writer.flush(timeout=30) is False
    writer.close()
    assert isinstance(writer.error, ApplianceError) and str(writer.error) == writer.failure


def test_the_writer_process_dies_with_the_appliance(tmp_path):
    """`kill -9` of `appliance up` leaves no writer behind to hold the store (PR_SET_PDEATHSIG)."""
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in make_stream(200)))
    _config(tmp_path, source)
    app = Running(tmp_path)
    with Client(app.primary_socket, timeout=30) as client:
        pid = client.request("stats")["store"]["pid"]
    assert pid not in (None, app.proc.pid)
    assert open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[2] == b"appliance.storage.writer_process"
    app.proc.send_signal(signal.SIGKILL)
    app.proc.communicate(timeout=30)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), timeout=30)
    again = Running(tmp_path)  # the store is not held by anyone: a start takes it
    code, _out, err = again.stop()
    assert code == 0, err


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_up_replaces_a_writer_process_that_died_and_loses_nothing(tmp_path):
    """The flow is ended and restarted from the last checkpoint with a new writer process: what the dead
    one held uncommitted is redone; the socket stays up meanwhile (writes refused, then accepted)."""
    source = tmp_path / "events.jsonl"
    events = make_stream(600)
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    _config(tmp_path, source)
    app = Running(tmp_path)
    try:
        with Client(app.primary_socket, timeout=30) as client:
            first = client.request("stats")["store"]["pid"]
            os.kill(first, signal.SIGKILL)
            stats = wait_for(lambda: (s := client.request("stats"))["flow"]["restarts"] == 1
                             and s["store"]["pid"] != first and s["outage"] is None and s, timeout=60)
            assert "FlowAborted: the store writer process exited unexpectedly (exit code -9)" in \
                stats["flow"]["failures"][0]["error"]
            wait_for(lambda: client.request("stats")["offsets"].get(str(source)) == len(events), timeout=60)
            after = {"type": "payment", "event_id": "after", "ts": events[-1]["ts"] + 60, "user": "u1", "card": "c1",
                     "amount": 3.0, "city": "porto"}  # after the file's events: not late behind them
            assert client.request("ingest", events=[after])["accepted"] == 1
            wait_for(lambda: client.request("stats")["inbox_lag_bytes"] == 0, timeout=60)
    finally:
        code, _out, err = app.stop()
    assert code == 0, err
    conn = sqlite3.connect(tmp_path / "a.db")
    try:
        stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
        dead = conn.execute("SELECT reason FROM dead_letters").fetchall()
    finally:
        conn.close()
    assert stored == {e["event_id"] for e in events if e["type"] == "payment"} | {"after"}
    assert dead == []


def test_without_restarts_a_dead_writer_process_stops_up_with_the_error(tmp_path):
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in make_stream(200)))
    _config(tmp_path, source)
    app = Running(tmp_path, "--restarts", "0")
    with Client(app.primary_socket, timeout=30) as client:
        os.kill(client.request("stats")["store"]["pid"], signal.SIGKILL)
    code = app.proc.wait(timeout=60)  # it stops on its own: the flow failed with no restart allowed
    err = app.proc.stderr.read()
    assert code == 1
    assert ("Error: the dataflow failed 1 times within 10 minutes (at most 0 restarts); last: FlowAborted: "
            "the store writer process exited unexpectedly (exit code -9)") in err
