"""A dataflow that fails is restarted from its checkpoint (`appliance.runtime.supervision`).

The fault is real: a custom feature (the config folder's `faults.py`) raises an exception the engine
does not catch, on a chosen event, a chosen number of times (counted in a file, so a restarted flow
sees the count of the one before). That stands for any bug met on one item: Bytewax ends the whole
flow, as it does for a failing worker. The runs are the real `appliance replay` and `appliance up`
in subprocesses, compared table by table with a run without the fault (tests/runtime/test_crash.py).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from appliance.serving.client import Client
from tests.conftest import Running, make_stream, wait_for, write_config
from tests.runtime.test_crash import tables

N_EVENTS = 1500
TARGET = "e700"  # a payment in the middle of the stream

FAULTS = '''
"""Raise on one event (its fields as given, or every one: "*"), at most `times` times over every run
of this folder. A custom feature sees an event's fields, not its id."""
import json
from pathlib import Path

HERE = Path(__file__).parent
PLAN = json.loads((HERE / "faults.json").read_text())


class InjectedFault(BaseException):  # not an Exception: a custom feature's errors are caught and counted
    pass


def probe(event, features):
    if PLAN["match"] == "*" or all(event.get(k) == v for k, v in PLAN["match"].items()):
        count_file = HERE / "faults.count"
        fired = int(count_file.read_text()) if count_file.exists() else 0
        if fired < PLAN["times"]:
            count_file.write_text(str(fired + 1))
            raise InjectedFault(f"injected on {event.get('user')}/{event.get('card')} {event.get('amount')}")
    return 1.0
'''


def fields_of(event_id: str) -> dict:
    """The fields that single out one event of the stream (checked unique)."""
    events = [e for e in make_stream(N_EVENTS, seed=17) if e["type"] == "payment"]
    [target] = [{k: e[k] for k in ("user", "card", "amount")} for e in events if e["event_id"] == event_id]
    assert sum(1 for e in events if all(e[k] == v for k, v in target.items())) == 1
    return target


def prepare(directory, source, event_id=TARGET, times=0, checkpoint="0.05s"):
    path = write_config(directory, source)
    path.write_text(path.read_text() + '\n[[features.custom]]\nname = "probe"\nfunction = "faults:probe"\n'
                    f'\n[checkpoint]\nevery = "{checkpoint}"\n')
    (directory / "faults.py").write_text(FAULTS)
    match = "*" if event_id == "*" else fields_of(event_id)
    (directory / "faults.json").write_text(json.dumps({"match": match, "times": times}))


def replay(directory, *args):
    return subprocess.run([sys.executable, "-m", "appliance", "replay", "--db", str(directory / "a.db"), "--json",
                           *args], cwd=directory, capture_output=True, text=True, timeout=300)


def fired(directory) -> int:
    path = directory / "faults.count"
    return int(path.read_text()) if path.exists() else 0


TARGET_FIELDS = fields_of(TARGET)
INJECTED = f"{TARGET_FIELDS['user']}/{TARGET_FIELDS['card']} {TARGET_FIELDS['amount']}"


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """The replayed file, and the tables of a run without the fault."""
    base = tmp_path_factory.mktemp("restart")
    source = base / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in make_stream(N_EVENTS, seed=17)))
    reference = base / "reference"
    reference.mkdir()
    prepare(reference, source)
    done = replay(reference)
    assert done.returncode == 0, done.stderr
    return base, source, tables(reference / "a.db")


@pytest.mark.parametrize(("checkpoint", "workers"), [("0.05s", 1), ("1h", 1), ("0.05s", 2), ("0.05s", 4)])
def test_a_flow_that_fails_once_is_restarted_and_ends_exactly_where_a_run_without_the_fault_does(stream, checkpoint,
                                                                                                 workers):
    """With checkpoints every 50 ms the new flow redoes what came after the last one; with none yet
    (every hour) it starts over from the start, over rows the dead flow committed: none may double.
    With 2 or 4 workers (entity state in worker processes) the flow restarts too (it does not hang),
    and the tables are those of the 1-worker run without the fault."""
    base, source, expected = stream
    directory = base / f"once-{checkpoint}-{workers}"
    directory.mkdir()
    prepare(directory, source, times=1, checkpoint=checkpoint)
    done = replay(directory, "--workers", str(workers))
    assert done.returncode == 0, done.stderr
    assert fired(directory) == 1
    flow = json.loads(done.stdout)["flow"]
    assert flow["restarts"] == 1 and flow["poisoned"] == []
    [failure] = flow["failures"]
    assert failure["error"] == f"InjectedFault: injected on {INJECTED}" and failure["item"]["source"] == str(source)
    assert "restarting the dataflow from its checkpoint" in done.stderr
    resumed = failure["resumed_at"].get(str(source), 0)
    assert resumed < failure["item"]["offset"]
    if checkpoint == "1h":
        assert failure["resumed_at"] == {}  # from the start: no checkpoint before the failure
    got = tables(directory / "a.db")
    assert len(got["events"]) == len(expected["events"]) > 1000
    for table in expected:
        assert got[table] == expected[table], f"table {table} differs after the restart"


def test_an_item_the_engine_fails_on_twice_is_dead_lettered_and_the_stream_goes_on(stream):
    base, source, expected = stream
    directory = base / "poison"
    directory.mkdir()
    prepare(directory, source, times=1000)
    done = replay(directory)
    assert done.returncode == 0, done.stderr
    assert fired(directory) == 2  # the first try and one retry; the third flow never calls the feature on it
    flow = json.loads(done.stdout)["flow"]
    assert flow["restarts"] == 2
    [poisoned] = flow["poisoned"]
    assert f"the engine failed on this item 2 times (InjectedFault: injected on {INJECTED})" in poisoned["reason"]
    conn = sqlite3.connect(directory / "a.db")
    try:
        [(reason, payload)] = conn.execute("SELECT reason, payload FROM dead_letters").fetchall()
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        lost = conn.execute("SELECT count(*) FROM events WHERE event_id = ?", (TARGET,)).fetchone()[0]
    finally:
        conn.close()
    assert reason == poisoned["reason"] and json.loads(payload)["event_id"] == TARGET  # kept, with its payload
    assert lost == 0 and events == len(expected["events"]) - 1  # every other event was processed


def test_failures_past_the_restart_budget_stop_the_appliance_with_the_error(stream):
    base, source, _expected = stream
    directory = base / "budget"
    directory.mkdir()
    prepare(directory, source, event_id="*", times=1000)
    done = replay(directory, "--restarts", "1")
    assert done.returncode == 1
    assert fired(directory) == 2
    assert ("Error: the dataflow failed 2 times within 10 minutes (at most 1 restarts); "
            "last: InjectedFault: injected on ") in done.stderr
    assert "Traceback" in done.stderr  # the log keeps each failure's traceback for whoever debugs it


def test_up_keeps_serving_through_a_restart_and_refuses_no_write_after_it(stream):
    """The real `up` with its serving children: the socket stays up (same processes), the restarted flow
    replays the file to the end, and writes through any process are accepted and processed after it."""
    base, source, expected = stream
    directory = base / "up"
    directory.mkdir()
    prepare(directory, source, times=1)
    app = Running(directory)
    try:
        with Client(app.socket, timeout=30) as client:
            pids = client.request("health")["serving_pids"]
            lines = len(source.read_text().splitlines())
            stats = wait_for(lambda: (s := client.request("stats"))["offsets"].get(str(source)) == lines
                             and s["flow"]["restarts"] == 1 and s, timeout=120,
                             explain=lambda: client.request("stats")["flow"])
            assert stats["flow"]["failures"][0]["error"] == f"InjectedFault: injected on {INJECTED}"
            assert stats["outage"] is None and client.request("health")["status"] == "ok"
            assert client.request("health")["serving_pids"] == pids  # no process was restarted
            shown = subprocess.run([sys.executable, "-m", "appliance", "stats", "--socket", app.socket],
                                   capture_output=True, text=True, timeout=60)
            assert (f"Flow  restarted 1 times from its checkpoint; last failure: InjectedFault: injected on {INJECTED}"
                    in shown.stdout), shown.stdout + shown.stderr
            reply = client.request("ingest", events=[{"type": "payment", "event_id": "after", "user": "u1",
                                                      "card": "c1", "amount": 12.5, "city": "porto"}])
            assert reply["accepted"] == 1
            wait_for(lambda: [row["event_id"] for row in client.request("entity", key="user", entity="u1",
                                                                          limit=1)["recent"]] == ["after"])
    finally:
        code, _out, err = app.stop()
    assert code == 0, err
    assert fired(directory) == 1
    got = tables(directory / "a.db")
    assert len(got["events"]) == len(expected["events"]) + 1


def test_an_entity_worker_that_dies_restarts_the_flow_from_its_checkpoint(tmp_path):
    """`--workers 2`: one of the processes keeping the entity state is killed between two batches.
    The next batch finds it gone, the flow fails and restarts from its checkpoint with new workers
    (it does not hang), and everything acknowledged is processed as by a run without the kill."""
    import os
    import signal

    from appliance.config.file import config_from_dict
    from tests.conftest import SMALL_CONFIG, feed, serving

    events = make_stream(900, seed=5)
    results = []
    for workers, kill in ((1, False), (2, True)):
        directory = tmp_path / f"w{workers}"
        directory.mkdir()
        config = config_from_dict(SMALL_CONFIG).with_overrides(db=str(directory / "a.db"),
                                                               socket=str(directory / "a.sock"))
        with serving(config, workers=workers) as appliance, Client(config.socket, timeout=30) as client:
            feed(client, events[:400])
            first = appliance.partitions
            if kill:
                os.kill(first.processes[0].pid, signal.SIGKILL)
                first.processes[0].join(10)
            stats = feed(client, events[400:])
            if kill:
                assert appliance.partitions is not first and appliance.supervisor.restarts == 1
                failure = appliance.supervisor.failures[0]
                assert "entity partition 1 of 2" in failure.error and failure.item is None
            features = client.request("features", key="user", entity="u3")["entities"]["user"]
        results.append((stats["counts"], stats["pending_labels"], stats["watermark"], features))
    assert results[0] == results[1]
