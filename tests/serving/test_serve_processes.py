"""Serving processes (`--serve-processes N`): real child processes accepting on a real Unix socket.

Which process the kernel hands a connection is not ours to choose, so the tests that need a child to
answer start one more real child (`ServingChildren`) on a socket of the test's own, forwarding to the
appliance's private socket exactly as the appliance's own children do; its inbox (`<db>-inbox-3`:
the appliance's own two children have 1 and 2) exists before the appliance starts, so the flow reads
it as an input partition.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from appliance.config.file import config_from_dict
from appliance.errors import RequestError
from appliance.features.entity_codec import decode_state
from appliance.runtime.serving_processes import ServingChildren
from appliance.serving.availability import Outage
from appliance.serving.client import Client
from appliance.serving.service import MAX_INBOX_LAG
from appliance.serving.status_record import ServingStatus, StatusReader, StatusWriter, status_path
from appliance.storage import writer
from appliance.storage.online_store import OnlineReader, online_path
from tests.conftest import SMALL_CONFIG, fill, flip_stream, processed, serving


def wait_for(condition, what: str, tries: int = 3000):
    for _ in range(tries):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def make_config(short_dir: Path, **extra):
    return config_from_dict({**SMALL_CONFIG, **extra, "serve": {"db": str(short_dir / "d.db"),
                                                                "socket": str(short_dir / "d.sock")}})


def payments(n: int) -> list[dict]:
    """Payments without their labels (sent later with `label`)."""
    return [{k: v for k, v in raw.items() if k != "label"} for raw in flip_stream(n, n)]


TOKEN = "tcp-token-for-the-children"


class ExtraChild:
    """One more real serving child on sockets of the test's own (so the test knows who answers)."""

    def __init__(self, appliance, path: str, tcp: bool = False, index: int = 3, **rules) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.path = path
        self.tcp_listener = None
        if tcp:
            self.tcp_listener = socket.create_server(("127.0.0.1", 0))
            self.tcp_address = self.tcp_listener.getsockname()[:2]
        self.children = ServingChildren(appliance.config, 1, self.listener.fileno(),
                                        appliance.fleet.private_server.unix_path, first_index=index,
                                        tcp_fd=None if self.tcp_listener is None else self.tcp_listener.fileno(),
                                        **rules)
        self.children.start()

    def close(self) -> None:
        self.children.stop()
        self.listener.close()
        if self.tcp_listener is not None:
            self.tcp_listener.close()


@pytest.fixture
def two_processes(short_dir):
    config = make_config(short_dir)
    Path(config.db + "-inbox-3").touch()  # the extra child's inbox: an input of the flow from the start
    with serving(config, serve_processes=2) as appliance:
        extra = ExtraChild(appliance, str(short_dir / "c.sock"))
        try:
            yield appliance, extra
        finally:
            extra.close()


@pytest.fixture
def tcp_child(short_dir):
    """The primary and one more child accepting on a TCP listener of the test's own, with a token."""
    config = make_config(short_dir)
    Path(config.db + "-inbox-3").touch()
    with serving(config, serve_processes=2) as appliance:
        extra = ExtraChild(appliance, str(short_dir / "c.sock"), tcp=True, token=TOKEN, auth_timeout=1.0)
        try:
            yield appliance, extra
        finally:
            extra.close()


def test_a_child_answers_tcp_clients_that_authenticate_and_relays_their_other_ops(tcp_child):
    appliance, extra = tcp_child
    events = payments(5)
    with Client(None, tcp=extra.tcp_address, token=TOKEN) as child, Client(appliance.config.socket) as primary:
        assert child.request("ingest", events=events)["accepted"] == 5
        wait_for(lambda: primary.request("stats")["counts"]["predictions"] >= 5, "the TCP-ingested events")
        scored = child.request("predict", event=payments(6)[5], ingest=False)
        assert 0.0 <= scored["score"] <= 1.0
        assert child.request("health")["pid"] == os.getpid()  # relayed: the primary answered it
    logged = [orjson.loads(line) for line in Path(appliance.config.db + "-inbox-3").read_bytes().splitlines()]
    ingested = [record["event"]["event_id"] for record in logged if "served" not in record]
    assert ingested == [e["event_id"] for e in events]  # the child's inbox: the child answered
    assert [record["event"]["event_id"] for record in logged if "served" in record] == ["e5"]


def test_a_tcp_client_of_a_child_gets_the_primarys_token_rules(tcp_child):
    appliance, extra = tcp_child
    with socket.create_connection(extra.tcp_address, timeout=30) as conn:
        stream = conn.makefile("rb")
        conn.sendall(b'{"op":"stats","id":1}\n')  # relayed ops are checked by the child first
        refused = orjson.loads(stream.readline())
        assert refused["error"]["code"] == "unauthorized" and "needs a token" in refused["error"]["message"]
        conn.sendall(b'{"op":"ingest","id":2,"events":[{"event_id":"x"}]}\n')
        assert orjson.loads(stream.readline())["error"]["code"] == "unauthorized"
        conn.sendall(b'{"op":"auth","id":3,"token":"wrong-token-wrong-token"}\n')
        wrong = orjson.loads(stream.readline())
        assert wrong["id"] == 3 and wrong["error"]["message"] == "wrong token"
        assert stream.readline() == b""  # closed after MAX_FAILED_AUTHS failures
    with socket.create_connection(extra.tcp_address, timeout=30) as conn:  # a token in the request itself
        stream = conn.makefile("rb")
        conn.sendall(orjson.dumps({"op": "stats", "id": 4, "token": TOKEN}) + b"\n")
        assert orjson.loads(stream.readline())["ok"] is True
        conn.sendall(b'{"op":"health","id":5}\n')  # authenticated from then on
        assert orjson.loads(stream.readline())["id"] == 5
    with socket.create_connection(extra.tcp_address, timeout=30) as conn:  # a long line before authenticating
        stream = conn.makefile("rb")
        conn.sendall(b'{"op":"auth","pad":"' + b"x" * 5000 + b'"}\n')
        assert orjson.loads(stream.readline())["error"]["code"] == "line_too_long"
        assert stream.readline() == b""
    with socket.create_connection(extra.tcp_address, timeout=30) as conn:  # silence: the deadline (1 s) closes it
        assert conn.makefile("rb").readline() == b""
    with Client(None, tcp=extra.tcp_address, token=TOKEN) as client:  # authenticated: lines up to the full limit
        big = [{**raw, "pad": "y" * 200} for raw in payments(100)]
        assert client.request("ingest", events=big)["accepted"] == 100
    # the child's closings reach the primary's `stats`, as its own server's would (no TCP client reached those)
    with Client(appliance.fleet.private_server.unix_path) as primary:
        wait_for(lambda: primary.request("stats")["server"]["auth_timeouts"] == 1, "the child's counters")
        server = primary.request("stats")["server"]
    assert server["auth_closed"] == 1 and server["bytes_in"] > 100 * 200, server


def test_the_appliances_children_accept_on_its_tcp_listener(short_dir):
    config = make_config(short_dir)
    with serving(config, serve_processes=3, tcp=("127.0.0.1", 0), token=TOKEN) as appliance:
        listener = os.fstat(appliance.server.tcp_fd).st_ino
        for pid in appliance.fleet.children.pids():
            held = {os.stat(f"/proc/{pid}/fd/{fd}").st_ino for fd in os.listdir(f"/proc/{pid}/fd")}
            assert listener in held
        for _ in range(10):  # whoever accepts, the token rules hold and the reply is right
            with Client(None, tcp=appliance.server.tcp_address, token=TOKEN) as client:
                assert client.request("predict", event=payments(1)[0], ingest=False)["version"]


def test_a_child_scores_as_the_engine_and_its_predictions_are_learned(two_processes):
    appliance, extra = two_processes
    labelled = flip_stream(300, 300)
    with Client(appliance.config.socket) as primary, Client(extra.path) as child:
        history, probes = labelled[:200], payments(300)[200:]
        primary.request("ingest", events=history)
        wait_for(lambda: processed(primary) >= 200, "the history to be processed")
        wait_for(lambda: appliance.fleet.online.writer.path.exists()
                 and extra.children.processes[3].poll() is None, "the child")
        # Scored-only probes (ingest false): the engine's state does not move between the two answers.
        engine = appliance.engine
        known = 0
        for raw in probes[:20]:
            wait_for(lambda raw=raw: child.request("predict", event=raw, ingest=False)["version"]
                     == engine.model.served.name, "the child to see the served version")
            got = child.request("predict", event=raw, ingest=False, explain=True)
            want = primary.request("predict", event=raw, ingest=False, explain=True)  # the in-process engine
            assert got["features"] == want["features"]
            known += got["features"]["user_mean_1h"] > 0  # entity state from the history, not empty
            assert got["score"] == want["score"] and got["version"] == want["version"]
        assert known > 10
        # Predictions that enter the stream through the child, then their labels through the child.
        before = primary.request("stats")["counts"]
        for raw in probes:
            child.request("predict", event=raw)
        for raw in probes:
            child.request("label", event_id=raw["event_id"], label=int(raw["amount"] > 100))
        wait_for(lambda: primary.request("stats")["counts"]["labels_joined"] >= before["labels_joined"] + len(probes),
                 "the labels of the child-served predictions to be joined")
    logged = [orjson.loads(line) for line in Path(appliance.config.db + "-inbox-3").read_bytes().splitlines()
              if line.strip()]
    served = [record for record in logged if "served" in record and record["ingest"]]
    assert [record["event"]["event_id"] for record in served] == [raw["event_id"] for raw in probes]


def test_every_op_is_answered_through_a_child(two_processes):
    appliance, extra = two_processes
    with Client(appliance.config.socket) as primary, Client(extra.path) as child:
        with pytest.raises(RequestError) as caught:
            primary.request("no_such_op")
        ops = caught.value.message.split("known ops: ", 1)[1].split(", ")
        with pytest.raises(RequestError) as relayed:
            child.request("no_such_op")
        assert relayed.value.code == "unknown_op" and relayed.value.message == caught.value.message
        health = child.request("health")
        assert health["pid"] == os.getpid()  # forwarded: the primary (this test process) answered it
        assert extra.children.pids()[0] not in health["serving_pids"]
        assert len(health["serving_pids"]) == 3 and os.getpid() not in health["serving_pids"][1:]
        assert child.request("stats")["counts"] == primary.request("stats")["counts"]
        assert child.request("models")["versions"] == primary.request("models")["versions"]
    ops_asked = {"predict", "ingest", "label", "stats", "health", "models"}
    assert ops_asked <= set(ops)


def test_a_childs_replies_keep_the_order_of_pipelined_lines_answered_here_and_relayed(two_processes):
    """One write of many lines, answered by the child and relayed to the primary in turn, the last
    without its newline before the client's end of file: every reply, in request order, then close."""
    appliance, extra = two_processes
    events = payments(4)
    lines = [{"op": "predict", "id": 1, "event": events[0], "ingest": False}, {"op": "health", "id": 2},
             {"op": "ingest", "id": 3, "events": [events[1]]}, {"op": "stats", "id": 4},
             {"op": "no_such_op", "id": 5}, {"op": "label", "id": 6, "event_id": "e1", "label": 1},
             {"op": "predict", "id": 7, "event": events[2], "ingest": False}]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(extra.path)
        conn.sendall(b"\n".join(orjson.dumps(line) for line in lines))  # no newline after the last
        conn.shutdown(socket.SHUT_WR)
        replies = [orjson.loads(line) for line in conn.makefile("rb")]
    assert [reply.get("id") for reply in replies] == [1, 2, 3, 4, 5, 6, 7]
    assert replies[1]["pid"] == os.getpid() and replies[3]["counts"]  # the primary (this process) answered
    assert replies[4]["error"]["code"] == "unknown_op" and replies[2]["accepted"] == 1
    assert 0.0 <= replies[6]["score"] <= 1.0


def framed(path: str, chunks: list[bytes]) -> list[tuple]:
    """Send `chunks` in turn on one connection, then the end of file; every reply, as (id, ok, error code)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(path)
        for chunk in chunks:
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)
        replies = [orjson.loads(line) for line in conn.makefile("rb")]  # to the server's close
    return [(reply.get("id"), reply["ok"], (reply.get("error") or {}).get("code")) for reply in replies]


def test_the_primary_and_a_child_cut_lines_alike(two_processes):
    """The same bytes get the same replies whichever process accepted the connection: a line over the
    limit is refused and the next one read (sent whole, or unfinished across writes), blank lines are
    skipped, and the unterminated rest at the client's end of file is the last line."""
    appliance, extra = two_processes
    event = payments(1)[0]
    predict = orjson.dumps({"op": "predict", "id": 1, "event": event, "ingest": False})
    health = [orjson.dumps({"op": "health", "id": i}) for i in range(2, 6)]
    over = 1 << 20  # the protocol's limit
    chunks = [predict + b"\n\n  \n" + b"x" * (over + 10) + b"\n" + health[0] + b"\n",
              b'{"op": "health", "pad": "' + b"y" * (over // 2),  # an unfinished line, over the limit
              b"y" * (over // 2 + 100), b'"}\n' + health[1] + b"\n" + health[2] + b"\n\n" + health[3]]
    expected = [(1, True, None), (None, False, "line_too_long"), (2, True, None), (None, False, "line_too_long"),
                (3, True, None), (4, True, None), (5, True, None)]
    assert framed(extra.path, chunks) == expected  # a child
    assert framed(appliance.fleet.private_server.unix_path, chunks) == expected  # the primary's own connections
    assert framed(extra.path, [health[0] + b"\n" + health[1]]) == [(2, True, None), (3, True, None)]
    assert framed(appliance.fleet.private_server.unix_path, [health[0] + b"\n" + health[1]]) == [(2, True, None),
                                                                                        (3, True, None)]


def test_watch_is_relayed_line_by_line(two_processes):
    appliance, extra = two_processes
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(extra.path)
        conn.settimeout(30)
        conn.sendall(b'{"op":"watch","interval":0.1,"id":7}\n')
        stream = conn.makefile("rb")
        first = orjson.loads(stream.readline())
        assert first["ok"] and first["id"] == 7
        updates = [orjson.loads(stream.readline()) for _ in range(2)]
        assert [u["update"] for u in updates] == sorted(u["update"] for u in updates)
        assert all("counts" in u for u in updates)
        conn.sendall(b'{"op":"health","id":8}\n')
        for _ in range(50):
            line = orjson.loads(stream.readline())
            if line.get("id") == 8:
                assert line["status"] in ("ok", "degraded")
                break
        else:
            raise AssertionError("no reply to health after watch")


def test_while_children_serve_the_primary_accepts_no_client_connection(short_dir):
    """A predict answered by the primary would wait for its flow's thread; with children up, every new
    connection goes to a child: each scored-only predict is logged in a child's inbox, none in the
    primary's. The primary still answers what the children relay to it (`health`)."""
    config = make_config(short_dir)
    sent = received = 0
    with serving(config, serve_processes=2) as appliance:
        assert not appliance.server.accepting
        for i, event in enumerate(payments(30)):
            with socket.socket(socket.AF_UNIX) as conn, conn.makefile("rb") as replies:
                conn.connect(config.socket)
                for line in (orjson.dumps({"op": "predict", "id": i, "event": event, "ingest": False}) + b"\n",
                             b'{"op": "health", "id": 0}\n'):
                    conn.sendall(line)
                    reply = replies.readline()
                    sent, received = sent + len(line), received + len(reply)
                    assert orjson.loads(reply)["ok"], reply
                    if b"predict" in line:
                        assert orjson.loads(reply)["event_id"] == f"e{i}"
                    else:
                        assert orjson.loads(reply)["pid"] == os.getpid()
        primary_inbox = Path(config.db + "-inbox").read_bytes()
        logged = sum(len(Path(f"{config.db}-inbox-{n}").read_bytes().splitlines()) for n in (1, 2))
        # `stats.server` counts what the children answered and relayed (asked on the private socket,
        # which no child counts): 30 connections, 60 request lines, every byte each way, no error
        with Client(appliance.fleet.private_server.unix_path) as primary:
            wait_for(lambda: primary.request("stats")["server"]["bytes_out"] == received, "the children's counters")
            server = primary.request("stats")["server"]
    assert primary_inbox.strip() == b"" and logged == 30
    assert server["connections_total"] == 30 and server["errors"] == 0, server
    assert (server["requests"], server["bytes_in"], server["bytes_out"]) == (60, sent, received), server


def test_a_killed_child_is_restarted_and_the_socket_keeps_answering(short_dir):
    config = make_config(short_dir)
    with serving(config, serve_processes=2) as appliance:
        old = appliance.fleet.children.pids()
        assert len(old) == 2
        os.kill(old[0], signal.SIGKILL)
        wait_for(lambda: appliance.fleet.children.pids() != old and appliance.fleet.children.processes[1].poll() is None,
                 "a new child")
        assert appliance.fleet.children.pids()[1] == old[1]
        assert appliance.fleet.children.restarts == 1
        for _ in range(20):  # whichever process the kernel picks answers
            with Client(config.socket) as fresh:
                assert fresh.request("health")["serving_pids"] == [os.getpid(), *appliance.fleet.children.pids()]
        # a connection the killed child held is gone with it; a new one is answered
        with Client(config.socket) as client:
            assert client.request("predict", event=payments(1)[0])["event_id"] == "e0"


def _inodes(pid: int) -> set[int]:
    """The inodes of the files a process holds open now."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except FileNotFoundError:  # closed meanwhile
            pass
    return found


def test_a_child_stopped_by_sigterm_answers_and_logs_every_request_it_had_read(short_dir):
    """A real child relays to a stand-in primary (a socket of the test's own) that holds its reply
    until the child has begun to stop: the lines the child read behind the relayed one are answered
    and in its inbox before it exits, and an idle connection is closed, not waited for."""
    config = make_config(short_dir)
    Path(config.db + "-inbox-3").touch()
    stand_in = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stand_in.bind(str(short_dir / "p.sock"))
    stand_in.listen(4)
    stand_in.settimeout(30)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(short_dir / "c.sock"))
    listener.listen(64)
    events = payments(2)
    with serving(config, serve_processes=2) as appliance:  # the online store and status record a child reads
        children = ServingChildren(appliance.config, 1, listener.fileno(), stand_in.getsockname(), first_index=3)
        children.start()
        child = children.processes[3]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle, \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
                for conn in (idle, busy):
                    conn.settimeout(30)
                    conn.connect(str(short_dir / "c.sock"))
                lines = [{"op": "stats", "id": 1}, {"op": "ingest", "id": 2, "events": [events[0]]},
                         {"op": "ingest", "id": 3, "events": [events[1]]}]
                busy.sendall(b"".join(orjson.dumps(line) + b"\n" for line in lines))  # one write: read at once
                upstream, _ = stand_in.accept()
                with upstream:
                    assert orjson.loads(upstream.makefile("rb").readline())["op"] == "stats"  # relayed, held
                    listening = os.fstat(listener.fileno()).st_ino
                    child.send_signal(signal.SIGTERM)
                    wait_for(lambda: listening not in _inodes(child.pid), "the child to stop accepting")
                    upstream.sendall(b'{"id":1,"ok":true,"from":"stand-in"}\n')
                    replies = busy.makefile("rb")
                    got = [orjson.loads(replies.readline()) for _ in lines]
                    assert got[0]["from"] == "stand-in" and [r["id"] for r in got] == [1, 2, 3]
                    assert [r["accepted"] for r in got[1:]] == [1, 1]
                    assert replies.readline() == b""  # then closed
                    assert idle.recv(1) == b""  # closed at once: it had sent nothing
                assert child.wait(30) == 0
        finally:
            children.stop()
            listener.close()
            stand_in.close()
    logged = [orjson.loads(line)["event"]["event_id"]
              for line in Path(config.db + "-inbox-3").read_bytes().splitlines() if line.strip()]
    assert logged == [event["event_id"] for event in events]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _up_ready(short_dir: Path) -> subprocess.Popen:
    up = subprocess.Popen([sys.executable, "-m", "appliance", "up", "--serve-processes", "3"], cwd=short_dir,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert up.stdout is not None
    for line in up.stdout:
        if line.startswith(b"ready"):
            return up
    up.kill()
    raise AssertionError("appliance up never became ready")


def online_states(db_path) -> dict:
    """The online store a stopped appliance left: what serving processes read (entity state by entity)."""
    reader = OnlineReader(online_path(db_path))
    try:
        with reader.view() as view:
            return {(key, entity): decode_state(blob) for key, entity, blob in view.states()}
    finally:
        reader.close()


def checkpoint_states(db_path) -> dict:
    """The engine's entity state as its last checkpoint holds it (a clean stop checkpoints the end)."""
    conn = sqlite3.connect(db_path)
    try:
        return {(key, entity): decode_state(blob)
                for key, entity, blob in conn.execute("SELECT key, entity, state FROM entity_state")}
    finally:
        conn.close()


def test_after_a_kill_9_the_online_store_is_rebuilt_to_agree_with_the_checkpoint(short_dir):
    """kill -9 the real `appliance up --serve-processes 3` mid-stream, start it again, stop it cleanly:
    the online store the children read holds exactly the entity states of the last checkpoint."""
    up = _up_ready(short_dir)
    with Client(str(short_dir / "appliance.sock")) as client:
        wait_for(lambda: client.request("stats")["counts"]["events"] > 500, "events to be processed")
    up.kill()
    up.wait(30)
    up = _up_ready(short_dir)
    try:
        with Client(str(short_dir / "appliance.sock")) as client:
            seen = client.request("stats")["counts"]["events"]
            wait_for(lambda: client.request("stats")["counts"]["events"] > seen, "the restarted flow to move")
        up.send_signal(signal.SIGTERM)
        assert up.wait(120) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    states = checkpoint_states(short_dir / "appliance.db")
    assert states and online_states(short_dir / "appliance.db") == states


def test_kill_9_of_the_primary_leaves_no_serving_child(short_dir):
    """The real `appliance up` (the bundled sample) with 3 serving processes; kill -9 the primary."""
    up = _up_ready(short_dir)
    try:
        with Client(str(short_dir / "appliance.sock")) as client:
            pids = client.request("health")["serving_pids"]
        assert pids[0] == up.pid and len(pids) == 4  # the primary and its 3 serving children
        children = pids[1:]
        assert all(_alive(pid) for pid in children)
        up.kill()
        up.wait(30)
        wait_for(lambda: not any(_alive(pid) for pid in children), "the children to die with the primary")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def refusal(client: Client, op: str, **fields) -> str:
    """The error code `op` is refused with (fails if it is accepted)."""
    with pytest.raises(RequestError) as refused:
        client.request(op, **fields)
    return refused.value.code


def test_a_child_refuses_writes_by_the_primarys_status_record(short_dir):
    """The test plays the primary's part: its own status record, read by a real child."""
    config = make_config(short_dir)
    status = StatusWriter(str(short_dir / "own-serving"))
    status.publish(ServingStatus(None, {"inbox-7": 0}))
    with serving(config, serve_processes=2) as appliance:
        # made after the flow started, so not one of its inputs: only the status says the lag
        inbox = Path(config.db + "-inbox-7")
        with open(inbox, "wb") as handle:  # a sparse inbox far past the lag bound, ending in a whole line
            handle.truncate(MAX_INBOX_LAG + (1 << 20))
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
        size = inbox.stat().st_size
        extra = ExtraChild(appliance, str(short_dir / "c.sock"), index=7, status_path=status.path)
        try:
            with Client(extra.path) as child:
                event = payments(1)[0]
                for op, fields in (("ingest", {"events": [event]}), ("label", {"event_id": "e0", "label": 1}),
                                   ("predict", {"event": event})):
                    assert refusal(child, op, **fields) == "overloaded", op
                scored = child.request("predict", event=event, ingest=False)  # answered, not logged, and says so
                assert scored["logged"] is False and 0.0 <= scored["score"] <= 1.0
                assert inbox.stat().st_size == size  # nothing written
                status.publish(ServingStatus(Outage("store", "disk full"), {"inbox-7": size}))
                for op, fields in (("ingest", {"events": [event]}), ("label", {"event_id": "e0", "label": 1}),
                                   ("predict", {"event": event})):
                    assert refusal(child, op, **fields) == "unavailable", op
                assert child.request("predict", event=event, ingest=False)["logged"] is False
                assert inbox.stat().st_size == size
                status.publish(ServingStatus(None, {"inbox-7": size}))  # caught up, nothing down
                assert child.request("ingest", events=[event])["accepted"] == 1
                assert child.request("label", event_id="e0", label=1)["accepted"] is True
                assert "logged" not in child.request("predict", event=event, ingest=False)
                assert inbox.stat().st_size > size
        finally:
            extra.close()
            status.close()


def test_the_primary_publishes_the_flows_offset_in_each_childs_inbox(two_processes):
    appliance, extra = two_processes
    inbox = Path(appliance.config.db + "-inbox-3")
    with Client(extra.path) as child:
        child.request("ingest", events=payments(50))
    reader = StatusReader(status_path(appliance.config.db))
    try:
        wait_for(lambda: reader.read().offsets.get("inbox-3") == inbox.stat().st_size > 0, "the offset published")
        assert reader.read().outage is None
    finally:
        reader.close()


def test_a_full_disk_in_the_primary_refuses_writes_in_a_child_with_the_same_code(small_disk):
    config = make_config(small_disk)
    Path(config.db + "-inbox-3").touch()
    with serving(config, serve_processes=2) as appliance:
        extra = ExtraChild(appliance, str(small_disk / "c.sock"))
        try:
            with Client(appliance.config.socket) as primary, Client(extra.path) as child:
                event = payments(1)[0]
                assert child.request("ingest", events=[event])["accepted"] == 1
                filler = fill(small_disk)
                wait_for(lambda: primary.request("health")["accepting_writes"] is False, "the primary to refuse")
                code = refusal(primary, "ingest", events=[event])
                assert code in ("disk_low", "unavailable")
                size = Path(config.db + "-inbox-3").stat().st_size
                for op, fields in (("ingest", {"events": [event]}), ("label", {"event_id": "e0", "label": 1}),
                                   ("predict", {"event": event})):
                    assert refusal(child, op, **fields) == code, op
                assert child.request("predict", event=event, ingest=False)["logged"] is False
                assert Path(config.db + "-inbox-3").stat().st_size == size
                filler.unlink()  # space returns: the child accepts again as soon as the primary says so
                wait_for(lambda: primary.request("health")["accepting_writes"] is True, "the primary to accept")
                assert child.request("ingest", events=[event])["accepted"] == 1
        finally:
            extra.close()


def test_a_child_refuses_as_soon_as_the_primary_finds_its_own_inbox_truncated(two_processes):
    appliance, extra = two_processes
    with Client(appliance.fleet.private_server.unix_path) as primary, Client(extra.path) as child:  # no other child
        event = payments(1)[0]
        assert child.request("ingest", events=[event])["accepted"] == 1
        primary.request("ingest", events=[event])
        os.truncate(appliance.config.db + "-inbox", 0)
        with pytest.raises(RequestError) as refused:  # the primary's append finds it (no tick in between)
            primary.request("ingest", events=[event])
        assert "truncated" in refused.value.message
        with pytest.raises(RequestError) as refused:
            child.request("ingest", events=[event])
        assert refused.value.code == "unavailable" and "truncated" in refused.value.message
        assert child.request("predict", event=event, ingest=False)["logged"] is False


def test_inbox_lag_covers_every_childs_inbox(two_processes):
    appliance, _extra = two_processes
    line = orjson.dumps({"event": {**payments(1)[0], "event_id": "through-2"}}) + b"\n"
    half = len(line) // 2
    with Client(appliance.config.socket) as primary:
        wait_for(lambda: primary.request("stats")["inbox_lag_bytes"] == 0, "no lag to begin with")
        before = processed(primary)
        with open(appliance.config.db + "-inbox-3", "ab") as inbox:  # a child's write, half landed
            inbox.write(line[:half])
            inbox.flush()
            stats = primary.request("stats")
            assert stats["inbox_lag_bytes"] == half and stats["inbox_lag_by_input"]["inbox-3"] == half
            inbox.write(line[half:])
        wait_for(lambda: primary.request("stats")["inbox_lag_bytes"] == 0, "the flow to read the child's line")
        assert processed(primary) == before + 1


def test_a_childs_counters_are_the_ones_its_report_carries(short_dir):
    """A child's report packs `CHILD_COUNTERS` by name from `ChildServer.stats`: the two name the same
    counters, and a counter missing from the stats fails loudly instead of being reported as 0."""
    from appliance.serving.child_connections import ChildServer
    from appliance.serving.latency import LatencyRing
    from appliance.serving.protocol import Protocol
    from appliance.serving.status_record import CHILD_COUNTERS, LatencyReport, PeerLatencies, report_path

    server = ChildServer(Protocol({}), str(short_dir / "unused.sock"), token=None, auth_timeout=1.0,
                         serving_processes=1)
    assert set(server.stats()) == set(CHILD_COUNTERS)
    db = str(short_dir / "a.db")
    report = LatencyReport(report_path(db, 7))
    try:
        report.publish(LatencyRing(), {**server.stats(), "requests": 41})
        assert PeerLatencies(db).read()[os.getpid()].server == {**dict.fromkeys(CHILD_COUNTERS, 0), "requests": 41}
        with pytest.raises(KeyError):
            report.publish(LatencyRing(), {name: 1 for name in CHILD_COUNTERS if name != "errors"})
    finally:
        report.close()


def test_childrens_predict_service_times_reach_the_primarys_stats(two_processes):
    appliance, extra = two_processes
    with Client(appliance.config.socket) as primary, Client(extra.path) as child:
        own = primary.request("stats")["predict_latency"]["samples"]
        for raw in payments(20):
            child.request("predict", event=raw, ingest=False)
        pid = str(extra.children.pids()[0])
        wait_for(lambda: primary.request("stats").get("predict_latency_by_pid", {}).get(pid, {}).get("samples") == 20,
                 "the child's report")
        stats = primary.request("stats")
        assert stats["predict_latency_by_pid"][str(os.getpid())]["samples"] == own
        assert stats["predict_latency"]["samples"] >= own + 20  # every process's, together
        assert stats["predict_latency"]["max_us"] >= stats["predict_latency_by_pid"][pid]["max_us"]


def test_a_childs_inbox_is_given_back_behind_the_durable_checkpoint(short_dir, monkeypatch):
    """As the primary's own inbox: whole MiB before a durable checkpoint's offset in the child's inbox
    become a hole (the file keeps its length, its unread end intact)."""
    monkeypatch.setattr(writer, "RELEASE_EVERY", 0.0)
    config = make_config(short_dir, checkpoint={"every": 0.2})
    inbox = Path(config.db + "-inbox-3")
    inbox.touch()
    with serving(config, serve_processes=2) as appliance:
        extra = ExtraChild(appliance, str(short_dir / "c.sock"))
        try:
            with Client(extra.path) as child, Client(appliance.config.socket) as primary:
                stream = [dict(raw, pad="p" * 400) for raw in payments(6000)]
                for start in range(0, len(stream), 500):
                    assert child.request("ingest", events=stream[start:start + 500])["accepted"] == 500
                size = inbox.stat().st_size
                assert size > 2 << 20
                wait_for(lambda: primary.request("stats")["inbox_lag_bytes"] == 0, "the flow to read the child's inbox")
                wait_for(lambda: inbox.stat().st_blocks * 512 <= size - (2 << 20), "the child's inbox given back")
                assert inbox.stat().st_size == size  # offsets are unchanged
                with open(inbox, "rb") as log:
                    assert log.read(16) == b"\0" * 16
                    log.seek(size - 2000)
                    assert log.read().rstrip().endswith(b'"pad":"' + b"p" * 400 + b'"}}')
        finally:
            extra.close()
