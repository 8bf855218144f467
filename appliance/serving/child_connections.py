"""A serving child's connections: each line answered in the child or relayed to the primary.

Each connection is an `asyncio.Protocol` on the child's loop, as the primary's are
(`serving.connection`): `data_received` splits the bytes into lines and answers, synchronously and
in order, every whole line the child answers itself, writing the replies of one chunk in one
`write`; the lines are cut by the primary's rules (`serving.framing`). A line is decoded once,
behind the protocol's own guards (`Protocol.decode`): `predict` of an event, `ingest`, `label` and `auth` are answered here (`is_local`, by the child's `Protocol`);
every other line (stats, models, promote, watch, malformed lines...) is written to the primary's
private owner-only socket and its reply relayed; while it is away the connection reads nothing
more, so replies keep the order of the requests. After a `watch` the connection is piped to the
primary both ways. A TCP connection gets the primary's rules (`serving.access`): a deadline and a
small line until authenticated, a few failed attempts, each failed reply waiting for a slot of this
process's share of the failed-authentication budget. `finish` stops reading every connection and
waits for what each read to be answered (`serving.child` calls it on SIGTERM).

Not asyncio's streams: a `StreamReader` hands every line to a task on the next turn of the loop,
which cost a request ~10 us of round trip and ~8 us of a child's CPU (docs/benchmarks.md, session 30).
"""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.serving.access import (
    FAILED_AUTHS_PER_SECOND,
    MAX_FAILED_AUTHS,
    UNAUTHENTICATED_LINE,
    FailedAuthBudget,
)
from appliance.serving.connection import HIGH_WATER, refuse_unauthenticated
from appliance.serving.framing import TOO_LONG, Lines
from appliance.serving.protocol import Deferred, Protocol, Session

MAX_LINE = 1 << 20  # as the primary's protocol
MAX_TCP_CONNECTIONS = 256  # per process, as the primary's TCP listener


def is_local(request: Any) -> bool:
    """Whether a child answers this request itself (else the primary does)."""
    if not isinstance(request, dict):
        return False
    op = request.get("op")
    if op in ("ingest", "label", "auth"):  # `auth` checks this connection's token, which only the child knows
        return True
    return op == "predict" and isinstance(request.get("event"), dict)


class ChildServer:
    """Answers connections accepted on the listening sockets the primary handed over; relays the rest to it.

    `unix_connection` and `tcp_connection` are the protocol factories of the two listeners."""

    def __init__(self, protocol: Protocol, private_socket: str, *, token: str | None, auth_timeout: float,
                 serving_processes: int) -> None:
        self.protocol = protocol
        self.private_socket = private_socket
        self.token = token  # TCP clients must send it (None: TCP is loopback-only and open)
        self.auth_timeout = auth_timeout
        self.failed_auths = FailedAuthBudget(FAILED_AUTHS_PER_SECOND / max(1, serving_processes))
        self.tcp_open = 0
        self.connections_total = 0
        self.connections_refused = 0
        self.requests = 0  # lines answered here or relayed to the primary
        self.bytes_in = 0  # read from clients
        self.bytes_out = 0  # written to clients (replies, and what the primary pushes after a watch)
        self.auth_timeouts = 0  # connections closed for not authenticating in time
        self.auth_closed = 0  # connections closed after MAX_FAILED_AUTHS failures
        self.paused_total = 0  # times a client read its replies too slowly and was not read meanwhile
        self.stopping = False
        self.open: set[ChildConnection] = set()

    def unix_connection(self) -> ChildConnection:
        return ChildConnection(self, Session(authenticated=True, peer="unix", token=self.token), tcp=False)

    def tcp_connection(self) -> ChildConnection:
        token = self.token
        return ChildConnection(self, Session(authenticated=token is None, peer="tcp", token=token), tcp=True)

    async def finish(self, timeout: float) -> None:
        """Stop reading every connection; wait (at most `timeout`) until each has answered the whole
        lines it had read and closed; drop the rest."""
        self.stopping = True
        for connection in list(self.open):
            connection.stop_reading()
        waiting = [connection.closed for connection in self.open]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        late = list(self.open)
        for connection in late:
            connection.abort()
        if late:
            await asyncio.sleep(0)  # their `connection_lost` runs before the loop ends

    def stats(self) -> dict[str, int]:
        """This child's counters, named as the socket server's: exactly `status_record.CHILD_COUNTERS`
        (`LatencyReport.publish` reads each by name)."""
        return {"connections_open": len(self.open), "connections_total": self.connections_total,
                "connections_open_tcp": self.tcp_open, "connections_refused": self.connections_refused,
                "auth_failures": self.failed_auths.total, "requests": self.requests,
                "errors": self.protocol.errors_total, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "auth_timeouts": self.auth_timeouts, "auth_closed": self.auth_closed,
                "paused_clients": self.paused_total}


class ChildConnection(asyncio.Protocol):
    """One client connection of a child: lines in, replies out, on the child's loop."""

    def __init__(self, server: ChildServer, session: Session, *, tcp: bool) -> None:
        self.server = server
        self.session = session
        self.tcp = tcp
        self.transport: asyncio.Transport | None = None
        # done once the connection is gone (`finish` waits on it); the factory runs on the child's loop
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.lines = Lines()
        self.busy = False  # a relayed line, or a failed authentication's reply, not written yet
        self.ended = False  # no more input: the client's end of file, or the child stopping
        self.writable = asyncio.Event()  # cleared while the client reads too slowly (reading and the watch pump wait)
        self.writable.set()
        self.counted_tcp = False
        self.deadline: asyncio.TimerHandle | None = None
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.relay: asyncio.Task | None = None
        self.pump: asyncio.Task | None = None  # after a watch: the primary's lines copied to the client

    # -- the transport's calls ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self.server
        server.connections_total += 1
        if self.tcp and server.tcp_open >= MAX_TCP_CONNECTIONS:
            server.connections_refused += 1
            transport.close()
            return
        if self.tcp:
            server.tcp_open += 1
            self.counted_tcp = True
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        server.open.add(self)
        if not self.session.authenticated:
            self.deadline = asyncio.get_running_loop().call_later(server.auth_timeout, self._auth_deadline)
        if server.stopping:  # accepted as the stop began
            self.stop_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        if self.counted_tcp:
            server.tcp_open -= 1
            self.counted_tcp = False
        server.open.discard(self)
        if self.deadline is not None:
            self.deadline.cancel()
        for task in (self.relay, self.pump):
            if task is not None:
                task.cancel()
        if self.upstream is not None:
            self.upstream[1].close()
            self.upstream = None
        self.transport = None
        self.writable.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.ended:
            return
        self.server.bytes_in += len(data)
        if self.pump is not None:  # piped after a watch: the primary answers everything
            self.server.requests += data.count(b"\n")
            self.upstream[1].write(data)  # type: ignore[index]
            return
        self.lines.feed(data)
        if not self.busy:
            self._answer_lines()
        elif not self.session.authenticated and self.lines.unread > UNAUTHENTICATED_LINE:
            self.transport.abort()  # an unauthenticated client piling up input while its reply waits

    def eof_received(self) -> bool:
        self.ended = True
        if self.pump is not None:
            self.upstream[1].write_eof()  # type: ignore[index]  # the pump ends when the primary closes
        elif not self.busy:
            self._answer_lines()  # the unterminated rest is the last line; then close
        return True  # keep the transport: it is closed once every reply is written

    def pause_writing(self) -> None:
        self.writable.clear()
        if self.transport is not None:
            self.server.paused_total += 1
            self.transport.pause_reading()  # a client that does not read its replies is not read either

    def resume_writing(self) -> None:
        self.writable.set()
        self._resume_reading()

    # -- the child's calls ----------------------------------------------------------------
    def stop_reading(self) -> None:
        """Read nothing more: whole lines already read are answered, then the connection closes."""
        self.ended = True
        if self.transport is None:
            return
        self.transport.pause_reading()
        if self.pump is not None:
            self.upstream[1].write_eof()  # type: ignore[index]
        elif not self.busy:
            self._answer_lines()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- lines ----------------------------------------------------------------------------
    def _answer_lines(self) -> None:
        """Answer every line read (`serving.framing`), in order, until one is relayed or held."""
        transport = self.transport
        if transport is None:
            return
        server = self.server
        protocol = server.protocol
        session = self.session
        lines = self.lines
        final = self.ended and not server.stopping  # the client's end of file: its unterminated rest is a line
        replies: list[bytes] = []
        while not self.busy:
            authenticated = session.authenticated
            line = lines.take(protocol.max_line if authenticated else UNAUTHENTICATED_LINE, final)
            if line is None:
                break
            if line is TOO_LONG:
                if authenticated:
                    replies.append(protocol.line_too_long())
                    continue
                server.bytes_out += refuse_unauthenticated(transport, lines, protocol, replies)
                return
            server.requests += 1
            # decoded once, behind the protocol's own guards (length, nesting) as the primary's lines are
            request = protocol.decode(line)  # type: ignore[arg-type]
            if is_local(request) or (not authenticated and request is None):
                failed = session.failed_auths
                reply = protocol.handle_line(line, session) if request is None else protocol.handle_request(  # type: ignore[arg-type]
                    request, session)
                if isinstance(reply, Deferred):  # no local handler defers; kept whole if one ever does
                    reply = protocol.complete(reply)
                if session.failed_auths != failed:
                    self._hold(reply)
                else:
                    replies.append(reply)
                continue
            if not authenticated:  # the token check first, here: the primary's socket trusts us
                failed = session.failed_auths
                check = {"op": "auth", "id": request.get("id"), "token": request.get("token")}  # type: ignore[union-attr]
                reply = protocol.handle_request(check, session)
                if session.failed_auths != failed:
                    self._hold(reply)  # type: ignore[arg-type]
                    continue
                if not session.authenticated:
                    continue
            self.busy = True
            transport.pause_reading()  # later lines wait in the buffer: replies keep request order
            self.relay = asyncio.ensure_future(self._relay(line, request))  # type: ignore[arg-type]
        lines.compact()
        if replies:
            out = b"".join(replies)
            server.bytes_out += len(out)
            transport.write(out)
        if not self.busy and self.ended:
            transport.close()  # every whole line is answered

    def _hold(self, reply: bytes) -> None:
        """A failed authentication: its reply waits for a slot of the budget; nothing is read meanwhile."""
        self.busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        loop.call_later(self.server.failed_auths.delay(loop.time()), self._refusal_due, reply)

    def _refusal_due(self, reply: bytes) -> None:
        self.busy = False
        transport = self.transport
        if transport is None:
            return
        self.server.bytes_out += len(reply)
        transport.write(reply)
        if self.session.failed_auths >= MAX_FAILED_AUTHS:
            self.server.auth_closed += 1
            self.lines.clear()
            transport.close()
            return
        self._resume_reading()
        self._answer_lines()

    async def _relay(self, line: bytes, request: Any) -> None:
        """Write a line to the primary's private socket and its reply to the client; after a `watch`,
        pipe the connection to the primary both ways."""
        try:
            if self.upstream is None:
                self.upstream = await asyncio.open_unix_connection(self.server.private_socket, limit=MAX_LINE + 2)
            reader, writer = self.upstream
            writer.write(line + b"\n")
            if isinstance(request, dict) and request.get("op") == "watch":
                self.pump = asyncio.ensure_future(self._pump(reader))
                rest = self.lines.rest()
                if rest:
                    self.server.requests += rest.count(b"\n")
                    writer.write(rest)
                self.busy = False
                if self.ended:
                    writer.write_eof()
                else:
                    self._resume_reading()
                return
            reply = await reader.readline()
            if not reply:
                raise ConnectionError("the primary closed the forwarding connection")
        except (ConnectionError, OSError, ValueError):  # ValueError: a reply line over the limit
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None:
            return
        self.server.bytes_out += len(reply)
        self.transport.write(reply)
        self.busy = False
        self._resume_reading()
        self._answer_lines()

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        """Copy the primary's bytes (replies and pushed updates) to the client until either side closes."""
        try:
            while data := await reader.read(1 << 16):
                await self.writable.wait()
                if self.transport is None:
                    return
                self.server.bytes_out += len(data)
                self.transport.write(data)
        except (ConnectionError, OSError):
            pass
        if self.transport is not None:
            self.transport.close()

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.busy and self.writable.is_set() and not self.ended:
            self.transport.resume_reading()

    def _auth_deadline(self) -> None:
        if self.transport is not None and not self.session.authenticated:
            self.server.auth_timeouts += 1
            self.transport.abort()
