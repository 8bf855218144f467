"""One connection of the socket server: split lines, answer them in order, push back, authenticate.

Each connection is an `asyncio.Protocol` on the server's loop thread. `data_received` cuts the
bytes into lines (`serving.framing`, the rules a serving child's connections follow too), answers
each with `Protocol.handle_line` synchronously, and writes every reply of the chunk in one `write`;
a deferred reply (an operator op that reads SQLite) holds the later lines in the buffer until it is
written, so replies keep the order of the requests. At the client's end of file the rest is the
last line; the connection closes once every line is answered.

Until a TCP connection has authenticated it gets little: `UNAUTHENTICATED_LINE` bytes per line
(a longer line closes it), `auth_timeout` seconds to authenticate (then it is closed), and
`MAX_FAILED_AUTHS` failed attempts (then it is closed). Every failed attempt's reply waits for its
slot of the global `FailedAuthBudget`, on a timer, never blocking the loop. Each listener has its
own connection limit, so TCP clients can never take the room of the local operator on the Unix socket.

Backpressure: a client that sends but does not read fills its write buffer; past the high-water
mark the server stops reading from it until the buffer drains, so its memory stays bounded and
other clients are unaffected.

The connection keeps its own state; what all connections share (the listeners' limits, the sets of
open connections and watchers, the counters, the worker for deferred ops) lives on its
`ConnectionHost`, the `SocketServer`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Protocol as Interface

from appliance.serving.access import MAX_FAILED_AUTHS, UNAUTHENTICATED_LINE, FailedAuthBudget
from appliance.serving.framing import TOO_LONG, Lines
from appliance.serving.protocol import Deferred, Protocol, Session

HIGH_WATER = 1 << 20  # bytes in a connection's write buffer past which it stops being read


class ConnectionHost(Interface):
    """What a connection shares with the other connections of its server."""

    protocol: Protocol
    limits: dict[str, int]
    open_by_listener: dict[str, int]
    connections: set[Connection]
    watchers: set[Connection]
    auth_timeout: float
    failed_auths: FailedAuthBudget
    worker: concurrent.futures.Executor
    connections_total: int
    connections_refused: int
    auth_timeouts: int
    auth_closed: int
    paused_total: int
    requests: int
    bytes_in: int
    bytes_out: int


def refuse_unauthenticated(transport: asyncio.Transport, lines: Lines, protocol: Protocol,
                           replies: list[bytes]) -> int:
    """An unauthenticated line over `UNAUTHENTICATED_LINE`: the replies so far and its error, then the
    connection closes (the primary's and a serving child's connections alike). Returns the bytes written."""
    replies.append(protocol.line_too_long_unauthenticated(UNAUTHENTICATED_LINE))
    lines.clear()
    out = b"".join(replies)
    transport.write(out)
    transport.close()
    return len(out)


_HELD = object()  # `waiting` while a failed authentication's reply waits for its slot


class Connection(asyncio.Protocol):
    """One client connection: lines in, replies out, on the loop thread; its counters live on its host."""


    __slots__ = ("deadline", "dropped", "ended", "lines", "listener", "next_push", "paused", "pushed",
                 "server", "session", "transport", "waiting")

    def __init__(self, server: ConnectionHost, session: Session) -> None:
        self.server = server
        self.session = session
        self.listener = session.peer
        self.deadline: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.lines = Lines()
        self.ended = False  # the client's end of file
        self.paused = False
        self.next_push = 0.0
        self.dropped = 0
        self.pushed = 0
        # A deferred request being worked on, or `_HELD`: later lines wait in the buffer.
        self.waiting: Deferred | object | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self.server
        server.connections_total += 1
        open_here = server.open_by_listener
        if open_here[self.listener] >= server.limits[self.listener]:
            server.connections_refused += 1
            transport.close()
            return
        open_here[self.listener] += 1
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        server.connections.add(self)
        if not self.session.authenticated:
            self.deadline = asyncio.get_running_loop().call_later(server.auth_timeout, self._auth_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.connections:
            self.server.open_by_listener[self.listener] -= 1
        self.server.connections.discard(self)
        self.server.watchers.discard(self)
        if self.deadline is not None:
            self.deadline.cancel()
        self.transport = None

    def _auth_deadline(self) -> None:
        if self.transport is not None and not self.session.authenticated:
            self.server.auth_timeouts += 1
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.server.bytes_in += len(data)
        self.lines.feed(data)
        if self.waiting is None:
            self._answer_lines()
        elif not self.session.authenticated and self.lines.unread > UNAUTHENTICATED_LINE:
            self.transport.abort()  # an unauthenticated client piling up input while its reply waits

    def _answer_lines(self) -> None:
        """Answer every line read (`serving.framing`), in order, until one is deferred or held."""
        transport = self.transport
        if transport is None:
            return
        server = self.server
        lines = self.lines
        protocol = server.protocol
        session = self.session
        ended = self.ended
        replies: list[bytes] = []
        deferred: Deferred | None = None
        refused: bytes | None = None  # a failed authentication's reply, held back for its slot
        while deferred is None and refused is None:
            if session.authenticated:
                line = lines.take(protocol.max_line, ended)
                if line is None:
                    break
                if line is TOO_LONG:
                    replies.append(protocol.line_too_long())
                    continue
                reply = protocol.handle_line(line, session)  # type: ignore[arg-type]
                if type(reply) is bytes:
                    replies.append(reply)
                else:
                    deferred = reply  # type: ignore[assignment]
                continue
            line = lines.take(UNAUTHENTICATED_LINE, ended)
            if line is None:
                break
            if line is TOO_LONG:
                server.bytes_out += refuse_unauthenticated(transport, lines, protocol, replies)
                return
            failed = session.failed_auths
            reply = protocol.handle_line(line, session)  # type: ignore[arg-type]
            if session.failed_auths != failed:
                refused = reply  # type: ignore[assignment]
            elif type(reply) is bytes:
                replies.append(reply)
            else:
                deferred = reply  # type: ignore[assignment]
        lines.compact()
        if replies:
            server.requests += len(replies)
            out = b"".join(replies)
            server.bytes_out += len(out)
            transport.write(out)
        if (self.session.watch is not None) != (self in server.watchers):
            if self.session.watch is None:
                server.watchers.discard(self)
            else:
                server.watchers.add(self)
                self.next_push = 0.0  # the first update goes out at the next tick
        if deferred is not None:
            self.waiting = deferred
            transport.pause_reading()  # later lines wait in the buffer: replies keep request order
            future = asyncio.get_running_loop().run_in_executor(server.worker, protocol.complete, deferred)
            future.add_done_callback(self._deferred_done)
        elif refused is not None:
            self.waiting = _HELD
            transport.pause_reading()
            delay = server.failed_auths.delay(asyncio.get_running_loop().time())
            asyncio.get_running_loop().call_later(delay, self._refusal_due, refused)
        elif ended:
            transport.close()  # the client's end of file: every line it sent is answered

    def _refusal_due(self, reply: bytes) -> None:
        """Send a failed authentication's reply once its slot has come; close after too many."""
        self.waiting = None
        transport = self.transport
        if transport is None:
            return
        self.server.requests += 1
        self.server.bytes_out += len(reply)
        transport.write(reply)
        if self.session.failed_auths >= MAX_FAILED_AUTHS:
            self.server.auth_closed += 1
            self.lines.clear()
            transport.close()
            return
        if not self.paused:
            transport.resume_reading()
        self._answer_lines()

    def _deferred_done(self, future: asyncio.Future) -> None:
        self.waiting = None
        transport = self.transport
        if transport is None or future.cancelled():
            return
        reply = future.result()  # `Protocol.complete` never raises
        self.server.requests += 1
        self.server.bytes_out += len(reply)
        transport.write(reply)
        if not self.paused:
            transport.resume_reading()
        self._answer_lines()

    def eof_received(self) -> bool:
        self.ended = True  # half-closed by the client: its unterminated last line is one too
        if self.waiting is None:
            self._answer_lines()
        return True  # the transport closes once every line is answered (`_answer_lines`)

    def pause_writing(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.server.paused_total += 1
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            if self.waiting is None:
                self.transport.resume_reading()
