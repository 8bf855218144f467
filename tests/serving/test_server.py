"""The socket transport with real sockets: framing, errors, privacy, backpressure, shutdown."""

from __future__ import annotations

import os
import socket
import stat
import threading

import orjson
import pytest

from appliance.errors import ApplianceError, ConfigError, RequestError
from appliance.serving.client import Client
from appliance.serving.protocol import Protocol
from appliance.serving.server import SocketServer
from tests.serving.conftest import echo_handlers


@pytest.fixture
def server(short_dir):
    srv = SocketServer(Protocol(echo_handlers(), max_line=1024), unix_path=str(short_dir / "s.sock"))
    srv.start()
    yield srv
    srv.stop()


def raw_connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def read_lines(sock, n):
    data = b""
    while data.count(b"\n") < n:
        chunk = sock.recv(1 << 16)
        assert chunk, "connection closed early"
        data += chunk
    return [orjson.loads(line) for line in data.splitlines()[:n]]


def test_request_reply_and_id_echo(server):
    with Client(server.unix_path) as client:
        assert client.request("echo", value=[1, "x"])["echo"] == [1, "x"]
        reply = client.send_line(b'{"op": "echo", "id": "abc", "value": 3}')
        assert reply == {"id": "abc", "ok": True, "echo": 3}


def test_errors_are_replies_and_the_connection_stays_open(server):
    with Client(server.unix_path) as client:
        cases = [
            (b"{not json", "bad_json"),
            (b"[1, 2]", "bad_request"),
            (b'{"op": "nope"}', "unknown_op"),
            (b'{"op": 5}', "bad_request"),
            (b'{"value": 1}', "bad_request"),
            (b'{"op": "boom", "id": 9}', "internal"),
            (b"\xff\xfe\x00junk", "bad_json"),
            (b"[" * 300 + b"]" * 300, "bad_json"),
            (b'{"op": "echo", "value": NaN}', "bad_json"),
        ]
        for line, code in cases:
            reply = client.send_line(line)
            assert reply["ok"] is False and reply["error"]["code"] == code, (line[:20], reply)
            assert reply["error"]["message"]
        assert client.request("echo", value=1)["echo"] == 1
        with pytest.raises(RequestError) as info:
            client.request("nope")
        assert info.value.code == "unknown_op"


def test_pipelined_and_split_lines(server):
    sock = raw_connect(server.unix_path)
    sock.sendall(b"".join(orjson.dumps({"op": "echo", "id": i, "value": i}) + b"\n" for i in range(1000)))
    replies = read_lines(sock, 1000)
    assert [r["id"] for r in replies] == list(range(1000))
    sock.sendall(b'{"op": "ec')
    sock.sendall(b'ho", "value": "split"}\n\n   \n')
    assert read_lines(sock, 1)[0]["echo"] == "split"
    sock.close()


def test_a_line_over_the_limit_is_refused_then_the_next_one_works(server):
    sock = raw_connect(server.unix_path)
    sock.sendall(b'{"op": "echo", "value": "' + b"x" * 5000)  # over 1024, unfinished
    sock.sendall(b"x" * 3000 + b'"}\n{"op": "echo", "value": 2}\n')
    first, second = read_lines(sock, 2)
    assert first["error"]["code"] == "line_too_long"
    assert second["echo"] == 2
    sock.close()


def test_the_unix_socket_is_owner_only_and_removed_on_stop(short_dir):
    path = str(short_dir / "p.sock")
    srv = SocketServer(Protocol(echo_handlers()), unix_path=path)
    srv.start()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    srv.stop()
    srv.stop()  # idempotent
    assert not os.path.exists(path)


def test_a_stale_socket_is_replaced_a_live_one_and_a_file_are_refused(short_dir):
    stale = short_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))
    dead.close()  # the file stays, nobody listens: what a kill -9 leaves behind
    srv = SocketServer(Protocol(echo_handlers()), unix_path=str(stale))
    srv.start()
    try:
        with pytest.raises(ConfigError, match="already serving"):
            SocketServer(Protocol(echo_handlers()), unix_path=str(stale)).start()
        with Client(str(stale)) as client:
            assert client.request("echo", value=1)["echo"] == 1
    finally:
        srv.stop()
    regular = short_dir / "file.sock"
    regular.write_text("data")
    with pytest.raises(ConfigError, match="not a socket"):
        SocketServer(Protocol(echo_handlers()), unix_path=str(regular)).start()
    assert regular.read_text() == "data"


def test_tcp_wants_a_token_and_refuses_public_addresses_without_one():
    with pytest.raises(ConfigError, match="without a token"):
        SocketServer(Protocol(echo_handlers()), unix_path=None, tcp=("0.0.0.0", 0))
    srv = SocketServer(Protocol(echo_handlers()), unix_path=None, tcp=("127.0.0.1", 0), token="s3cret-s3cret-s3cret")
    srv.start()
    try:
        with Client(None, tcp=srv.tcp_address) as client:
            reply = client.send_line(b'{"op": "echo", "value": 1}')
            assert reply["error"]["code"] == "unauthorized"
            assert client.send_line(b'{"op": "auth", "token": "wrong"}')["error"]["code"] == "unauthorized"
            assert client.send_line(b'{"op": "auth", "token": "s3cret-s3cret-s3cret"}')["ok"] is True
            assert client.request("echo", value=2)["echo"] == 2
        with Client(None, tcp=srv.tcp_address, token="s3cret-s3cret-s3cret") as client:
            assert client.request("echo", value=3)["echo"] == 3
        with Client(None, tcp=srv.tcp_address) as client:  # a token on the request itself also works
            assert client.send_line(b'{"op": "echo", "value": 4, "token": "s3cret-s3cret-s3cret"}')["echo"] == 4
    finally:
        srv.stop()


def test_stop_answers_requests_already_received(short_dir):
    release = threading.Event()
    srv = SocketServer(Protocol(echo_handlers(release)), unix_path=str(short_dir / "w.sock"))
    srv.start()
    sock = raw_connect(srv.unix_path)
    sock.sendall(b'{"op": "wait", "id": 0}\n' + b"".join(b'{"op": "echo", "id": %d}\n' % i for i in range(1, 101)))
    stopper = threading.Thread(target=srv.stop)
    while srv.stats()["bytes_in"] == 0:  # the loop thread is inside the `wait` handler with the chunk read
        threading.Event().wait(0.001)
    stopper.start()
    release.set()
    replies = read_lines(sock, 101)
    stopper.join(10)
    assert [r["id"] for r in replies] == list(range(101)) and all(r["ok"] for r in replies)
    assert sock.recv(10) == b""  # then the server closes the connection
    sock.close()


def test_a_client_that_never_reads_does_not_block_others(server):
    import select

    hog = raw_connect(server.unix_path)
    hog.setblocking(False)
    line = b'{"op": "echo", "value": "' + b"y" * 900 + b'"}\n'
    sent = 0
    while server.stats()["paused_clients"] == 0 and sent < 256 << 20:
        select.select([], [hog], [], 1.0)  # writable again, or the server has stopped reading us
        try:
            sent += hog.send(line * 64)
        except BlockingIOError:
            pass
    assert server.stats()["paused_clients"] == 1, "the server kept reading from a client that never reads"
    taken = server.stats()["bytes_in"]
    assert taken < 16 << 20  # bounded: about the high-water mark of replies, plus kernel buffers
    with Client(server.unix_path, timeout=5) as other:
        assert other.request("echo", value="still here")["echo"] == "still here"
    hog.close()


def test_connections_over_the_limit_are_closed(short_dir):
    srv = SocketServer(Protocol(echo_handlers()), unix_path=str(short_dir / "m.sock"), max_connections=2)
    srv.start()
    try:
        a, b = Client(srv.unix_path), Client(srv.unix_path)
        a.request("echo"), b.request("echo")
        with pytest.raises(ApplianceError, match="closed the connection|lost the connection"):
            Client(srv.unix_path).request("echo")
        assert srv.stats()["connections_refused"] == 1
        a.close()
        b.close()
    finally:
        srv.stop()


def test_client_says_how_to_start_the_appliance(short_dir):
    with pytest.raises(ApplianceError, match="appliance up"):
        Client(str(short_dir / "missing.sock"))


def watched_server(short_dir, payload_bytes=100):
    ticks = {"n": 0}

    def snapshot():
        ticks["n"] += 1
        return {"tick": ticks["n"], "pad": "x" * payload_bytes}

    srv = SocketServer(Protocol(echo_handlers()), unix_path=str(short_dir / "w.sock"), watch_source=snapshot)
    srv.start()
    return srv


def test_watch_pushes_stats_updates_until_unwatch(short_dir):
    srv = watched_server(short_dir)
    try:
        sock = raw_connect(srv.unix_path)
        sock.sendall(b'{"op": "watch", "id": "w1", "interval": 0.1}\n')
        lines = read_lines(sock, 4)
        assert lines[0] == {"id": "w1", "ok": True, "watching": True, "interval": 0.1}
        updates = lines[1:]
        assert all(u["id"] == "w1" and u["ok"] and u["dropped"] == 0 and u["pad"] == "x" * 100 for u in updates)
        assert [u["update"] for u in updates] == sorted({u["update"] for u in updates})
        assert updates[0]["tick"] < updates[1]["tick"] < updates[2]["tick"]
        # unwatch: its reply is the last line about the watch; the next line answers the next request
        sock.sendall(b'{"op": "unwatch", "id": "w2"}\n{"op": "echo", "id": 3, "value": "after"}\n')
        rest = b""
        while b'"after"' not in rest:
            chunk = sock.recv(1 << 16)
            assert chunk
            rest += chunk
        tail = [orjson.loads(line) for line in rest.splitlines()]
        stop = next(i for i, line in enumerate(tail) if line.get("id") == "w2")
        assert tail[stop] == {"id": "w2", "ok": True, "watching": False}
        assert tail[stop + 1:] == [{"id": 3, "ok": True, "echo": "after"}]
        assert srv.stats()["watchers"] == 0
        # a bad interval is an error reply, and the connection stays usable
        sock.sendall(b'{"op": "watch", "id": 4, "interval": 0}\n{"op": "echo", "id": 5, "value": "ok"}\n')
        error, echo = read_lines(sock, 2)
        assert error["error"]["code"] == "bad_request" and echo["echo"] == "ok"
        sock.close()
    finally:
        srv.stop()


def test_a_watcher_that_does_not_read_gets_updates_dropped_not_queued(short_dir):
    import time

    srv = watched_server(short_dir, payload_bytes=50_000)
    try:
        hog = raw_connect(srv.unix_path)
        hog.sendall(b'{"op": "watch", "id": "hog", "interval": 0.1}\n')
        deadline = time.monotonic() + 60
        while srv.stats()["watch_updates_dropped"] < 5:  # the kernel buffer fills, then its write buffer
            assert time.monotonic() < deadline, srv.stats()
            threading.Event().wait(0.05)
        (watcher,) = srv.watchers
        from appliance.serving.server import WATCH_BUFFER
        assert watcher.transport.get_write_buffer_size() <= WATCH_BUFFER + 60_000  # at most one update past the mark
        with Client(srv.unix_path, timeout=5) as other:  # everyone else is served as usual
            assert other.request("echo", value="still here")["echo"] == "still here"
        # the hog reads again: what it missed was dropped, and an update says how many
        hog.settimeout(10)
        data = b""
        while True:
            chunk = hog.recv(1 << 20)
            assert chunk
            data += chunk
            lines = [orjson.loads(line) for line in data.split(b"\n")[1:-1]]
            if any(line.get("dropped", 0) > 0 for line in lines):
                break
        assert max(line["dropped"] for line in lines) >= 5
        hog.close()
    finally:
        srv.stop()


def test_deferred_work_runs_off_the_loop_and_replies_keep_request_order(short_dir):
    from appliance.serving.protocol import Deferred

    release = threading.Event()
    started = threading.Event()

    def slow(request):
        def work():
            started.set()
            assert release.wait(10)
            return {"slow": request.get("value")}
        return Deferred(work)

    def failing(request):
        return Deferred(lambda: 1 / 0)

    srv = SocketServer(Protocol({**echo_handlers(), "slow": slow, "failing": failing}), unix_path=str(short_dir / "d.sock"))
    srv.start()
    try:
        sock = raw_connect(srv.unix_path)
        sock.sendall(b'{"op": "echo", "id": 1, "value": "a"}\n{"op": "slow", "id": 2, "value": "b"}\n'
                     b'{"op": "echo", "id": 3, "value": "c"}\n{"op": "failing", "id": 4}\n{"op": "echo", "id": 5}\n')
        assert read_lines(sock, 1) == [{"id": 1, "ok": True, "echo": "a"}]
        assert started.wait(10)
        with Client(srv.unix_path, timeout=5) as other:  # the event loop is free while the work runs
            assert other.request("echo", value="meanwhile")["echo"] == "meanwhile"
        release.set()
        replies = read_lines(sock, 4)
        assert [r["id"] for r in replies] == [2, 3, 4, 5]
        assert replies[0] == {"id": 2, "ok": True, "slow": "b"} and replies[1]["echo"] == "c"
        assert replies[2]["ok"] is False and replies[2]["error"]["code"] == "internal"
        assert replies[3] == {"id": 5, "ok": True, "echo": None}
        sock.close()
    finally:
        release.set()
        srv.stop()


def test_a_server_that_stops_accepting_keeps_its_connections_and_its_listening_socket(short_dir):
    """What the primary does while serving children take new connections: the connections it holds
    are still answered, a new one waits in the listening socket's queue for whoever accepts on it
    (here the test, on the fd a child would inherit), and accepting again serves new ones."""
    path = str(short_dir / "a.sock")
    srv = SocketServer(Protocol(echo_handlers()), unix_path=path)
    srv.start()
    try:
        held = raw_connect(path)
        held.sendall(b'{"op":"echo","id":1}\n')
        assert read_lines(held, 1)[0]["id"] == 1
        srv.set_accepting(False)
        assert not srv.accepting
        held.sendall(b'{"op":"echo","id":2}\n')
        assert read_lines(held, 1)[0]["id"] == 2  # an open connection is still served
        inherited = socket.socket(fileno=os.dup(srv.unix_fd))  # as a serving child gets it
        inherited.settimeout(10)
        with raw_connect(path) as waiting:
            waiting.sendall(b'{"op":"echo","id":3}\n')
            accepted, _ = inherited.accept()  # the new connection was left to the other process
            with accepted:
                assert accepted.recv(100) == b'{"op":"echo","id":3}\n'
        inherited.close()
        assert os.path.exists(path)  # the socket file and the listener outlive the loop's server
        srv.set_accepting(True)
        with raw_connect(path) as fresh:
            fresh.sendall(b'{"op":"echo","id":4}\n')
            assert read_lines(fresh, 1)[0]["id"] == 4
        held.close()
    finally:
        srv.stop()
    assert not os.path.exists(path)


def test_a_server_started_without_accepting_listens_for_the_children_only(short_dir):
    path = str(short_dir / "q.sock")
    srv = SocketServer(Protocol(echo_handlers()), unix_path=path)
    srv.start(accepting=False)
    try:
        assert not srv.accepting
        inherited = socket.socket(fileno=os.dup(srv.unix_fd))
        inherited.settimeout(10)
        with raw_connect(path) as waiting, inherited:
            waiting.sendall(b'{"op":"echo","id":1}\n')
            accepted, _ = inherited.accept()  # listening from the start, and left to the other process
            with accepted:
                assert accepted.recv(100) == b'{"op":"echo","id":1}\n'
        srv.set_accepting(True)  # no child runs: this server answers
        with raw_connect(path) as fresh:
            fresh.sendall(b'{"op":"echo","id":2}\n')
            assert read_lines(fresh, 1)[0]["id"] == 2
    finally:
        srv.stop()


def test_switching_accepting_on_a_loop_that_already_ended_leaves_nothing_pending(short_dir):
    """The runtime may switch accepting (a child started or died) while the server's loop is ending:
    the switch is given up with a warning in the log, and the coroutine it made is closed, not left
    for the collector to report as never awaited (seen once in CI, during a stop)."""
    import gc
    import inspect

    srv = SocketServer(Protocol(echo_handlers()), unix_path=str(short_dir / "e.sock"))
    srv.start(accepting=False)
    loop, thread = srv._loop, srv._thread
    loop.call_soon_threadsafe(loop.stop)  # the loop ends as in a stop, before `stop` marks the server stopped
    thread.join(10)
    assert loop.is_closed()
    srv.set_accepting(True)
    assert not srv.accepting
    gc.collect()
    never_run = [o for o in gc.get_objects() if inspect.iscoroutine(o) and o.cr_code is SocketServer._accept.__code__
                 and inspect.getcoroutinestate(o) == inspect.CORO_CREATED]
    assert not never_run
    srv.stop()
