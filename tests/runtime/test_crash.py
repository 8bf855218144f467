"""Crash recovery with the real process: `appliance up` killed with SIGKILL at seeded points of a
replay, several times in a row, then run to the end, must end exactly where an uninterrupted run of
the same input ends: the same counters, entity features, model, predictions on a probe set, and the
same rows in every SQLite table that is exactly-once (see docs/reliability.md).

The appliance runs with its default serving processes; the test speaks to the primary alone (its
private socket), so every run takes the socket's events through the same input (`inbox`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import orjson
import pytest

from appliance.features.entity_codec import decode_state
from appliance.serving.client import Client
from appliance.storage.body import read_dictionaries, split_body
from appliance.storage.entity_history import Listed
from appliance.storage.snapshot import load_object, unpack, unpack_checkpoint
from tests.conftest import Running, make_stream, wait_for, write_config

N_EVENTS = 9000
CRASHES = 12
SEED = 20261125
USERS = [f"u{i}" for i in range(12)]
CARDS = [f"c{i}" for i in range(15)]

# Columns that record wall-clock time (when a row was written), not what was computed.
WALL_CLOCK = {"wall_ts"}
# Every table the dataflow writes; each must hold exactly the rows of an uninterrupted run.
EXACTLY_ONCE = ("events", "predictions", "labels", "dead_letters", "models", "metrics", "audit", "alerts",
                "entity_state", "pending_labels", "attribute_switches")


def stream_lines(n: int) -> list[str]:
    """The replayed file: payments and late labels, with a malformed line now and then, and amounts
    four times larger in the second half (data drift: alerts, and challengers started by policy)."""
    events = make_stream(n, seed=11)
    for event in events[len(events) // 2:]:
        if "amount" in event:
            event["amount"] = round(event["amount"] * 4, 2)
    lines = [json.dumps(e) for e in events]
    for i in range(len(lines) // 997):  # dead letters too: they are keyed by (source, offset)
        lines.insert(i * 997 + 500, f'{{"event_id": "broken-{i}", "user": ')
    return lines


def probes() -> list[dict]:
    rng = random.Random(7)
    return [{"event_id": f"probe-{i}", "user": rng.choice(USERS), "card": rng.choice(CARDS),
             "amount": round(rng.uniform(1, 300), 2), "city": rng.choice(["lisbon", "porto", "faro"])}
            for i in range(25)]


def socket_batch() -> list[dict]:
    """Events and labels sent over the socket once the file is replayed (ids and times explicit)."""
    rng = random.Random(5)
    t = 1_767_225_600.0 + 60 * N_EVENTS  # past the file's last event time
    events = []
    for i in range(60):
        events.append({"type": "payment", "event_id": f"sock-{i}", "ts": t + 10 * i, "user": rng.choice(USERS),
                       "card": rng.choice(CARDS), "amount": round(rng.uniform(5, 200), 2), "city": "porto"})
        if i % 3 == 0:
            events.append({"type": "label", "event_id": f"sock-{i}", "ts": t + 10 * i + 5, "label": i % 2})
    return events


def stats_of(client: Client) -> dict:
    return client.request("stats")


def offset_of(client: Client, source: str) -> int:
    return int(stats_of(client).get("offsets", {}).get(source, 0))


def replayed(client: Client, source: str, total: int) -> None:
    wait_for(lambda: offset_of(client, source) == total, timeout=120,
             explain=lambda: stats_of(client).get("offsets"))


def ingest_batch(client: Client) -> list:
    """Send the socket batch, then score 5 events that enter the stream (`predict`, `ingest` true).

    Returns the predict replies' (event id, score, version): the engine learns on what was served, so
    a replay after a crash must reuse them, not score again.
    """
    reply = client.request("ingest", events=socket_batch())
    assert reply["accepted"] == len(socket_batch()) and reply["rejected"] == []
    wait_for(lambda: stats_of(client)["inbox_lag_bytes"] == 0)  # scored on the state after the batch
    t = socket_batch()[-1]["ts"] + 60
    served = []
    for i, probe in enumerate(probes()[:5]):
        reply = client.request("predict", event={**probe, "event_id": f"served-{i}", "ts": t + i})
        served.append((reply["event_id"], reply["score"], reply["version"]))
        wait_for(lambda: stats_of(client)["inbox_lag_bytes"] == 0)  # the next one sees this one
    return served


def settled(client: Client, directory, source: str, total: int) -> dict:
    """The stats snapshot once the file and everything in the inbox so far are processed (the snapshot
    lags the engine by up to 0.25 s, so its own offsets are checked, against the inbox file's size)."""
    inbox = os.path.join(directory, "a.db-inbox")
    return wait_for(lambda: (s := stats_of(client))["offsets"].get(source) == total
                    and s["offsets"].get("inbox") == os.path.getsize(inbox) and s, timeout=120,
                    explain=lambda: (stats_of(client)["offsets"], os.path.getsize(inbox)))


def observe(app: Running, source: str, total: int) -> dict:
    """Wait until both inputs are processed, observe over the socket, stop with SIGTERM."""
    directory = os.path.dirname(app.socket)
    try:
        with Client(app.primary_socket, timeout=30) as client:
            stats = settled(client, directory, source, total)
            features = {key: {e: client.request("features", key=key, entity=e)["entities"][key]
                              for e in entities}
                        for key, entities in (("user", USERS), ("card", CARDS))}
            scores = []
            for probe in probes():
                reply = client.request("predict", event=probe, ingest=False, explain=True)
                scores.append((reply["score"], reply["version"], reply["features"]))
            after = settled(client, directory, source, total)
            assert after["counts"]["predictions"] == stats["counts"]["predictions"] + len(scores)  # logged
    finally:
        code, out, err = app.stop()
    assert code == 0, err
    return {"counts": stats["counts"], "model": _model(stats["model"]), "features": features, "scores": scores,
            "pending": stats["pending_labels"], "watermark": stats["watermark"], "offsets": stats["offsets"]}


def _model(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("published_at",)}


# Encoded columns: compared by the state they hold, not byte for byte (pickle's memo and framing,
# inside a stored model, depend on object identity, which a restore from a checkpoint does not reproduce).
# an event's body by its payload and vector: the bytes may differ (a restart before the store's
# compression dictionary was committed trains another one), what they hold may not
DECODE = {("models", "model"): load_object, ("entity_state", "state"): decode_state,
          ("pending_labels", "packed"): unpack, ("events", "body"): split_body}


def loaded(data):
    """A checkpoint's plain fields with each River object pickled in it loaded (see DECODE)."""
    if isinstance(data, dict):
        return {k: loaded(v) for k, v in data.items()}
    if isinstance(data, list):
        return [loaded(v) for v in data]
    if isinstance(data, bytes) and data.startswith(b"\x80\x05"):
        return load_object(data)
    return data


def tables(db_path) -> dict[str, list]:
    conn = sqlite3.connect(db_path)
    try:
        read_dictionaries(conn)
        out = {}
        for table in EXACTLY_ONCE:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info([{table}])") if row[1] not in WALL_CLOCK]
            names = ", ".join(f"[{c}]" for c in columns)
            rows = [tuple(canonical(DECODE[table, column](value)) if (table, column) in DECODE and value is not None else value
                          for column, value in zip(columns, row))
                    for row in conn.execute(f"SELECT {names} FROM [{table}]")]
            out[table] = sorted(rows, key=repr)
        # each entity's newest events, as the seqs its row lists (its packing base may differ)
        out["entity_recent"] = sorted(((key, entity, newest, Listed(newest, base, recent).seqs()) for key, entity, newest,
                                       base, recent in conn.execute("SELECT * FROM entity_recent")), key=repr)
        [(offsets, engine)] = conn.execute("SELECT offsets, engine FROM checkpoint").fetchall()
        out["checkpoint"] = [json.loads(offsets), canonical(loaded(unpack_checkpoint(engine)))]
        return out
    finally:
        conn.close()


def canonical(obj, path=()):
    """A plain, comparable picture of an object graph: objects by their pickled state, floats by repr,
    sets sorted, wall-clock fields left out."""
    if isinstance(obj, (str, int, bytes, bool, type(None))):
        return obj
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") and not hasattr(obj, "__dict__"):
        return f"<{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}>"
    if id(obj) in path:
        return "<cycle>"
    path = (*path, id(obj))
    if isinstance(obj, dict):
        return [type(obj).__name__, [(canonical(k, path), canonical(v, path)) for k, v in obj.items()
                                     if k not in WALL_CLOCK]]
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "deque":
        return [type(obj).__name__, [canonical(v, path) for v in obj]]
    if isinstance(obj, (set, frozenset)):
        return [type(obj).__name__, sorted((canonical(v, path) for v in obj), key=repr)]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return [type(obj).__name__, canonical(obj.tolist(), path)]
    reduced = obj.__reduce_ex__(5)
    return [type(obj).__qualname__, [canonical(part, path) for part in reduced[1:]]]


def sigkill(app: Running) -> None:
    app.proc.send_signal(signal.SIGKILL)
    try:
        app.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        raise
    assert app.proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def replay():
    """The same input file for both runs, and the uninterrupted run's observations.

    APL_KEEP=1 keeps the directory (/tmp/apl-crash-*: both stores) to look at after a failure.
    """

    base = Path(tempfile.mkdtemp(prefix="apl-crash-", dir="/tmp"))
    lines = stream_lines(N_EVENTS)
    source = base / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    reference = base / "ref"
    reference.mkdir()
    _config(reference, source)
    app = Running(reference)
    with Client(app.primary_socket, timeout=30) as client:
        replayed(client, str(source), len(lines))
        observed_served = ingest_batch(client)
    observed = observe(app, str(source), len(lines))
    observed["served"] = observed_served
    yield base, source, len(lines), observed, tables(reference / "a.db")
    if not os.environ.get("APL_KEEP"):
        shutil.rmtree(base, ignore_errors=True)


LIFECYCLE = """
[[model.challenger]]
name = "fast"
spec = "preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1))"

[lifecycle]
promote_after = 300
drift_features = ["card_sum_1h", "user_mean_1h"]
on_data_drift = "challenger"
drift_warmup = 300
alert_cooldown = "6h"
warm_start = 500
"""


def _config(directory, source, every="0.3s"):
    """The small config with a challenger and the drift policy, so their state is recovered too."""
    path = write_config(directory, source)
    text = path.read_text().replace("[features]", LIFECYCLE + "\n[features]", 1)
    path.write_text(text + f'\n[checkpoint]\nevery = "{every}"\n')


def committed_past_checkpoint(db_path, source: str) -> int:
    """Rows of the file committed after the last checkpoint: work a crash makes the next run redo."""
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute("SELECT offsets FROM checkpoint").fetchone()
        done = json.loads(row[0]).get(source, 0) if row else 0
        return conn.execute("SELECT count(*) FROM events e JOIN sources s ON s.id = e.source "
                            "WHERE s.source = ? AND e.offset > ?", (source, done)).fetchone()[0]
    finally:
        conn.close()


def test_sigkill_at_random_points_then_run_to_the_end_equals_an_uninterrupted_run(replay):
    base, source, total, expected, expected_tables = replay
    assert expected["counts"]["events"] == N_EVENTS + 65 and expected["counts"]["dead_letters"] >= 9
    assert expected["counts"]["labels_joined"] > 1000 and expected["model"]["served_version"] != "v1"
    assert expected_tables["alerts"] and any(row[2] == "challenger" for row in expected_tables["audit"]), \
        "the drift policy never acted: its recovery would go untested"  # (id, event_ts, action, ...)
    assert len(expected_tables["entity_recent"]) > 20  # every user and card listed, compared below
    directory = base / "crashed"
    directory.mkdir()
    _config(directory, source)
    rng = random.Random(SEED)
    targets = sorted(rng.randrange(1, total * 7 // 10) for _ in range(CRASHES))
    checkpointed, redone = [], []
    sigkill(Running(directory))  # right after start: before the run's first checkpoint
    for target in targets:
        app = Running(directory)
        with Client(app.primary_socket, timeout=30) as client:
            wait_for(lambda target=target: offset_of(client, str(source)) >= target, timeout=120)
        sigkill(app)
        checkpointed.append(checkpoint_offsets(directory / "a.db").get(str(source), 0))
        redone.append(committed_past_checkpoint(directory / "a.db", str(source)))
    # Past the file: events acknowledged over the socket and processed, then a kill before any checkpoint
    # covers them (checkpoints only at a clean stop from here on). The next run reads the rest of the
    # file and the socket's events again, from the same checkpoint, at the same time.
    _config(directory, source, every="1h")
    app = Running(directory)
    with Client(app.primary_socket, timeout=30) as client:
        replayed(client, str(source), total)
        served = ingest_batch(client)
        wait_for(lambda: stats_of(client)["inbox_lag_bytes"] == 0 and "inbox" in stats_of(client)["offsets"])
        # the rest of the file is committed and no checkpoint covers it: this kill costs redone work for
        # sure (the kills above may each land right after a checkpoint when batches outlast its interval)
        wait_for(lambda: committed_past_checkpoint(directory / "a.db", str(source)) > 0)
    sigkill(app)
    redone.append(committed_past_checkpoint(directory / "a.db", str(source)))
    observed = observe(Running(directory), str(source), total)
    observed["served"] = served
    # The runs made progress from checkpoint to checkpoint, and the kills cost committed, uncheckpointed
    # work that the next run wrote again: the path that must not duplicate anything was taken.
    assert checkpointed == sorted(checkpointed) and len(set(checkpointed)) > 2, checkpointed
    assert any(redone), (checkpointed, redone)
    assert observed == expected
    got = tables(directory / "a.db")
    for table in expected_tables:
        assert len(got[table]) == len(expected_tables[table]), table
        assert got[table] == expected_tables[table], f"table {table} differs after crashes"


def test_sigkill_with_entity_state_in_worker_processes_then_the_end_equals_an_uninterrupted_run(replay):
    """`--workers 2`: entity state in two worker processes (`engine.partitions`), killed with the
    appliance (they die with their parent) at seeded points; each start loads them from the
    checkpoint. The end equals the one-process run without kills: rows, states, features, scores."""
    base, source, total, expected, expected_tables = replay
    directory = base / "crashed-workers"
    directory.mkdir()
    _config(directory, source)
    rng = random.Random(SEED + 2)
    for target in sorted(rng.randrange(1, total * 7 // 10) for _ in range(4)):
        app = Running(directory, "--workers", "2")
        with Client(app.primary_socket, timeout=30) as client:
            wait_for(lambda target=target: offset_of(client, str(source)) >= target, timeout=120)
        sigkill(app)
    app = Running(directory, "--workers", "2")
    with Client(app.primary_socket, timeout=30) as client:
        replayed(client, str(source), total)
        served = ingest_batch(client)
    observed = observe(app, str(source), total)
    observed["served"] = served
    assert observed == expected
    got = tables(directory / "a.db")
    for table in expected_tables:
        assert got[table] == expected_tables[table], f"table {table} differs after crashes with entity workers"


def test_sigterm_answers_in_flight_requests_drains_the_inbox_checkpoints_and_a_restart_continues(replay):
    base, source, total, expected, expected_tables = replay
    directory = base / "stopped"
    directory.mkdir()
    _config(directory, source)
    db = directory / "a.db"
    app = Running(directory)
    with Client(app.primary_socket, timeout=30) as client:
        wait_for(lambda: offset_of(client, str(source)) >= total // 3, timeout=120)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(app.primary_socket)
    sock.sendall(b"".join(b'{"op": "features", "id": %d, "key": "card", "entity": "c%d"}\n' % (i, i % 15)
                          for i in range(2000)))
    reader = sock.makefile("rb")
    replies = [orjson.loads(reader.readline())]  # the server is answering them
    app.proc.send_signal(signal.SIGTERM)
    replies += [orjson.loads(line) for line in reader]  # every request it read is answered, then EOF
    sock.close()
    code, out, err = app.stop()
    assert code == 0 and "stopped cleanly" in out, err
    assert not os.path.exists(app.socket)  # no longer accepting: the socket is gone
    assert [r["id"] for r in replies] == list(range(len(replies))) and all(r["ok"] for r in replies)
    stopped_at = checkpoint_offsets(db)[str(source)]
    assert 0 < stopped_at < total and committed_past_checkpoint(db, str(source)) == 0  # nothing to redo
    app = Running(directory)
    assert "(resumed)" in "".join(app.lines)
    with Client(app.primary_socket, timeout=30) as client:
        assert offset_of(client, str(source)) >= stopped_at
        replayed(client, str(source), total)
        served = ingest_batch(client)  # acknowledged: in the inbox; the stop below must process it first
    code, out, err = app.stop()
    assert code == 0, err
    inbox_size = (directory / "a.db-inbox").stat().st_size
    assert checkpoint_offsets(db)["inbox"] == inbox_size
    assert count(db, "SELECT count(*) FROM events e JOIN sources s ON s.id = e.source WHERE s.source = 'inbox'") == 65
    observed = observe(Running(directory), str(source), total)
    observed["served"] = served
    assert observed == expected
    assert tables(db) == expected_tables


def checkpoint_offsets(db_path) -> dict:
    row = count(db_path, "SELECT offsets FROM checkpoint")
    return {} if row is None else json.loads(row)


def count(db_path, sql):
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute(sql).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()
