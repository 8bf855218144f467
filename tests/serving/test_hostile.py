"""Hostile input: any bytes on the socket, any JSON as an event.

Properties (Hypothesis) on the two parsers every byte from outside goes through, with the real
socket operations behind the protocol: a reply that parses, with a stable error code, never an
exception and never an `internal` error (that code means a bug). Then the same abuse on a real
appliance's real socket: each case gets a clear error or is closed, and other clients are unaffected.
"""

from __future__ import annotations

import math
import select
import socket
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from appliance.config.file import config_from_dict
from appliance.engine.core import Engine
from appliance.errors import InvalidEvent, RequestError
from appliance.ingest.events import Event, Label, parse_event
from appliance.ingest.inbox import Inbox
from appliance.serving.board import StatsBoard
from appliance.serving.client import Client
from appliance.serving.protocol import Protocol, Session
from appliance.serving.service import Service
from appliance.timeutil import format_timestamp
from tests.conftest import SMALL_CONFIG, serving, wait_for

CODES = {"bad_json", "bad_request", "unknown_op", "line_too_long", "unauthorized", "invalid_event",
         "invalid_label", "unknown_key", "too_large", "overloaded", "not_found", "conflict",
         "nothing_to_roll_back"}
SCHEMA_FIELDS = ["event_id", "ts", "type", "label", "user", "card", "amount", "city"]

special = st.sampled_from(["", "label", "payment", "1", "true", "2026-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00",
                           "9999-12-31T23:59:59-14:00", "nan", "1e999", 0, 1, -1, 1e11, 1e12, 1e15, 1e300, -1e300,
                           1.7e308, -5e13, 2 ** 63, -(2 ** 63) - 1, 2 ** 64, float("nan"), float("inf")])
scalars = special | st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=30)
json_leaf = st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30) | scalars
json_values = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
# Events shaped like the schema's, each field any JSON value: reaches every branch of the validator.
event_like = st.fixed_dictionaries({}, optional={name: json_values for name in SCHEMA_FIELDS})
VALID = {"event": {"type": "payment", "event_id": "e1", "ts": 1_767_225_600.0, "user": "u1", "card": "c1",
                   "amount": 12.5, "city": "faro"},
         "label": {"type": "label", "event_id": "e1", "ts": 1_767_225_700.0, "label": 1}}
# A valid event or label with one field replaced by any JSON value (None: removed).
mutated = st.builds(lambda base, field, value: {**{k: v for k, v in VALID[base].items() if k != field},
                                                **({} if value is None else {field: value})},
                    st.sampled_from(sorted(VALID)), st.sampled_from(SCHEMA_FIELDS), scalars | json_values)
SMALL = config_from_dict(SMALL_CONFIG)


def check_parsed(parsed) -> None:
    """What a parsed event promises the rest of the appliance: finite numbers, a printable time."""
    if isinstance(parsed, Event):
        assert math.isfinite(parsed.ts)
        format_timestamp(parsed.ts)  # stats, dead letters and replies print event times
        assert all(math.isfinite(v) for v in parsed.values.values() if isinstance(v, float))
    else:
        assert isinstance(parsed, Label)
        if parsed.ts is not None:
            format_timestamp(parsed.ts)


@settings(max_examples=500, deadline=None, derandomize=True)
@example(payload={**VALID["event"], "ts": 1e300}, task="classification")
@example(payload={**VALID["label"], "ts": "0001-01-01T00:00:00+14:00"}, task="classification")
@given(payload=mutated | json_values | event_like, task=st.sampled_from(["classification", "regression"]))
def test_any_json_value_is_an_event_a_label_or_a_clear_rejection(payload, task):
    for form in (payload, _dumps(payload)):
        if form is None:
            continue
        try:
            parsed = parse_event(form, SMALL.event, task)
        except InvalidEvent as exc:
            assert exc.reason and "\n" not in exc.reason
            continue
        check_parsed(parsed)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.binary(max_size=300))
def test_any_bytes_are_an_event_or_a_clear_rejection(data):
    try:
        check_parsed(parse_event(data, SMALL.event, "classification"))
    except InvalidEvent as exc:
        assert exc.reason


def _dumps(value):
    try:
        return orjson.dumps(value)
    except TypeError:  # NaN is fine for orjson (as null); huge integers are not JSON it writes
        return None


class _Real:
    """The real socket operations over an engine and an inbox in a temporary directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="apl-hyp-", dir="/tmp"))
        engine = Engine(SMALL)
        self.service = Service(engine, Inbox(str(self.dir / "inbox")), StatsBoard())
        self.service.board.publish(engine, force=True)
        self.protocol = Protocol(self.service.handlers())


_REAL: list[_Real] = []


def real() -> _Real:
    if not _REAL:
        _REAL.append(_Real())
    return _REAL[0]


def check_reply(raw: bytes) -> dict:
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    reply = orjson.loads(raw)
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert reply["error"]["code"] in CODES, reply  # `internal` is a bug, never an answer to input
        assert reply["error"]["message"] and "\n" not in reply["error"]["message"]
    return reply


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(line=st.binary(max_size=400))
def test_any_bytes_get_one_json_reply_line(line):
    line = line.replace(b"\n", b" ")  # the transport splits lines; the protocol sees one at a time
    check_reply(real().protocol.handle_line(line, Session()))


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(sorted(Protocol(real().service.handlers()).known_ops) + ["nope", ""]),
       fields=st.dictionaries(st.sampled_from(["id", "event", "events", "entity", "key", "label", "event_id", "ts",
                                               "ingest", "explain", "limit", "version", "challenger", "paused",
                                               "token", "actor"]),
                              mutated | json_values | event_like | st.lists(mutated | event_like, max_size=3),
                              max_size=5))
def test_any_request_to_any_op_gets_a_reply_and_never_an_internal_error(op, fields):
    request = {"op": op, **fields}
    line = _dumps(request)
    if line is None:
        return
    reply = check_reply(real().protocol.handle_line(line, Session()))
    if "id" in request and reply.get("id") is not None:
        assert reply["id"] == orjson.loads(line)["id"]


# -- the same on a real appliance's real socket -----------------------------------------------------

@pytest.fixture(scope="module")
def appliance():
    directory = Path(tempfile.mkdtemp(prefix="apl-h-", dir="/tmp"))
    config = config_from_dict({**SMALL_CONFIG, "serve": {"socket": str(directory / "h.sock"),
                                                                "db": str(directory / "h.db")}})
    with serving(config) as running:
        yield running
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


EVENT = b'{"user": "u1", "card": "c1", "amount": 12.5, "city": "faro"}'


def raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    return sock


def replies(sock: socket.socket, n: int) -> list[dict]:
    data = b""
    while data.count(b"\n") < n:
        chunk = sock.recv(1 << 16)
        assert chunk, f"closed after {len(data.splitlines())} of {n} replies"
        data += chunk
    return [orjson.loads(line) for line in data.splitlines()[:n]]


def healthy(path: str) -> None:
    with Client(path, timeout=30) as client:
        assert client.request("health")["status"] == "ok"  # the dataflow is alive
        reply = client.request("predict", event=orjson.loads(EVENT), ingest=False)
        assert 0.0 <= reply["score"] <= 1.0


def test_abusive_lines_each_get_a_clear_error_and_the_connection_goes_on(appliance):
    path = appliance.config.socket
    cases = [
        (b'{"op": "predict", "event": {"user": "u1", "card": "c1", "amount": NaN, "city": "faro"}}', "bad_json"),
        (b'{"op": "predict", "event": {"user": "u1", "card": "c1", "amount": Infinity, "city": "faro"}}', "bad_json"),
        (b'{"op": "predict", "event": {"user": "u1", "card": "c1", "amount": 1e400, "city": "faro"}}', "bad_json"),
        (b'{"op": "predict", "event": {"user": "u1", "card": "c1", "amount": 1e300, "city": "faro"}}', "invalid_event"),
        (b'{"op": "predict", "event": {"user": "u1", "card": "c1", "amount": 1' + b"0" * 400 + b', "city": "faro"}}',
         "bad_json"),  # a huge integer is read as a float, and this one is infinite
        (b'{"op": "ingest", "events": [{"event_id": "h1", "ts": 1e300, "user": "u1", "card": "c1", "amount": 1, '
         b'"city": "faro"}]}', None),  # accepted: 0, rejected with its reason
        (b'{"op": "label", "event_id": "x", "label": 1, "ts": 1e300}', "invalid_event"),  # was ok, then dead
        (b'{"op": "features", "key": "card", "entity": "' + b"c" * 100_000 + b'"}', None),
        (b"[" * 100_000 + b"]" * 100_000, "bad_json"),
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "bad_json"),
        (bytes(range(256)).replace(b"\n", b""), "bad_json"),
        (b"\x00" * 1000, "bad_json"),
        (b'{"op": "shutdown"}', "unknown_op"),
        (b'{"op": "__class__"}', "unknown_op"),
        (b'{"op": ["predict"]}', "bad_request"),
        (b'"predict"', "bad_request"),
        (b'{"op": "predict", "event": {"user": "u1"}, "id": {"nested": [1, 2]}}', "invalid_event"),
        (b'{"op": "ingest", "events": ' + b"[" + b",".join([EVENT] * 10_001) + b"]}", "too_large"),
    ]
    sock = raw(path)
    sock.sendall(b"".join(line + b"\n" for line, _ in cases) + b'{"op": "health", "id": "last"}\n')
    got = replies(sock, len(cases) + 1)
    for (line, code), reply in zip(cases, got):
        if code is None:
            assert reply["ok"] is True, (line[:60], reply)
        else:
            assert reply["ok"] is False and reply["error"]["code"] == code, (line[:60], reply)
            assert len(reply["error"]["message"]) <= 500
    assert got[5]["accepted"] == 0 and "out of range" in got[5]["rejected"][0]["reason"]
    assert got[16]["id"] == {"nested": [1, 2]}
    assert got[-1] == {**got[-1], "id": "last", "ok": True}
    sock.close()
    healthy(path)


def settled(appliance, client: Client) -> dict:
    """The stats snapshot once everything in the inbox so far has been processed."""
    size = appliance.inbox.size
    return wait_for(lambda: (s := client.request("stats"))["offsets"].get("inbox") == size and s)


def test_an_event_time_past_year_9999_cannot_take_the_appliance_down(appliance):
    """Such an event used to be accepted: its time became the watermark and the dataflow died on the next
    stats snapshot (OverflowError printing it), and again at every restart, replaying it from the inbox."""
    path = appliance.config.socket
    with Client(path, timeout=30) as client:
        before = settled(appliance, client)["counts"]["dead_letters"]
        for ts in (1e300, 2e17, -1e300, "0001-01-01T00:00:00+14:00"):
            event = {**orjson.loads(EVENT), "event_id": f"far-{ts}", "ts": ts}
            with pytest.raises(RequestError, match="out of range") as info:
                client.request("predict", event=event)
            assert info.value.code == "invalid_event"
            assert client.request("ingest", events=[event])["accepted"] == 0
        # The rejected ones still go through the stream, as dead letters with their reason.
        assert settled(appliance, client)["counts"]["dead_letters"] == before + 4
    healthy(path)


def test_lines_over_the_limit_are_refused_and_the_next_line_works(appliance):
    path = appliance.config.socket
    sock = raw(path)
    big = b'{"op": "features", "key": "card", "entity": "' + b"x" * (3 << 20) + b'"}\n'
    sock.sendall(big + b'{"op": "health", "id": 2}\n' + b"y" * ((1 << 20) + 10) + b'\n{"op": "health", "id": 4}\n')
    first, second, third, fourth = replies(sock, 4)
    assert first["error"]["code"] == "line_too_long" and third["error"]["code"] == "line_too_long"
    assert second["id"] == 2 and second["ok"] and fourth["id"] == 4 and fourth["ok"]
    exactly = b'{"op": "health", "pad": "' + b"z" * ((1 << 20) - 27) + b'"}'
    assert len(exactly) == 1 << 20
    sock.sendall(exactly + b"\n")
    assert replies(sock, 1)[0]["ok"] is True  # the limit itself is allowed
    sock.close()
    healthy(path)


def test_a_half_closed_connection_gets_every_reply_then_eof(appliance):
    sock = raw(appliance.config.socket)
    sock.sendall(b"".join(b'{"op": "features", "id": %d, "key": "user", "entity": "u%d"}\n' % (i, i % 12)
                          for i in range(500)) + b'{"op": "health", "id": 500}')  # the last line has no newline
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    got = [orjson.loads(line) for line in data.splitlines()]
    assert [r["id"] for r in got] == list(range(501)) and all(r["ok"] for r in got)
    sock.close()  # the unterminated rest at the end of file is the last line (as a serving child reads it)
    healthy(appliance.config.socket)


def test_a_client_that_never_reads_does_not_slow_the_replies_of_another(appliance):
    path = appliance.config.socket
    server = appliance.server
    paused = server.stats()["paused_clients"]
    hog = raw(path)
    hog.setblocking(False)
    lines = b'{"op": "stats"}\n' * 256
    while server.stats()["paused_clients"] == paused:
        select.select([], [hog], [], 0.2)
        try:
            hog.send(lines)
        except BlockingIOError:
            pass
    with Client(path, timeout=10) as other:
        for i in range(200):
            reply = other.request("features", key="card", entity=f"c{i % 15}")
            assert reply["entities"]["card"]["entity"] == f"c{i % 15}"
        assert other.request("health")["status"] == "ok"
    hog.close()
    healthy(path)


def test_a_thousand_connections_are_served_up_to_the_limit_and_the_rest_closed(appliance):
    path = appliance.config.socket
    server = appliance.server
    limit = server.max_connections
    assert limit == 1024
    wait_for(lambda: server.stats()["connections_open"] == 0)  # the earlier tests' clients are gone
    refused = server.stats()["connections_refused"]
    socks = []
    try:
        for _ in range(limit + 100):
            socks.append(raw(path))
        for sock in socks:
            try:
                sock.sendall(b'{"op": "health"}\n')
            except BrokenPipeError:  # closed by the server already
                pass
        served = closed = 0
        for sock in socks:
            try:
                data = sock.recv(1 << 16)
            except ConnectionResetError:  # closed by the server with our request unread
                data = b""
            if data:
                assert orjson.loads(data)["ok"] is True
                served += 1
            else:
                closed += 1
        assert served == limit and closed == 100
        assert server.stats()["connections_refused"] == refused + 100
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: server.stats()["connections_open"] == 0)
    healthy(path)  # and new connections are served again
