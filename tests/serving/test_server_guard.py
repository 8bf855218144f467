"""The TCP listener against strangers, with real sockets: a real token or none, a few guesses per
connection and few per second overall, a deadline and a small line until authenticated, and a
connection limit of its own, so TCP clients never lock the local operator out of the Unix socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import orjson
import pytest

from appliance.errors import ConfigError
from appliance.serving.access import (
    FAILED_AUTHS_PER_SECOND,
    MAX_FAILED_AUTHS,
    MIN_TOKEN_LENGTH,
    UNAUTHENTICATED_LINE,
    read_token_file,
)
from appliance.serving.client import Client
from appliance.serving.protocol import Protocol, Session
from appliance.serving.server import SocketServer
from tests.conftest import Running, make_stream, wait_for, write_config
from tests.serving.conftest import echo_handlers

TOKEN = "0123456789abcdef-token"


@pytest.fixture
def source_file(short_dir):
    """The same 600-event file as `test_up`'s."""
    path = short_dir / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in make_stream(600)) + "\n")
    return path


@pytest.fixture
def tcp_server(short_dir):
    srv = SocketServer(Protocol(echo_handlers()), unix_path=str(short_dir / "g.sock"), tcp=("127.0.0.1", 0),
                       token=TOKEN, max_connections=8, max_tcp_connections=8, auth_timeout=0.3)
    srv.start()
    yield srv
    srv.stop()


def tcp_connect(address) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    return sock


def read_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("token", ["", "short", "x" * (MIN_TOKEN_LENGTH - 1)])
def test_an_empty_or_short_token_is_no_token_and_refused_at_start(token):
    for host in ("0.0.0.0", "127.0.0.1"):
        with pytest.raises(ConfigError, match=f"at least {MIN_TOKEN_LENGTH} characters"):
            SocketServer(Protocol(echo_handlers()), unix_path=None, tcp=(host, 0), token=token)


def test_an_empty_token_never_authenticates_even_if_a_session_carries_one():
    protocol = Protocol(echo_handlers())
    session = Session(authenticated=False, peer="tcp", token="")
    reply = orjson.loads(protocol.handle_line(b'{"op": "auth", "token": ""}', session))
    assert reply["error"]["code"] == "unauthorized" and session.authenticated is False


def test_guesses_on_one_connection_are_answered_a_few_times_then_the_connection_is_closed(tcp_server):
    sock = tcp_connect(tcp_server.tcp_address)
    sock.sendall(b"".join(b'{"op": "auth", "id": %d, "token": "guess-%d-xxxxxxxxxxxx"}\n' % (i, i)
                          for i in range(200)))
    replies = [orjson.loads(line) for line in read_until_eof(sock).splitlines()]
    sock.close()
    assert [r["id"] for r in replies] == list(range(MAX_FAILED_AUTHS))
    assert all(r["error"]["code"] == "unauthorized" for r in replies)
    assert tcp_server.stats()["auth_closed"] == 1
    with Client(None, tcp=tcp_server.tcp_address, token=TOKEN) as client:  # the right token still works
        assert client.request("echo", value=1)["echo"] == 1


def test_failed_authentications_share_one_budget_per_second_across_connections(tcp_server):
    now = 1000.0
    delays = [tcp_server.failed_auths.delay(now) for _ in range(30)]  # 30 connections failing at once
    assert delays == pytest.approx([i / FAILED_AUTHS_PER_SECOND for i in range(30)])
    later = now + 100.0  # the budget refills: a lone failure later waits for nothing
    assert tcp_server.failed_auths.delay(later) == 0.0


def test_a_connection_that_does_not_authenticate_in_time_is_closed(tcp_server):
    sock = tcp_connect(tcp_server.tcp_address)
    assert read_until_eof(sock) == b""  # closed by the server, without a word
    sock.close()
    assert tcp_server.stats()["auth_timeouts"] == 1
    with Client(None, tcp=tcp_server.tcp_address, token=TOKEN) as client:  # authenticated: no deadline
        client.sock.settimeout(10)
        assert client.request("echo", value=2)["echo"] == 2


def test_an_unauthenticated_connection_gets_a_small_line_and_is_closed_past_it(tcp_server):
    sock = tcp_connect(tcp_server.tcp_address)
    try:
        sock.sendall(b'{"op": "echo", "value": "' + b"x" * (1 << 20))  # an unfinished 1 MiB line
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = read_until_eof(sock)
    sock.close()
    if data:  # the reply may be lost to a reset when our unread bytes hit the closed socket
        assert orjson.loads(data.splitlines()[0])["error"]["code"] == "line_too_long"
    assert tcp_server.stats()["connections_open_tcp"] == 0
    with Client(None, tcp=tcp_server.tcp_address, token=TOKEN) as client:  # authenticated: the full limit
        assert client.request("echo", value="y" * (4 * UNAUTHENTICATED_LINE))["echo"] == "y" * (4 * UNAUTHENTICATED_LINE)


def test_tcp_clients_cannot_take_the_unix_sockets_room(short_dir):
    srv = SocketServer(Protocol(echo_handlers()), unix_path=str(short_dir / "r.sock"), tcp=("127.0.0.1", 0),
                       token=TOKEN)
    srv.start()
    idle = []
    try:
        for _ in range(1100):  # more than the Unix socket's limit of 1,024, all idle and unauthenticated
            idle.append(tcp_connect(srv.tcp_address))
        wait_for(lambda: srv.stats()["connections_total"] >= 1100)  # the server has taken every one
        with Client(srv.unix_path, timeout=10) as client:
            assert client.request("echo", value="operator")["echo"] == "operator"
        assert srv.stats()["connections_open_tcp"] <= srv.limits["tcp"]
        assert srv.stats()["connections_refused"] >= 1100 - srv.limits["tcp"]
    finally:
        for sock in idle:
            sock.close()
        srv.stop()


def test_a_token_file_must_be_owner_only_and_not_empty(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_token_file(str(path))
    os.chmod(path, 0o600)
    assert read_token_file(str(path)) == TOKEN
    path.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        read_token_file(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        read_token_file(str(tmp_path / "missing"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_up_refuses_an_empty_token_off_loopback(short_dir, source_file):
    write_config(short_dir, source_file)
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "appliance", "up", "--tcp", "0.0.0.0:0", "--token", "",
                             "--socket", str(short_dir / "a.sock"), "--db", str(short_dir / "a.db")],
                            cwd=short_dir, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"at least {MIN_TOKEN_LENGTH} characters" in result.stderr
    assert not (short_dir / "a.sock").exists()


def test_up_takes_the_token_from_a_file_and_it_never_shows_in_the_command_line(short_dir, source_file):
    write_config(short_dir, source_file)
    token_file = short_dir / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    app = Running(short_dir, "--tcp", f"127.0.0.1:{port}", "--token-file", str(token_file))
    try:
        with open(f"/proc/{app.proc.pid}/cmdline", "rb") as handle:
            assert TOKEN.encode() not in handle.read()
        with Client(None, tcp=("127.0.0.1", port), token=TOKEN) as client:
            assert client.request("health")["status"] == "ok"
        with Client(None, tcp=("127.0.0.1", port)) as client:
            assert client.send_line(b'{"op": "auth", "token": ""}')["error"]["code"] == "unauthorized"
    finally:
        code, _, err = app.stop()
    assert code == 0, err


@pytest.mark.parametrize("line", [
    b'{"op": "echo", "id": 7, "value": [1, 2]}\n',
    b'{"op": "boom", "id": 8}',
    b'{"op": "nope", "id": 9}',
    b'{"id": 10}',
    b'{"op": "auth", "id": 11, "token": "wrong"}',
    b'{"op": "echo", "id": 12, "token": "' + TOKEN.encode() + b'"}',
    b'{"op": "watch", "id": 13, "interval": 0.5}',
])
def test_a_decoded_request_is_answered_as_its_line(line):
    """A serving child decodes a line once to route it, then answers the decoded request: the same
    reply, the same authentication, the same error count as answering the line itself."""
    by_line, by_request = Protocol(echo_handlers()), Protocol(echo_handlers())
    line_session, request_session = Session(token=TOKEN), Session(token=TOKEN)
    request = by_request.decode(line)
    assert request is not None
    assert by_request.handle_request(request, request_session) == by_line.handle_line(line, line_session)
    assert (request_session.authenticated, request_session.failed_auths, by_request.errors_total) == (
        line_session.authenticated, line_session.failed_auths, by_line.errors_total)


@pytest.mark.parametrize("line", [b"{not json", b"[1, 2]", b"[" * 5000 + b"]" * 5000, b'"a string"',
                                  b'{"op": "echo", "value": "' + b"x" * 300 + b'"}'])
def test_decode_refuses_what_handle_line_answers_with_an_error(line):
    """`decode` applies every guard of `handle_line` before the JSON parser: too long (here a 200-byte
    limit), too deep, not JSON, not an object. The error reply is then `handle_line`'s."""
    protocol = Protocol(echo_handlers(), max_line=200)
    assert protocol.decode(line) is None
    reply = orjson.loads(protocol.handle_line(line, Session(authenticated=True)))
    assert reply["ok"] is False and reply["error"]["code"] in ("bad_json", "bad_request", "line_too_long")
